//! The bounded receive path: what stands between the Redis pub/sub connection and the link.
//! The connection's reader hands each channel message to an [`Inbox`] without waiting; the
//! inbox queues at most `broker.receive_queue` of them for the link. When the link falls
//! behind and the queue is full, the message is dropped and its topic recorded as *missed*; the
//! link then brings every missed topic back up to Redis (gap-free from the stream when Redis's
//! history still holds what was dropped, an explicit reset otherwise), exactly as after a
//! reconnect. Memory on the way in is bounded by the queue, never by how far the node is behind.
//!
//! Also the process-wide test hook [`pause`], which stands in for a stalled event loop.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

use redis::{Msg, PushInfo, PushKind};
use tokio::sync::{mpsc, watch, Notify};

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
    /// Wakes the link when a topic was missed or the connection closed.
    pub(super) wake: Notify,
}

impl Drops {
    /// Takes what was missed so far.
    pub(super) fn take(&self) -> Missed {
        std::mem::take(&mut *lock(&self.missed))
    }
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
    drops: Arc<Drops>,
    /// To name the topic of a dropped message.
    channels: Channels,
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
        // One slot more than asked, so that `Closed` always fits once the queue is otherwise
        // bounded by messages (the reader sends nothing after it).
        let (queue, rx) = mpsc::channel(capacity + 1);
        let inbox = Inbox {
            queue,
            drops,
            channels,
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
                self.drops.wake.notify_one();
                return;
            }
            // Subscription confirmations: their replies already went to the command's caller.
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
        let topic = self.channels.topic(msg.get_channel_name());
        lock(&self.drops.missed).add(topic);
        self.metrics.broker_receive_dropped.inc();
        self.drops.wake.notify_one();
    }
}

/// Test hook: while `true`, every Redis link in this process stops taking messages from its
/// receive queue, as if the node's event loop were stalled; the connection's reader keeps
/// reading, so the queue's bound is what holds memory. Used by `tests/cluster_receive.rs`;
/// never set by the server itself.
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
}
