//! Max rate per subscription (`"max_rate"` on subscribe, `max_rate` in `queue.policies`): a
//! connection gets at most R frames a second per topic, and the newest value always arrives at
//! the end of each interval (a trailing edge, never a stale last value). And which frames of a
//! `"delta":"fossil"` subscription may be deltas: only one that follows the last frame the pair
//! was sent, since a delta is worth nothing to a client that lacks its base.
//!
//! What it costs, since a node may hold millions of (topic, connection) pairs: a throttled pair
//! holds a [`Gate`] (boxed, so an unthrottled one pays one null pointer), and a publication a
//! gate holds back puts one [`Due`] on the node's one [`Pacer`] queue (at most one per gate at a
//! time), which one task for the whole node drains at the due times. There is no timer per
//! connection or per subscription, and nothing is copied while it waits: what goes out at the
//! due time is the topic's newest value, encoded then, once per topic for the gates due together.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::pubsub::outbox::TopicKey;
use crate::sync::lock;
use tickwire_proto::rate;

/// Pending deliveries the node's queue holds at most. Past it a gate lets the publication
/// through at once (the rate is exceeded, nothing is lost) rather than grow the queue: it holds
/// at most one entry per throttled (topic, connection), so only an extreme node gets there.
const MAX_DUE: usize = 1 << 20;

/// Due deliveries released in one go before the pacer lets other tasks run.
const BATCH: usize = 4096;

/// The least time between two frames of one topic to one connection, in milliseconds; zero
/// means no limit. Ordered so that the *larger* interval is the stricter one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval(u32);

impl Interval {
    pub const NONE: Interval = Interval(0);

    /// The interval of at most `per_second` frames a second; `None` outside the bounds
    /// ([`rate::valid`]).
    pub fn from_rate(per_second: f64) -> Option<Interval> {
        if !rate::valid(per_second) {
            return None;
        }
        Some(Interval(((1000.0 / per_second).round() as u32).max(1)))
    }

    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    fn ms(self) -> u64 {
        self.0.into()
    }

    /// The interval that applies to a connection whose subscriptions to one topic ask for
    /// `asked` (each [`Interval::NONE`] when it set no rate), under the topic's policy `cap`:
    /// the least restrictive request, and never less than the cap.
    pub fn effective(asked: impl IntoIterator<Item = Interval>, cap: Interval) -> Interval {
        let loosest = asked.into_iter().min().unwrap_or(Interval::NONE);
        loosest.max(cap)
    }
}

/// What a subscription asks for beyond plain delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Terms {
    pub interval: Interval,
    /// Updates may come as Fossil deltas of the previous publication.
    pub delta: bool,
}

impl Terms {
    pub const PLAIN: Terms = Terms {
        interval: Interval::NONE,
        delta: false,
    };

    /// What a connection whose subscriptions to one topic ask for `asked` gets, under the
    /// topic's max rate `cap`: the loosest rate ([`Interval::effective`]), and deltas if any of
    /// them asked (a client that asked knows how to apply them).
    pub fn effective(asked: impl IntoIterator<Item = Terms> + Clone, cap: Interval) -> Terms {
        Terms {
            interval: Interval::effective(asked.clone().into_iter().map(|t| t.interval), cap),
            delta: asked.into_iter().any(|t| t.delta),
        }
    }
}

/// One (topic, connection) pair's state when its terms are not plain. Times are milliseconds
/// on the [`Pacer`]'s clock.
#[derive(Debug)]
pub struct Gate {
    /// The connection (a hub client id), for the pacer to find the pair again.
    pub client: u64,
    interval: Interval,
    delta: bool,
    /// A publication was held back, and a [`Due`] will deliver the newest one.
    pending: bool,
    /// When the next frame may go.
    next: u64,
    /// The newest seq this pair has been sent (a catch-up counts: the snapshot is the newest).
    sent: u64,
}

/// What a gate does with a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it now; `follows` when the pair was sent the publication just before (so a
    /// delta of it can be applied).
    Now { follows: bool },
    /// Hold it back; the caller schedules a delivery at this time.
    Later(u64),
    /// A held-back publication was waiting: this one replaces it (the older is conflated).
    Replaced,
}

impl Gate {
    /// A gate for `client` that has been sent up to `seq`, free to send at once.
    pub fn new(client: u64, terms: Terms, seq: u64) -> Gate {
        Gate {
            client,
            interval: terms.interval,
            delta: terms.delta,
            pending: false,
            next: 0,
            sent: seq,
        }
    }

    /// Changes the terms from the next frame on. A gate whose interval drops to none stays
    /// until its pending delivery is made, so that the held-back value is neither lost nor
    /// sent twice.
    pub fn set_terms(&mut self, terms: Terms) {
        self.interval = terms.interval;
        self.delta = terms.delta;
    }

    /// Whether the gate has nothing left to do: plain terms and nothing pending.
    pub fn is_open(&self) -> bool {
        self.interval.is_none() && !self.delta && !self.pending
    }

    /// Whether the pair takes deltas.
    pub fn delta(&self) -> bool {
        self.delta
    }

    /// The pair's client lacks the value a delta would start from (its catch-up was cut short).
    pub fn forget_sent(&mut self) {
        self.sent = 0;
    }

    /// Publication `seq` at time `now`.
    pub fn admit(&mut self, seq: u64, now: u64) -> Admit {
        if self.pending {
            return Admit::Replaced;
        }
        if now >= self.next {
            let follows = self.sent + 1 == seq;
            self.sent = seq;
            self.next = now + self.interval.ms();
            return Admit::Now { follows };
        }
        self.pending = true;
        Admit::Later(self.next)
    }

    /// The pacer could not take the held-back publication: it goes now after all.
    pub fn unschedule(&mut self, seq: u64, now: u64) {
        self.pending = false;
        self.sent = seq;
        self.next = now + self.interval.ms();
    }

    /// A catch-up brought the pair to `seq` (a snapshot or recovered publications).
    pub fn caught_up(&mut self, seq: u64) {
        self.sent = self.sent.max(seq);
    }

    /// The due time came, the topic's newest being `seq`: whether to send it now.
    pub fn release(&mut self, seq: u64, now: u64) -> bool {
        if !std::mem::take(&mut self.pending) || self.sent >= seq {
            return false;
        }
        self.sent = seq;
        self.next = now + self.interval.ms();
        true
    }
}

/// A held-back delivery: at time `at`, the newest value of the topic `key` (found through
/// `target`) goes to connection `client`.
pub struct Due<T> {
    pub at: u64,
    pub key: TopicKey,
    pub client: u64,
    pub target: T,
}

impl<T> Due<T> {
    fn order(&self) -> (u64, TopicKey, u64) {
        (self.at, self.key, self.client)
    }
}

// Ordered by time, then topic, so that the gates of one topic due together come out together
// and share one encoding of the value.
impl<T> PartialEq for Due<T> {
    fn eq(&self, other: &Self) -> bool {
        self.order() == other.order()
    }
}

impl<T> Eq for Due<T> {}

impl<T> PartialOrd for Due<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Due<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order().cmp(&other.order())
    }
}

/// The node's one queue of held-back deliveries, and the clock gates run on.
pub struct Pacer<T> {
    origin: Instant,
    queue: Mutex<BinaryHeap<Reverse<Due<T>>>>,
    /// Wakes the pacing task when a delivery is due before the one it sleeps for.
    earlier: Notify,
}

impl<T> Default for Pacer<T> {
    fn default() -> Self {
        Pacer {
            origin: Instant::now(),
            queue: Mutex::new(BinaryHeap::new()),
            earlier: Notify::new(),
        }
    }
}

impl<T> Pacer<T> {
    /// `at` on the pacer's clock, in milliseconds.
    pub fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }

    fn instant(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    /// Queues `due`; false when the queue is full (the caller delivers at once instead).
    pub fn schedule(&self, due: Due<T>) -> bool {
        let mut queue = lock(&self.queue);
        if queue.len() >= MAX_DUE {
            return false;
        }
        let first = queue.peek().is_none_or(|Reverse(head)| due.at < head.at);
        queue.push(Reverse(due));
        drop(queue);
        if first {
            self.earlier.notify_one();
        }
        true
    }

    /// Takes up to [`BATCH`] deliveries due at `now`, in order, into `out`; returns when the
    /// next one is due (`now` again if the batch was full), or `None` when nothing waits.
    pub fn take_due(&self, now: u64, out: &mut Vec<Due<T>>) -> Option<u64> {
        let mut queue = lock(&self.queue);
        while out.len() < BATCH {
            match queue.peek() {
                Some(Reverse(head)) if head.at <= now => {
                    let Reverse(due) = queue.pop().expect("peeked");
                    out.push(due);
                }
                _ => break,
            }
        }
        if queue.is_empty() && queue.capacity() > 1024 {
            *queue = BinaryHeap::new(); // do not pin the memory of a burst
        }
        queue.peek().map(|Reverse(head)| head.at.max(now))
    }

    /// Sleeps until `next` (milliseconds on the clock), or until something is scheduled before
    /// it; forever when `None`, until something is scheduled.
    pub async fn wait(&self, next: Option<u64>) {
        match next {
            Some(at) => {
                let sleep = tokio::time::sleep_until(self.instant(at).into());
                tokio::select! {
                    _ = sleep => {}
                    _ = self.earlier.notified() => {}
                }
            }
            None => self.earlier.notified().await,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_become_intervals_within_bounds() {
        assert_eq!(Interval::from_rate(4.0), Some(Interval(250)));
        assert_eq!(Interval::from_rate(0.5), Some(Interval(2000)));
        assert_eq!(Interval::from_rate(30.0), Some(Interval(33)));
        assert_eq!(Interval::from_rate(1000.0), Some(Interval(1)));
        for bad in [0.0, -1.0, 0.001, 1000.5, f64::NAN, f64::INFINITY] {
            assert_eq!(Interval::from_rate(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_loosest_request_applies_but_never_beyond_the_cap() {
        let (slow, fast) = (Interval(1000), Interval(100));
        assert_eq!(Interval::effective([slow, fast], Interval::NONE), fast);
        assert_eq!(
            Interval::effective([slow, Interval::NONE], Interval::NONE),
            Interval::NONE
        );
        assert_eq!(
            Interval::effective([fast], slow),
            slow,
            "a client cannot exceed the cap"
        );
        assert_eq!(Interval::effective([Interval::NONE], fast), fast);
        assert_eq!(Interval::effective([], Interval::NONE), Interval::NONE);
    }

    fn terms(ms: u32) -> Terms {
        Terms {
            interval: Interval(ms),
            delta: false,
        }
    }

    #[test]
    fn a_gate_sends_the_first_holds_the_rest_and_releases_the_newest() {
        let mut gate = Gate::new(7, terms(100), 0);
        assert_eq!(gate.admit(1, 1000), Admit::Now { follows: true });
        assert_eq!(gate.admit(2, 1010), Admit::Later(1100));
        assert_eq!(gate.admit(3, 1020), Admit::Replaced);
        assert_eq!(gate.admit(4, 1030), Admit::Replaced);
        assert!(gate.release(4, 1100), "the newest goes at the due time");
        assert!(!gate.release(4, 1100), "once");
        assert_eq!(
            gate.admit(5, 1150),
            Admit::Later(1200),
            "the interval counts from the release"
        );
        gate.caught_up(5);
        assert!(!gate.release(5, 1200), "a catch-up already brought seq 5");
        assert_eq!(gate.admit(6, 1300), Admit::Now { follows: true });
    }

    #[test]
    fn an_unthrottled_gate_opens_only_after_its_pending_delivery() {
        let mut gate = Gate::new(7, terms(100), 0);
        assert_eq!(gate.admit(1, 0), Admit::Now { follows: true });
        assert_eq!(gate.admit(2, 10), Admit::Later(100));
        gate.set_terms(Terms::PLAIN);
        assert!(!gate.is_open());
        assert_eq!(gate.admit(3, 20), Admit::Replaced);
        assert!(gate.release(3, 100));
        assert!(gate.is_open());
    }

    #[tokio::test]
    async fn the_pacer_hands_out_due_deliveries_in_time_then_topic_order() {
        let pacer = Pacer::<&str>::default();
        for (at, key, target) in [(30, 1, "c"), (10, 2, "b"), (10, 1, "a"), (50, 1, "d")] {
            assert!(pacer.schedule(Due {
                at,
                key,
                client: 1,
                target,
            }));
        }
        let mut out = Vec::new();
        assert_eq!(pacer.take_due(30, &mut out), Some(50));
        assert_eq!(out.iter().map(|d| d.target).collect::<Vec<_>>(), ["a", "b", "c"]);
        out.clear();
        assert_eq!(pacer.take_due(60, &mut out), None);
        assert_eq!(out.len(), 1);
        assert_eq!(pacer.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_delivery_wakes_the_pacer() {
        let pacer = std::sync::Arc::new(Pacer::<()>::default());
        let waiting = {
            let pacer = pacer.clone();
            tokio::spawn(async move { pacer.wait(None).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        pacer.schedule(Due {
            at: 5,
            key: 1,
            client: 1,
            target: (),
        });
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken")
            .unwrap();
    }
}
