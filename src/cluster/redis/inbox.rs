//! The bounded receive path: what stands between the Redis pub/sub connection and the link.
//! The connection's reader hands each channel message to an [`Inbox`] without waiting; the
//! inbox queues at most `broker.receive_queue` of them for the link. When the link falls
//! behind and the queue is full, the message is dropped and its topic recorded as *missed*; the
//! link then brings every missed topic back up to Redis (gap-free from the stream when Redis's
//! history still holds what was dropped, an explicit reset otherwise), exactly as after a
//! reconnect. Memory on the way in is bounded by the queue, never by how far the node is behind.
//!
//! The presence listener (`presence`) takes the other nodes' joins and leaves through the same
//! kind of inbox ([`Inbox::counting`]): what does not fit is only counted, in a [`Burst`] and
//! the same metric, since those notifications are frames for watchers, not state (a presence
//! query reads Redis).
//!
//! Also the process-wide test hook [`pause`], which stands in for a stalled event loop.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use redis::{Msg, PushInfo, PushKind};
use tokio::sync::{mpsc, watch, Notify};
use tracing::warn;

use crate::metrics::Metrics;
use crate::sync::lock;
use crate::topic::Topic;

use super::shards::Channels;

/// Missed topics remembered by name, at most; past it the link resynchronises every topic it
/// mirrors (one load per topic, which is what a reconnect costs anyway).
const MISSED_TOPICS: usize = 10_000;

/// What the link must resynchronise because messages were dropped on the way in.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Missed {
    pub(super) topics: HashSet<Topic>,
    /// More topics missed than [`MISSED_TOPICS`], or a message whose topic was unreadable.
    pub(super) all: bool,
}

impl Missed {
    fn add(&mut self, topic: Option<Topic>) {
        match topic {
            _ if self.all => {}
            Some(topic) if self.topics.len() < MISSED_TOPICS => {
                self.topics.insert(topic);
            }
            _ => {
                self.all = true;
                self.topics = HashSet::new();
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        !self.all && self.topics.is_empty()
    }
}

/// Shared by the reader (which records drops) and the link (which resolves them); outlives
/// connections, so that a drop just before a reconnect is still resolved (the reconnect's catch
/// up covers it anyway).
#[derive(Default)]
pub(super) struct Drops {
    missed: Mutex<Missed>,
    /// Sharded channels Redis unsubscribed the node from (on a cluster, when their slot moved to
    /// another shard), for the link to subscribe again where the slot went; also our own
    /// `SUNSUBSCRIBE`s' confirmations, which the link recognises as no longer held.
    unsubscribed: Mutex<Missed>,
    /// Wakes the link when a topic was missed or unsubscribed, or the connection closed.
    pub(super) wake: Notify,
}

impl Drops {
    /// Takes what was missed so far.
    pub(super) fn take(&self) -> Missed {
        std::mem::take(&mut *lock(&self.missed))
    }

    /// Takes the sharded channels unsubscribed so far.
    pub(super) fn take_unsubscribed(&self) -> Missed {
        std::mem::take(&mut *lock(&self.unsubscribed))
    }
}

/// Messages a [counting](Inbox::counting) inbox dropped since its reader last caught up: the
/// reader ends a burst with [`Burst::take`], the inbox logs the first drop of each.
#[derive(Default)]
pub(super) struct Burst(AtomicU64);

impl Burst {
    /// Ends the burst: how many were dropped in it.
    pub(super) fn take(&self) -> u64 {
        match self.0.load(Ordering::Relaxed) {
            0 => 0,
            _ => self.0.swap(0, Ordering::Relaxed),
        }
    }
}

/// What becomes of a message that does not fit.
enum Overflow {
    /// The link's: its topic is recorded as missed, for the link to resynchronise.
    Resync {
        drops: Arc<Drops>,
        /// To name the topic of a dropped message.
        channels: Channels,
    },
    /// Counted only: nothing can be fetched again.
    Count(Arc<Burst>),
}

/// What the reader hands the link.
pub(super) enum Inbound {
    Message(Msg),
    /// The connection is gone (sent by the client library; never dropped).
    Closed,
}

/// The sending half, called by the connection's reader for every push it receives; it must
/// never wait.
pub(super) struct Inbox {
    queue: mpsc::Sender<Inbound>,
    overflow: Overflow,
    metrics: Arc<Metrics>,
}

impl Inbox {
    /// An inbox for one connection and the receiver the link reads it from.
    pub(super) fn new(
        capacity: usize,
        drops: Arc<Drops>,
        channels: Channels,
        metrics: Arc<Metrics>,
    ) -> (Inbox, mpsc::Receiver<Inbound>) {
        let overflow = Overflow::Resync { drops, channels };
        Inbox::with(capacity, overflow, metrics)
    }

    /// An inbox that only counts what does not fit: in `burst`, and in the metric.
    pub(super) fn counting(
        capacity: usize,
        burst: Arc<Burst>,
        metrics: Arc<Metrics>,
    ) -> (Inbox, mpsc::Receiver<Inbound>) {
        Inbox::with(capacity, Overflow::Count(burst), metrics)
    }

    fn with(capacity: usize, overflow: Overflow, metrics: Arc<Metrics>) -> (Inbox, mpsc::Receiver<Inbound>) {
        // One slot more than asked, so that `Closed` always fits once the queue is otherwise
        // bounded by messages (the reader sends nothing after it).
        let (queue, rx) = mpsc::channel(capacity + 1);
        let inbox = Inbox {
            queue,
            overflow,
            metrics,
        };
        (inbox, rx)
    }

    pub(super) fn push(&self, info: PushInfo) {
        match info.kind {
            PushKind::Message | PushKind::PMessage | PushKind::SMessage => {}
            PushKind::Disconnection => {
                // The link also learns it from the queue's end or its next ping; the wake makes
                // sure it does not wait for either when the queue is full.
                let _ = self.queue.try_send(Inbound::Closed);
                if let Overflow::Resync { drops, .. } = &self.overflow {
                    drops.wake.notify_one();
                }
                return;
            }
            PushKind::SUnsubscribe => {
                if let Overflow::Resync { drops, channels } = &self.overflow {
                    let topic = match info.data.first() {
                        Some(redis::Value::BulkString(name)) => {
                            std::str::from_utf8(name).ok().and_then(|n| channels.topic(n))
                        }
                        _ => None,
                    };
                    lock(&drops.unsubscribed).add(topic);
                    drops.wake.notify_one();
                }
                return;
            }
            // Other subscription confirmations: their replies already went to the command's
            // caller.
            _ => return,
        }
        let Some(msg) = Msg::from_push_info(info) else {
            return;
        };
        // Keep one slot for `Closed`.
        if self.queue.capacity() > 1 {
            if let Err(mpsc::error::TrySendError::Full(Inbound::Message(msg))) =
                self.queue.try_send(Inbound::Message(msg))
            {
                self.dropped(&msg);
            }
            return;
        }
        self.dropped(&msg);
    }

    fn dropped(&self, msg: &Msg) {
        match &self.overflow {
            Overflow::Resync { drops, channels } => {
                let topic = channels.topic(msg.get_channel_name());
                lock(&drops.missed).add(topic);
                self.metrics.broker_receive_dropped.inc();
                drops.wake.notify_one();
            }
            Overflow::Count(burst) => {
                self.metrics.broker_receive_dropped.inc();
                if burst.0.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!(
                        channel = msg.get_channel_name(),
                        "receive queue full: dropping this channel's messages until the node catches up"
                    );
                }
            }
        }
    }
}

/// Test hook: while `true`, every Redis link and presence listener in this process stops taking
/// messages from its receive queue, as if the node's event loop were stalled; the connection's
/// reader keeps reading, so the queue's bound is what holds memory. Used by
/// `tests/cluster_receive.rs` and `tests/presence_receive.rs`; never set by the server itself.
static PAUSED: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::Sender::new(false));

pub fn pause(paused: bool) {
    PAUSED.send_replace(paused);
}

/// Returns at once unless [`pause`] holds the links.
pub(super) async fn unpaused() {
    if !*PAUSED.borrow() {
        return;
    }
    let _ = PAUSED.subscribe().wait_for(|paused| !paused).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_topics_are_bounded() {
        let mut missed = Missed::default();
        assert!(missed.is_empty());
        missed.add(Topic::parse("a").ok());
        missed.add(Topic::parse("a").ok());
        assert_eq!(missed.topics.len(), 1);
        for i in 0..MISSED_TOPICS {
            missed.add(Topic::parse(&format!("t{i}")).ok());
        }
        assert!(
            missed.all && missed.topics.is_empty(),
            "past the cap: resync everything"
        );
        missed.add(Topic::parse("b").ok());
        assert!(missed.all && missed.topics.is_empty());
        let mut unreadable = Missed::default();
        unreadable.add(None);
        assert!(unreadable.all);
    }

    fn message(channel: &str, payload: &str) -> PushInfo {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        PushInfo {
            kind: PushKind::Message,
            data: vec![bulk(channel), bulk(payload)],
        }
    }

    #[test]
    fn a_counting_inbox_keeps_its_capacity_and_counts_the_rest_per_burst() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let burst = Arc::new(Burst::default());
        let (inbox, mut rx) = Inbox::counting(3, burst.clone(), metrics.clone());
        for i in 0..10 {
            inbox.push(message("P:presence", &i.to_string()));
        }
        assert_eq!((rx.len(), burst.take(), burst.take()), (3, 7, 0));
        assert_eq!(metrics.broker_receive_dropped.get(), 7);
        // The connection's end still fits, after the kept messages, in order.
        inbox.push(PushInfo {
            kind: PushKind::Disconnection,
            data: Vec::new(),
        });
        let mut got = Vec::new();
        while let Ok(inbound) = rx.try_recv() {
            got.push(match inbound {
                Inbound::Message(msg) => msg.get_payload::<String>().unwrap(),
                Inbound::Closed => "closed".to_string(),
            });
        }
        assert_eq!(got, ["0", "1", "2", "closed"]);
        // Room again: a new burst starts only when the queue is full again.
        inbox.push(message("P:presence", "10"));
        assert_eq!((rx.len(), burst.take()), (1, 0));
    }
}
