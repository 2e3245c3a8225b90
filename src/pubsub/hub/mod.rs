//! The hub: every topic's sequence number, last value and subscribers, and the fan-out of each
//! publication to the outboxes of local connections.
//!
//! Pattern subscriptions are materialized onto topics: when a client subscribes to `prices.*`,
//! it is recorded on every existing matching topic (found by walking the pattern down the
//! names' token trie, [`TopicNames`], so the cost is what it matches, not the number of topics),
//! and a topic created later picks up matching patterns from the [`PatternIndex`]. Publishing
//! is then a lookup plus one pass over the topic's subscribers, each client at most once
//! however many of its subscriptions match. A subscribe runs in steps ([`Hub::subscribing`])
//! that hold no lock between them, so the node can let other work run during a large one.
//!
//! In a cluster (`broker.kind = "redis"`) the hub is a *mirror*: seqs are assigned in Redis, and
//! the broker feeds every publication of the topics local clients need through [`Hub::apply`]
//! and [`Hub::mirror`], which keep each topic's seq, last value and history in step with Redis
//! and deliver exactly once, in seq order. A mirrored topic that loses its last subscriber is
//! dropped: Redis keeps its state.
//!
//! Topics are bounded: creating one beyond `limits.max_topics` (by publish or by an exact
//! subscription) is refused with `too_many_topics`, and [`Hub::sweep`] drops topics that have
//! no subscriber and no publication for `topics.idle_ttl`, last value and history included. A
//! topic created again later starts a new epoch, so nobody can mistake it for the old stream.
//!
//! Locks, always taken in this order and never held across an await:
//! pattern index → topic map shard → topic state → outbox, and the name index and the creation
//! epoch innermost (each only ever taken under a map shard, or alone, and never together); the
//! pacer's queue of held-back deliveries is taken under a topic's state, or alone. Presence
//! (`pubsub::presence`) takes a room's map shard under a topic's state and before the
//! outboxes, and its occupied set and change queue innermost. A
//! publication is encoded once and
//! pushed to every outbox while its topic's lock is held, which is what keeps per-topic order,
//! makes snapshots race-free (no update lost or repeated around a snapshot) and guarantees that
//! nothing arrives through a subscription after its `unsubscribed` reply.
//!
//! Files: this one holds the hub's state and the publication path (publish, deliver);
//! `fanout`: a publication's way to the subscribers' outboxes (gates, deltas, compressed frames,
//! the pacer's release); `topics`: the registry (creation within the limit, removal, sweep,
//! listing); `subscribe`: subscribing with catch-up, and unsubscribing; `mirror`: applying a
//! broker's publications and stored state. The types live here, so that those files only ever
//! look up at this one.

mod fanout;
mod mirror;
mod subscribe;
#[cfg(test)]
mod tests;
mod topics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;

use crate::metrics::Metrics;
use crate::protocol::deflate;
use crate::protocol::encoding::Encoding;
use crate::protocol::{new_epoch, now_ms, Data, Position};
use crate::pubsub::history::{self, History};
use crate::pubsub::idmap::IdMap;
use crate::pubsub::names::TopicNames;
use crate::pubsub::outbox::{Outbox, TopicKey};
use crate::pubsub::patterns::PatternIndex;
use crate::pubsub::presence::Presence;
use crate::pubsub::throttle::{Gate, Interval, Pacer, Terms};
use crate::settings::{Policy, TopicBounds, TopicRules};
use crate::sync::lock;
use crate::topic::{Pattern, Topic};

/// How every subscriber receives publications: one class today. Each publication is encoded
/// once per class and the bytes are shared by all its subscribers (see `protocol::encoding`).
const ENCODING: Encoding = Encoding::Json;

/// Identifies a connection inside the hub.
pub type ClientId = u64;

/// A connection as the hub sees it: where to deliver.
#[derive(Clone)]
pub struct Subscriber {
    pub id: ClientId,
    pub outbox: Arc<Outbox>,
}

/// A pattern subscriber as the pattern index keeps it: where to deliver, and on what terms.
type Watcher = (Arc<Outbox>, Terms);

/// The latest publication of a topic.
#[derive(Debug, Clone)]
pub struct Publication {
    pub topic: Topic,
    pub seq: u64,
    /// Accept time, milliseconds since the Unix epoch.
    pub ts: u64,
    pub data: Data,
}

/// One row of the topic listing.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub topic: Topic,
    pub seq: u64,
    pub subscribers: usize,
}

/// A page of the topic listing.
#[derive(Debug, Clone, Default)]
pub struct TopicPage {
    pub topics: Vec<TopicInfo>,
    /// The name to pass as `after` for the next page; `None` when this page is the last.
    pub next: Option<Topic>,
}

/// A publication that was assigned its seq elsewhere (by Redis), as the broker delivers it.
#[derive(Debug, Clone)]
pub struct Remote {
    pub epoch: Arc<str>,
    pub seq: u64,
    /// Accept time, milliseconds since the Unix epoch.
    pub ts: u64,
    pub data: Data,
}

/// A topic's stream as the broker stores it: position, last value and (part of) its history.
#[derive(Debug, Clone)]
pub struct Stored {
    pub epoch: Arc<str>,
    pub seq: u64,
    pub last: Option<(u64, Data)>,
    /// Stored publications in seq order; the tail of the stream, possibly not all of it.
    pub entries: Vec<Remote>,
}

/// What [`Hub::apply`] did with a remote publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It was the next in the topic's stream: delivered and stored.
    Delivered,
    /// Already applied (it came twice, e.g. through a topic and a pattern channel).
    Duplicate,
    /// Publications are missing before it, or the stream restarted: the caller must load the
    /// topic's stored state and pass it to [`Hub::mirror`].
    Gap,
    /// No local topic: nobody here was receiving it.
    Unknown,
}

/// The epoch of a mirrored topic whose stream has not been seen yet (none in Redis): the first
/// publication or stored state adopts its epoch.
const UNKNOWN_EPOCH: &str = "";

/// A publication on its way to a topic's subscribers.
struct Outgoing<'a> {
    topic: &'a Topic,
    seq: u64,
    ts: u64,
    data: &'a Data,
    /// Its frame, encoded once for every subscriber that takes it whole.
    frame: &'a Bytes,
    accepted: Instant,
    /// Through the subscribers' gates (an update), or past them (a reset).
    gated: bool,
}

/// What a subscribe request produced, for its reply and the frames that follow it.
#[derive(Debug, Default)]
pub struct Subscribed {
    /// The position of every topic the request matched, at the moment it was registered.
    pub positions: BTreeMap<Topic, Position>,
    /// For each topic the request carried a `since` for: whether the missed publications follow.
    pub recovered: BTreeMap<Topic, bool>,
    /// Recovered updates and snapshots, in the order they must reach the client, each with the
    /// topic key it may be conflated under (snapshots of `conflate` topics), for
    /// [`Outbox::uncork`].
    pub frames: Vec<(Bytes, Option<TopicKey>)>,
    /// Patterns matched more topics than `limits.max_catch_up_topics`: the others are
    /// subscribed to without a position or a snapshot.
    pub truncated: bool,
}

/// A page of a topic's history.
#[derive(Debug)]
pub struct HistoryPage {
    pub position: Position,
    pub publications: Vec<history::Entry>,
    pub complete: bool,
}

pub struct Hub {
    topics: DashMap<Topic, Arc<TopicEntry>>,
    /// The names in `topics`, in order (the listing) and by token (the topics a pattern
    /// matches). Changed only under the map shard of the name changed.
    names: Mutex<TopicNames>,
    /// `topics.len()`, kept exact (changed under the shard lock with the map) so that the limit
    /// check is one atomic operation.
    count: AtomicUsize,
    bounds: TopicBounds,
    patterns: RwLock<PatternIndex<Watcher>>,
    rules: TopicRules,
    metrics: Arc<Metrics>,
    next_key: AtomicU64,
    next_client: AtomicU64,
    /// The epoch a topic created now starts in (taken under the topic's map shard). Shared by
    /// every topic created since it was last replaced, which saves an allocation per topic. It
    /// is replaced, under the map shard, when a topic in it is removed, so the topic created
    /// again later starts a new epoch. A mirror's is the unknown epoch, and is never replaced.
    epoch: Mutex<Arc<str>>,
    /// Seqs come from the broker; idle topics are dropped even when they have a last value.
    mirrored: bool,
    /// Deliveries held back by a max rate, released by [`Hub::pace`].
    pacer: Pacer<Topic>,
    /// Measures how long topics have been idle.
    clock: Clock,
    /// Presence rooms and occupied topics, changed where subscriptions are added and removed.
    presence: Presence,
}

/// The coarse clock of a topic's last use: 100 ms ticks since the hub started, in a `u32` (13.6
/// years), 4 bytes on every topic instead of an `Instant`'s 16. An idle topic may then go up to
/// one tick later than `idle_ttl`, never earlier.
struct Clock {
    start: Instant,
}

impl Clock {
    const TICK_MS: u128 = 100;

    fn ticks(&self, at: Instant) -> u32 {
        let ticks = at.saturating_duration_since(self.start).as_millis() / Self::TICK_MS;
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    /// Whether a topic last used in tick `touched` has been unused for `ttl` at `now`: counted
    /// from the tick's end, the latest moment the use can have been.
    fn idle_for(&self, touched: u32, ttl: Duration, now: Instant) -> bool {
        let used = Duration::from_millis((u64::from(touched) + 1) * Self::TICK_MS as u64);
        now.saturating_duration_since(self.start).saturating_sub(used) >= ttl
    }
}

/// A topic. Every one costs this much on a node that may hold millions, so its size is held to
/// 104 bytes (120 with the `Arc`'s counts, the largest request glibc serves from a 128-byte
/// chunk; `a_topic_entry_stays_small`): the immutable policy and cap sit in the state's
/// padding rather than here, and the state's small fields are packed for it.
struct TopicEntry {
    key: TopicKey,
    state: Mutex<TopicState>,
}

struct TopicState {
    /// Identifies this run of the topic's stream: seqs are only comparable within one epoch.
    epoch: Arc<str>,
    seq: u64,
    /// The last value (publication `seq`) and the publications kept before it.
    history: History,
    /// The `snapshot` frame of the last value, encoded at the first subscribe that needs it and
    /// shared by every subscriber after it (a client's queue then holds a handle, not a copy);
    /// dropped whenever the last value changes. Boxed: most topics of a node with many never
    /// get one, and an empty `Option<Bytes>` is 32 bytes on every topic.
    snapshot: Option<Box<Snapshot>>,
    /// Its tally: the subscribers with an exact subscription (the others receive the topic
    /// through patterns only), for the cluster's subscriber counts without a walk.
    subscribers: IdMap<Subscription>,
    /// When the topic was last used (its last publication, its creation, its last load from
    /// the broker), in [`Ticks`] of the hub's clock: an idle topic is dropped `idle_ttl` after
    /// it.
    touched: u32,
    /// Gates (a max rate, deltas) plus subscriptions that take compressed frames: while zero,
    /// the fan-out skips those checks on every subscriber (callgrind: 7 instructions a
    /// delivery). One counter for both, so that the entry keeps its size.
    special: u32,
    /// The max rate of the topic's policy (`queue.policies`), for every subscriber.
    cap: Interval,
    policy: Policy,
    /// Which of the rules' history bounds apply ([`TopicRules::retention_at`]).
    retention: u8,
    /// Set when the entry left the map; holders of a stale `Arc` must look the topic up again.
    removed: bool,
}

/// A topic's `snapshot` frame, and the same compressed for permessage-deflate clients with the
/// full window (most of them): made once each, at the first subscriber that needs it.
struct Snapshot {
    plain: Bytes,
    /// `None`: not made yet; `Some(None)`: not worth it (small, or not smaller compressed).
    deflated: Option<Option<Bytes>>,
}

/// A client's presence on one topic, with the subscriptions (exact or pattern) that put it
/// there, and its gate when a max rate applies.
struct Subscription {
    outbox: Arc<Outbox>,
    /// A boxed slice, not a `Vec`: 8 bytes less on every (topic, connection) pair, which pays
    /// for the gate's pointer; a connection rarely has two subscriptions matching one topic,
    /// so adding or removing one reallocating is no cost that matters.
    reasons: Box<[Reason]>,
    gate: Option<Box<Gate>>,
}

/// A subscription that matches a topic, and what it asked for.
#[derive(Clone)]
struct Reason {
    pattern: Pattern,
    terms: Terms,
}

/// Counted on the outbox from creation to drop, whichever way it goes (an unsubscribe, a
/// closing connection, a dropped topic): the count cannot drift from the records.
impl Drop for Subscription {
    fn drop(&mut self) {
        self.outbox.count_topic(false);
    }
}

impl Subscription {
    fn new(outbox: Arc<Outbox>) -> Subscription {
        outbox.count_topic(true);
        Subscription {
            outbox,
            reasons: Box::default(),
            gate: None,
        }
    }

    /// Fits the gate to the reasons and the topic's `cap`; a new gate starts at `seq`. Returns
    /// the change in the number of gates.
    fn regate(&mut self, client: ClientId, cap: Interval, seq: u64) -> i32 {
        let terms = Terms::effective(self.reasons.iter().map(|r| r.terms), cap);
        match &mut self.gate {
            Some(gate) => {
                gate.set_terms(terms);
                if gate.is_open() {
                    self.gate = None;
                    return -1;
                }
                0
            }
            None if terms != Terms::PLAIN => {
                self.gate = Some(Box::new(Gate::new(client, terms, seq)));
                1
            }
            None => 0,
        }
    }
}

impl TopicState {
    /// Records `reason` (on `terms`) for `who`, under the topic's max rate; returns true when
    /// `who` was not receiving this topic before. A reason already recorded takes the new terms.
    fn add(&mut self, who: &Subscriber, reason: &Pattern, terms: Terms) -> bool {
        let cap = self.cap;
        let special = &mut self.special;
        let sub = (self.subscribers).get_or_insert_with(who.id, || {
            *special += u32::from(who.outbox.deflate().is_some());
            Subscription::new(who.outbox.clone())
        });
        let fresh = sub.reasons.is_empty();
        let mut exact = 0;
        match sub.reasons.iter_mut().find(|r| r.pattern == *reason) {
            Some(known) => known.terms = terms,
            None => {
                exact = i32::from(reason.is_exact());
                // Allocated at the exact size (a `Vec` grown by a push would take room for four
                // and leave the rest as a fragment when shrunk).
                let new = Reason {
                    pattern: reason.clone(),
                    terms,
                };
                let mut reasons = Vec::with_capacity(sub.reasons.len() + 1);
                reasons.extend(sub.reasons.iter().cloned());
                reasons.push(new);
                sub.reasons = reasons.into_boxed_slice();
            }
        }
        let had_deltas = sub.gate.as_ref().is_some_and(|g| g.delta());
        self.special = self
            .special
            .saturating_add_signed(sub.regate(who.id, cap, self.seq));
        // A client that received the topic without deltas need not have kept a base (the
        // clients keep one only for topics of delta subscriptions): its first delta-able
        // update goes whole. A fresh one gets its base from the snapshot.
        if let Some(gate) = sub.gate.as_deref_mut() {
            if !fresh && !had_deltas && gate.delta() {
                gate.forget_sent();
            }
        }
        self.subscribers.add_tally(exact);
        fresh
    }

    /// Drops one reason; returns true when the topic is left with nothing worth keeping.
    fn remove(&mut self, id: ClientId, reason: &Pattern, mirrored: bool) -> bool {
        let cap = self.cap;
        if let Some(sub) = self.subscribers.get_mut(id) {
            let mut exact = 0;
            if sub.reasons.iter().any(|r| r.pattern == *reason) {
                exact = i32::from(reason.is_exact());
                let mut reasons = Vec::with_capacity(sub.reasons.len() - 1);
                reasons.extend(sub.reasons.iter().filter(|r| r.pattern != *reason).cloned());
                sub.reasons = reasons.into_boxed_slice();
            }
            // `None`: the subscription goes with its last reason.
            let regated = (!sub.reasons.is_empty()).then(|| sub.regate(id, cap, self.seq));
            // Before the entry may go, with the table and its tally, when it was the last.
            self.subscribers.add_tally(-exact);
            let change = regated.unwrap_or_else(|| {
                let gone = self.subscribers.remove(id).expect("found above");
                self.special -= u32::from(gone.outbox.deflate().is_some());
                -i32::from(gone.gate.is_some())
            });
            self.special = self.special.saturating_add_signed(change);
        }
        self.is_idle(mirrored)
    }

    /// The client `id` has not been sent the topic's current value (see [`Gate::forget_sent`]).
    fn forget_sent(&mut self, id: ClientId) {
        if let Some(gate) = (self.subscribers.get_mut(id)).and_then(|s| s.gate.as_deref_mut()) {
            gate.forget_sent();
        }
    }

    /// Nothing worth keeping: no subscribers, and no last value that only this hub holds.
    fn is_idle(&self, mirrored: bool) -> bool {
        self.subscribers.is_empty() && (mirrored || self.history.last().is_none())
    }

    /// Created and never used: no publication, no exact subscriber (pattern subscribers are
    /// re-materialized if the topic comes back).
    fn unused(&self) -> bool {
        self.seq == 0 && self.history.last().is_none() && self.subscribers.tally() == 0
    }

    /// The `snapshot` frame of the last value, if there is one (see `snapshot`), for a client
    /// whose permessage-deflate window is `deflate` (compressed when that is the full window and
    /// worth it, under `bounds`; a smaller window, rare, gets the plain frame).
    fn snapshot_frame(&mut self, topic: &Topic, deflate: Option<u8>, bounds: TopicBounds) -> Option<Bytes> {
        let (ts, data) = self.history.last()?;
        let snapshot = self.snapshot.get_or_insert_with(|| {
            Box::new(Snapshot {
                plain: ENCODING.snapshot_frame(topic, self.seq, ts, data),
                deflated: None,
            })
        });
        if deflate != Some(15) {
            return Some(snapshot.plain.clone());
        }
        let plain = &snapshot.plain;
        let deflated = snapshot.deflated.get_or_insert_with(|| {
            let worth = plain.len() >= bounds.deflate_min_bytes;
            worth
                .then(|| deflate::compress_frame(plain, 15, bounds.deflate_level))
                .flatten()
        });
        Some(deflated.as_ref().unwrap_or(plain).clone())
    }

    /// A mirrored topic that has not seen its stream yet takes the first epoch it is shown.
    fn adopt(&mut self, epoch: &Arc<str>) {
        if self.seq == 0 && self.history.last().is_none() && &*self.epoch == UNKNOWN_EPOCH {
            self.epoch = epoch.clone();
        }
    }
}

impl Hub {
    /// A hub that assigns seqs itself (`mirrored` false) or mirrors a broker's topics.
    pub fn new(rules: TopicRules, bounds: TopicBounds, metrics: Arc<Metrics>, mirrored: bool) -> Hub {
        let metrics_for_presence = metrics.clone();
        Hub {
            topics: DashMap::new(),
            names: Mutex::default(),
            count: AtomicUsize::new(0),
            bounds,
            patterns: RwLock::default(),
            rules,
            metrics,
            next_key: AtomicU64::new(1),
            next_client: AtomicU64::new(1),
            epoch: Mutex::new(match mirrored {
                true => UNKNOWN_EPOCH.into(),
                false => new_epoch(),
            }),
            mirrored,
            pacer: Pacer::default(),
            clock: Clock {
                start: Instant::now(),
            },
            presence: Presence::new(Vec::new(), metrics_for_presence),
        }
    }

    /// The hub with presence rooms on the topics matching `patterns`.
    pub fn with_presence(mut self, patterns: Vec<Pattern>) -> Hub {
        self.presence = Presence::new(patterns, self.metrics.clone());
        self
    }

    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    pub fn rules(&self) -> &TopicRules {
        &self.rules
    }

    /// A fresh identity for a new connection.
    pub fn new_subscriber(&self, outbox: Arc<Outbox>) -> Subscriber {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        Subscriber { id, outbox }
    }

    pub fn bounds(&self) -> TopicBounds {
        self.bounds
    }

    /// Assigns the next seq, encodes the update once and queues it for every subscriber. (The
    /// node counts it as published, for every broker alike.)
    pub fn publish(&self, topic: &Topic, data: Data) -> u64 {
        let (ts, accepted) = (now_ms(), Instant::now());
        self.with_topic(topic, |entry, state| {
            let seq = state.seq + 1;
            self.deliver(topic, entry, state, seq, ts, &data, accepted);
            seq
        })
    }

    /// Makes publication `seq` the topic's newest: queued for every subscriber (encoded once),
    /// stored in history and as the last value.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &self,
        topic: &Topic,
        entry: &TopicEntry,
        state: &mut TopicState,
        seq: u64,
        ts: u64,
        data: &Data,
        accepted: Instant,
    ) {
        let latest = std::mem::replace(&mut state.seq, seq);
        state.touched = state.touched.max(self.clock.ticks(accepted));
        // A topic nobody watches (most of them, on a node with many) skips the encoding: it was
        // half the cost of such a publication (callgrind, 1M topics).
        if !state.subscribers.is_empty() {
            let frame = ENCODING.update_frame(topic, seq, ts, data);
            let out = Outgoing {
                topic,
                seq,
                ts,
                data,
                frame: &frame,
                accepted,
                gated: true,
            };
            self.fan_out(entry, state, &out);
        }
        let bounds = self.rules.retention_at(state.retention);
        let stored = state.history.push(bounds, latest, ts, data, now_ms());
        self.count_history(stored);
        state.snapshot = None;
    }

    fn count_history(&self, delta: history::Delta) {
        if delta != history::Delta::default() {
            self.metrics.history_messages.add(delta.messages);
            self.metrics.history_bytes.add(delta.bytes);
        }
    }

    /// The latest publication of `topic`, if it has one.
    pub fn last(&self, topic: &Topic) -> Option<Publication> {
        let entry = self.topics.get(topic).map(|e| e.clone())?;
        let state = lock(&entry.state);
        let (ts, data) = state.history.last()?;
        Some(Publication {
            topic: topic.clone(),
            seq: state.seq,
            ts,
            data: data.clone(),
        })
    }

    /// Up to `limit` stored publications of `topic` after `since`, with the topic's position
    /// and whether history still holds everything after `since`.
    pub fn history(&self, topic: &Topic, since: u64, limit: usize) -> Option<HistoryPage> {
        let entry = self.topics.get(topic).map(|e| e.clone())?;
        let mut state = lock(&entry.state);
        let bounds = self.rules.retention_at(state.retention);
        let expired = state.history.expire(bounds, now_ms());
        self.count_history(expired);
        let (publications, complete) = state.history.page(since, limit, state.seq);
        Some(HistoryPage {
            position: Position {
                seq: state.seq,
                epoch: state.epoch.clone(),
            },
            publications,
            complete,
        })
    }
}
