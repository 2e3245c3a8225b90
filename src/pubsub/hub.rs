//! The hub: every topic's sequence number, last value and subscribers, and the fan-out of each
//! publication to the outboxes of local connections.
//!
//! Pattern subscriptions are materialized onto topics: when a client subscribes to `prices.*`,
//! it is recorded on every existing matching topic, and a topic created later picks up matching
//! patterns from the [`PatternIndex`]. Publishing is then a lookup plus one pass over the topic's
//! subscribers, each client at most once however many of its subscriptions match.
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
//! pattern index → topic map shard → topic state → outbox, and the name index innermost (only
//! ever taken under a map shard, or alone). A publication is encoded once and
//! pushed to every outbox while its topic's lock is held, which is what keeps per-topic order,
//! makes snapshots race-free (no update lost or repeated around a snapshot) and guarantees that
//! nothing arrives through a subscription after its `unsubscribed` reply.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use rand::distr::{Alphanumeric, SampleString};

use crate::metrics::{Metrics, Source};
use crate::protocol::error::RequestError;
use crate::protocol::{self, now_ms, Data, Position, EPOCH_LEN};
use crate::pubsub::history::{self, History};
use crate::pubsub::outbox::{Outbox, Pushed, TopicKey};
use crate::pubsub::patterns::PatternIndex;
use crate::settings::{Policy, TopicBounds, TopicRules};
use crate::topic::{Pattern, Topic};

/// Identifies a connection inside the hub.
pub type ClientId = u64;

/// A connection as the hub sees it: where to deliver.
#[derive(Clone)]
pub struct Subscriber {
    pub id: ClientId,
    pub outbox: Arc<Outbox>,
}

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

/// A fresh random epoch.
pub fn new_epoch() -> Arc<str> {
    Alphanumeric.sample_string(&mut rand::rng(), EPOCH_LEN).into()
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
    /// The names in `topics`, in order, so that a page of the listing costs O(log n + page)
    /// instead of a sort of every topic. Changed only under the map shard of the name changed.
    names: Mutex<BTreeSet<Topic>>,
    /// `topics.len()`, kept exact (changed under the shard lock with the map) so that the limit
    /// check is one atomic operation.
    count: AtomicUsize,
    bounds: TopicBounds,
    patterns: RwLock<PatternIndex<Arc<Outbox>>>,
    rules: TopicRules,
    metrics: Arc<Metrics>,
    next_key: AtomicU64,
    next_client: AtomicU64,
    /// Seqs come from the broker; idle topics are dropped even when they have a last value.
    mirrored: bool,
}

struct TopicEntry {
    key: TopicKey,
    policy: Policy,
    state: Mutex<TopicState>,
}

struct TopicState {
    /// Identifies this run of the topic's stream: seqs are only comparable within one epoch.
    epoch: Arc<str>,
    seq: u64,
    last: Option<(u64, Data)>,
    /// The `snapshot` frame of `last`, encoded at the first subscribe that needs it and shared
    /// by every subscriber after it (a client's queue then holds a handle, not a copy); dropped
    /// whenever `last` changes.
    snapshot: Option<Bytes>,
    history: History,
    subscribers: HashMap<ClientId, Subscription>,
    /// The last publication's accept time (or the topic's creation, or its last load from the
    /// broker): an idle topic is dropped `idle_ttl` after it.
    touched: Instant,
    /// Set when the entry left the map; holders of a stale `Arc` must look the topic up again.
    removed: bool,
}

/// A client's presence on one topic, with the subscriptions (exact or pattern) that put it there.
struct Subscription {
    outbox: Arc<Outbox>,
    reasons: Vec<Pattern>,
}

/// Locks, ignoring poisoning: every critical section here leaves its data consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TopicState {
    /// Records `reason` for `who`; returns true when `who` was not receiving this topic before.
    fn add(&mut self, who: &Subscriber, reason: &Pattern) -> bool {
        let sub = (self.subscribers.entry(who.id)).or_insert_with(|| Subscription {
            outbox: who.outbox.clone(),
            reasons: Vec::with_capacity(1),
        });
        let fresh = sub.reasons.is_empty();
        if !sub.reasons.contains(reason) {
            sub.reasons.push(reason.clone());
        }
        fresh
    }

    /// Drops one reason; returns true when the topic is left with nothing worth keeping.
    fn remove(&mut self, id: ClientId, reason: &Pattern, mirrored: bool) -> bool {
        if let Some(sub) = self.subscribers.get_mut(&id) {
            sub.reasons.retain(|r| r != reason);
            if sub.reasons.is_empty() {
                self.subscribers.remove(&id);
            }
        }
        self.is_idle(mirrored)
    }

    /// Nothing worth keeping: no subscribers, and no last value that only this hub holds.
    fn is_idle(&self, mirrored: bool) -> bool {
        self.subscribers.is_empty() && (mirrored || self.last.is_none())
    }

    /// Created and never used: no publication, no exact subscriber (pattern subscribers are
    /// re-materialized if the topic comes back).
    fn unused(&self) -> bool {
        self.seq == 0
            && self.last.is_none()
            && (self.subscribers.values()).all(|s| s.reasons.iter().all(|r| r.as_exact().is_none()))
    }

    /// The `snapshot` frame of the last value, if there is one (see `snapshot`).
    fn snapshot_frame(&mut self, topic: &Topic) -> Option<Bytes> {
        let (ts, data) = self.last.as_ref()?;
        let frame =
            (self.snapshot).get_or_insert_with(|| protocol::snapshot_frame(topic, self.seq, *ts, data));
        Some(frame.clone())
    }

    /// A mirrored topic that has not seen its stream yet takes the first epoch it is shown.
    fn adopt(&mut self, epoch: &Arc<str>) {
        if self.seq == 0 && self.last.is_none() && &*self.epoch == UNKNOWN_EPOCH {
            self.epoch = epoch.clone();
        }
    }
}

/// The local instant at which a publication accepted at `ts` (ms since the Unix epoch, maybe on
/// another node) happened, for the latency histogram and the history TTL.
fn instant_of(ts: u64) -> Instant {
    let ago = Duration::from_millis(now_ms().saturating_sub(ts));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

/// Stores the broker's publications in `history` as if they had been published here, each at
/// its own accept time, so that the TTL counts from there.
fn refill(history: &mut History, entries: &[Remote]) -> history::Delta {
    let mut delta = history::Delta::default();
    for p in entries {
        delta += history.push(p.seq, p.ts, &p.data, instant_of(p.ts));
    }
    delta
}

impl Hub {
    /// A hub that assigns seqs itself (`mirrored` false) or mirrors a broker's topics.
    pub fn new(rules: TopicRules, bounds: TopicBounds, metrics: Arc<Metrics>, mirrored: bool) -> Hub {
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
            mirrored,
        }
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

    /// The topic's entry, created (with the pattern subscribers it matches) when missing; with
    /// `bounded`, creation beyond `max_topics` is refused. Also says whether it was created.
    fn entry(&self, topic: &Topic, bounded: bool) -> Result<(Arc<TopicEntry>, bool), RequestError> {
        if let Some(entry) = self.topics.get(topic) {
            return Ok((entry.clone(), false));
        }
        let patterns = self.patterns.read().unwrap_or_else(|e| e.into_inner());
        let vacant = match self.topics.entry(topic.clone()) {
            Entry::Occupied(e) => return Ok((e.get().clone(), false)),
            Entry::Vacant(v) => v,
        };
        // Reserved under the shard lock, so concurrent creators can never overshoot the limit.
        let max = self.bounds.max_topics;
        if bounded {
            let reserve = |n: usize| (n < max).then_some(n + 1);
            if self
                .count
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, reserve)
                .is_err()
            {
                return Err(RequestError::TooManyTopics(max));
            }
        } else {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
        let epoch = if self.mirrored {
            UNKNOWN_EPOCH.into()
        } else {
            new_epoch()
        };
        let mut state = TopicState {
            epoch,
            seq: 0,
            last: None,
            snapshot: None,
            history: History::new(self.rules.retention_for(topic)),
            subscribers: HashMap::new(),
            touched: Instant::now(),
            removed: false,
        };
        patterns.for_each_match(topic, |pattern, id, outbox| {
            let who = Subscriber {
                id,
                outbox: outbox.clone(),
            };
            state.add(&who, pattern);
        });
        let entry = Arc::new(TopicEntry {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            policy: self.rules.policy_for(topic),
            state: Mutex::new(state),
        });
        lock(&self.names).insert(topic.clone());
        vacant.insert(entry.clone());
        Ok((entry, true))
    }

    /// Makes sure every topic in `topics` exists, creating the missing ones within
    /// `max_topics`: all or none, so that a refused batch or subscription leaves nothing behind
    /// (what it created and nobody used yet is removed again).
    pub fn reserve<'a>(&self, topics: impl IntoIterator<Item = &'a Topic>) -> Result<(), RequestError> {
        let mut created = Vec::new();
        for topic in topics {
            if self.topics.contains_key(topic) {
                continue;
            }
            match self.entry(topic, true) {
                Ok((_, true)) => created.push(topic),
                Ok((_, false)) => {}
                Err(e) => {
                    for topic in created {
                        self.remove_if(topic, TopicState::unused);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Whether `topics` not held yet would fit within `max_topics` now; no reservation, so
    /// concurrent requests can overshoot by what they create between check and creation.
    pub fn has_room<'a>(&self, topics: impl IntoIterator<Item = &'a Topic>) -> Result<(), RequestError> {
        let missing: HashSet<&Topic> = topics.into_iter().filter(|t| !self.has(t)).collect();
        let max = self.bounds.max_topics;
        match self.topic_count().saturating_add(missing.len()) > max {
            true => Err(RequestError::TooManyTopics(max)),
            false => Ok(()),
        }
    }

    /// Removes `topic` when `pred` holds for its state, with the `removed` protocol: the state
    /// is marked under its lock while the map shard is held, so a holder of the old `Arc` sees
    /// it and looks the topic up again. Returns whether it was removed.
    fn remove_if(&self, topic: &Topic, pred: impl FnOnce(&TopicState) -> bool) -> bool {
        let removed = self.topics.remove_if(topic, |_, entry| {
            let mut state = lock(&entry.state);
            if state.removed || !pred(&state) {
                return false;
            }
            state.removed = true;
            let held = state.history.clear();
            self.count_history(held);
            state.last = None;
            state.snapshot = None;
            lock(&self.names).remove(topic);
            self.count.fetch_sub(1, Ordering::AcqRel);
            true
        });
        removed.is_some()
    }

    /// Runs `f` on the live state of `topic`, creating the topic if needed.
    fn with_topic<R>(&self, topic: &Topic, mut f: impl FnMut(&TopicEntry, &mut TopicState) -> R) -> R {
        loop {
            // Unbounded: callers that create topics on a client's behalf `reserve` them first;
            // this only re-creates one dropped in between, or a broker's mirror.
            let (entry, _) = match self.entry(topic, false) {
                Ok(found) => found,
                Err(_) => unreachable!("unbounded creation cannot fail"),
            };
            let mut state = lock(&entry.state);
            if !state.removed {
                return f(&entry, &mut state);
            }
        }
    }

    /// Assigns the next seq, encodes the update once and queues it for every subscriber.
    pub fn publish(&self, topic: &Topic, data: Data, source: Source) -> u64 {
        let (ts, accepted) = (now_ms(), Instant::now());
        let seq = self.with_topic(topic, |entry, state| {
            let seq = state.seq + 1;
            self.deliver(topic, entry, state, seq, ts, &data, accepted);
            seq
        });
        self.metrics.published(source).inc();
        seq
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
        state.seq = seq;
        state.touched = state.touched.max(accepted);
        let frame = protocol::update_frame(topic, seq, ts, data);
        self.fan_out(entry, state, &frame, accepted);
        let stored = state.history.push(seq, ts, data, accepted);
        self.count_history(stored);
        state.last = Some((ts, data.clone()));
        state.snapshot = None;
    }

    fn fan_out(&self, entry: &TopicEntry, state: &TopicState, frame: &Bytes, accepted: Instant) {
        let mut conflated = 0;
        for sub in state.subscribers.values() {
            let pushed = sub
                .outbox
                .push_topic(frame, entry.key, entry.policy, Some(accepted));
            conflated += u64::from(pushed == Pushed::Conflated);
        }
        if conflated > 0 {
            self.metrics.conflated.inc_by(conflated);
        }
    }

    /// Applies a publication the broker assigned its seq to, if it is the next one of a topic
    /// this hub holds; duplicates are dropped, anything else is for the caller to resolve.
    pub fn apply(&self, topic: &Topic, p: &Remote) -> Applied {
        let Some(entry) = self.topics.get(topic).map(|e| e.clone()) else {
            return Applied::Unknown;
        };
        let mut state = lock(&entry.state);
        if state.removed {
            return Applied::Unknown;
        }
        state.adopt(&p.epoch);
        if state.epoch != p.epoch {
            return Applied::Gap;
        }
        if p.seq <= state.seq {
            return Applied::Duplicate;
        }
        if p.seq != state.seq + 1 {
            return Applied::Gap;
        }
        self.deliver(topic, &entry, &mut state, p.seq, p.ts, &p.data, instant_of(p.ts));
        Applied::Delivered
    }

    /// Brings a topic (created when missing) up to the broker's `stored` state: the stored
    /// publications that continue the local stream are delivered in order; when they cannot
    /// (the broker lost the stream and started a new epoch, or history no longer reaches back),
    /// the topic restarts from `stored` and its subscribers get a `snapshot` carrying the new
    /// position: an explicit reset, never a silent gap.
    pub fn mirror(&self, topic: &Topic, stored: &Stored) {
        self.with_topic(topic, |entry, state| {
            // Loaded for a subscriber about to register: not idle, however old the stream.
            state.touched = Instant::now();
            state.adopt(&stored.epoch);
            if state.epoch == stored.epoch {
                let have = state.seq;
                for p in stored.entries.iter().skip_while(|p| p.seq <= have) {
                    if p.seq != state.seq + 1 {
                        break;
                    }
                    self.deliver(topic, entry, state, p.seq, p.ts, &p.data, instant_of(p.ts));
                }
                if stored.seq <= state.seq {
                    return;
                }
            }
            state.epoch = stored.epoch.clone();
            state.seq = stored.seq;
            state.last = stored.last.clone();
            state.snapshot = None;
            let mut delta = state.history.clear();
            delta += refill(&mut state.history, &stored.entries);
            self.count_history(delta);
            if let Some((ts, data)) = &state.last {
                let frame = protocol::reset_frame(topic, state.seq, *ts, data, &state.epoch);
                self.fan_out(entry, state, &frame, instant_of(*ts));
            }
        });
    }

    /// Every topic this hub holds, with its position: what a mirror must catch up on after
    /// losing the broker for a while.
    pub fn positions(&self) -> Vec<(Topic, Position)> {
        let topics: Vec<Topic> = self.topics.iter().map(|item| item.key().clone()).collect();
        (topics.into_iter())
            .filter_map(|t| Some((t.clone(), self.position(&t)?)))
            .collect()
    }

    /// A page of a topic's history as the broker stores it, within this hub's retention rules.
    pub fn page_of(&self, topic: &Topic, stored: &Stored, since: u64, limit: usize) -> HistoryPage {
        let mut history = History::new(self.rules.retention_for(topic));
        refill(&mut history, &stored.entries);
        history.expire(Instant::now());
        let (publications, complete) = history.page(since, limit, stored.seq);
        HistoryPage {
            position: Position {
                seq: stored.seq,
                epoch: stored.epoch.clone(),
            },
            publications,
            complete,
        }
    }

    /// Where `topic`'s stream stands here, if the hub holds it.
    pub fn position(&self, topic: &Topic) -> Option<Position> {
        let entry = self.topics.get(topic).map(|e| e.clone())?;
        let state = lock(&entry.state);
        Some(Position {
            seq: state.seq,
            epoch: state.epoch.clone(),
        })
    }

    /// Whether the hub holds `topic`.
    pub fn has(&self, topic: &Topic) -> bool {
        self.topics.contains_key(topic)
    }

    /// How many topics the hub knows.
    pub fn topic_count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Adds subscriptions. For every topic they match, returns the topic's position and the
    /// frames that bring the client up to date: the publications it missed when `since` names a
    /// position history can still serve, otherwise a snapshot of the last value (unless the
    /// client was already receiving the topic, so that subscribing again repeats nothing).
    ///
    /// Live updates are queued on the client's outbox from the moment each topic is registered,
    /// so the caller must hold the outbox corked and put the returned frames in front of them;
    /// both are decided under the topic's lock, so nothing is lost or repeated in between.
    ///
    /// An exact subscription to a topic that does not exist creates it, and counts against
    /// `max_topics`: when they do not all fit, nothing is registered (`too_many_topics`).
    pub fn subscribe(
        &self,
        who: &Subscriber,
        subscriptions: &[Pattern],
        since: &HashMap<Topic, Position>,
    ) -> Result<Subscribed, RequestError> {
        let exact: Vec<Topic> = subscriptions.iter().filter_map(Pattern::as_exact).collect();
        self.reserve(&exact)?;
        let mut out = Subscribed::default();
        let mut seen = HashSet::new();
        let now = Instant::now();
        let mut add = |topic: &Topic, entry: &TopicEntry, state: &mut TopicState, reason: &Pattern| {
            let fresh = state.add(who, reason);
            if !seen.insert(entry.key) {
                return;
            }
            let position = Position {
                seq: state.seq,
                epoch: state.epoch.clone(),
            };
            out.positions.insert(topic.clone(), position);
            if let Some(from) = since.get(topic) {
                let expired = state.history.expire(now);
                self.count_history(expired);
                // A position taken before the stream had an epoch (a mirrored topic nobody had
                // published to yet) is the start of whatever epoch came next.
                let same = from.epoch == state.epoch || (from.seq == 0 && &*from.epoch == UNKNOWN_EPOCH);
                let missed = same.then(|| state.history.after(from.seq, state.seq)).flatten();
                let recovered = missed.is_some();
                if let Some(missed) = missed {
                    let replay = missed.map(|e| (protocol::update_frame(topic, e.seq, e.ts, &e.data), None));
                    out.frames.extend(replay);
                }
                self.metrics.recovery(recovered);
                out.recovered.insert(topic.clone(), recovered);
                if recovered {
                    return;
                }
            }
            // A client already receiving the topic has its value, so a snapshot would repeat it;
            // unless it asked to recover and could not be, which always resets it.
            let reset = since.contains_key(topic);
            if let (true, Some(frame)) = (fresh || reset, state.snapshot_frame(topic)) {
                let key = (entry.policy == Policy::Conflate).then_some(entry.key);
                out.frames.push((frame, key));
            }
        };
        for sub in subscriptions {
            if let Some(topic) = sub.as_exact() {
                self.with_topic(&topic, |entry, state| add(&topic, entry, state, sub));
                continue;
            }
            let mut patterns = self.patterns.write().unwrap_or_else(|e| e.into_inner());
            patterns.insert(sub, who.id, who.outbox.clone());
            for item in self.topics.iter() {
                if sub.matches(item.key()) {
                    let mut state = lock(&item.value().state);
                    add(item.key(), item.value(), &mut state, sub);
                }
            }
        }
        Ok(out)
    }

    /// Drops expired history entries of every topic, so that topics nobody touches release
    /// their memory too, and drops idle topics (see [`TopicBounds::idle_ttl`]). Called
    /// periodically by the server, off the async workers: it walks every topic, one map shard
    /// at a time, collecting candidates, then removes each under its own shard and topic lock,
    /// re-checked there (a publish or subscribe may have come in between). Returns how many
    /// topics it dropped.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let cutoff = self.bounds.idle_ttl.and_then(|ttl| now.checked_sub(ttl));
        let idle = |state: &TopicState| {
            cutoff.is_some_and(|cutoff| state.subscribers.is_empty() && state.touched <= cutoff)
        };
        let mut candidates = Vec::new();
        for item in self.topics.iter() {
            let mut state = lock(&item.value().state);
            let expired = state.history.expire(now);
            self.count_history(expired);
            if idle(&state) {
                candidates.push(item.key().clone());
            }
        }
        let evicted = (candidates.iter())
            .filter(|topic| self.remove_if(topic, idle))
            .count();
        if evicted > 0 {
            self.metrics.topics_evicted.inc_by(evicted as u64);
        }
        evicted
    }

    fn count_history(&self, delta: history::Delta) {
        if delta != history::Delta::default() {
            self.metrics.history_messages.add(delta.messages);
            self.metrics.history_bytes.add(delta.bytes);
        }
    }

    /// Removes subscriptions. Once this returns, nothing more is queued through them.
    pub fn unsubscribe(&self, who: ClientId, subscriptions: &[Pattern]) {
        let mut idle = Vec::new();
        for sub in subscriptions {
            if let Some(topic) = sub.as_exact() {
                let entry = self.topics.get(&topic).map(|e| e.clone());
                if let Some(entry) = entry {
                    if lock(&entry.state).remove(who, sub, self.mirrored) {
                        idle.push(topic);
                    }
                }
                continue;
            }
            let mut patterns = self.patterns.write().unwrap_or_else(|e| e.into_inner());
            patterns.remove(sub, who);
            for item in self.topics.iter() {
                if sub.matches(item.key()) && lock(&item.value().state).remove(who, sub, self.mirrored) {
                    idle.push(item.key().clone());
                }
            }
        }
        for topic in idle {
            self.remove_if(&topic, |state| state.is_idle(self.mirrored));
        }
    }

    /// The latest publication of `topic`, if it has one.
    pub fn last(&self, topic: &Topic) -> Option<Publication> {
        let entry = self.topics.get(topic).map(|e| e.clone())?;
        let state = lock(&entry.state);
        let (ts, data) = state.last.clone()?;
        Some(Publication {
            topic: topic.clone(),
            seq: state.seq,
            ts,
            data,
        })
    }

    /// Up to `limit` stored publications of `topic` after `since`, with the topic's position
    /// and whether history still holds everything after `since`.
    pub fn history(&self, topic: &Topic, since: u64, limit: usize) -> Option<HistoryPage> {
        let entry = self.topics.get(topic).map(|e| e.clone())?;
        let mut state = lock(&entry.state);
        let expired = state.history.expire(Instant::now());
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

    /// Up to `limit` topics in name order, starting after `after`. O(log n + limit): a range
    /// of the name index (held only to copy the names), then one lookup per name. A topic
    /// dropped in between is left out of the page; the next page still starts after it.
    pub fn list(&self, after: Option<&Topic>, limit: usize) -> TopicPage {
        let mut names: Vec<Topic> = {
            let index = lock(&self.names);
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            let range = index.range::<Topic, _>((from, Bound::Unbounded));
            range.take(limit.saturating_add(1)).cloned().collect()
        };
        let next = (names.len() > limit).then(|| {
            names.truncate(limit);
            names.last().cloned()
        });
        let topics = (names.into_iter())
            .filter_map(|topic| {
                let entry = self.topics.get(&topic).map(|e| e.clone())?;
                let state = lock(&entry.state);
                Some(TopicInfo {
                    seq: state.seq,
                    subscribers: state.subscribers.len(),
                    topic,
                })
            })
            .collect();
        TopicPage {
            topics,
            next: next.flatten(),
        }
    }

    /// Local subscribers of `topic`, if the hub holds it.
    pub fn subscribers(&self, topic: &Topic) -> Option<usize> {
        let entry = self.topics.get(topic).map(|e| e.clone())?;
        let count = lock(&entry.state).subscribers.len();
        Some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::outbox::Next;
    use crate::settings::Settings;
    use serde_json::value::RawValue;

    fn hub() -> Hub {
        hub_with("")
    }

    fn hub_with(toml: &str) -> Hub {
        let settings = Settings::from_toml(toml).unwrap();
        let (rules, bounds) = (settings.topic_rules().unwrap(), settings.topic_bounds());
        Hub::new(rules, bounds, Arc::new(Metrics::new().unwrap()), false)
    }

    fn data(s: &str) -> Data {
        Arc::from(RawValue::from_string(s.to_string()).unwrap())
    }

    fn pats(list: &[&str]) -> Vec<Pattern> {
        list.iter().map(|p| Pattern::parse(p).unwrap()).collect()
    }

    fn topic(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    async fn frames(o: &Outbox) -> Vec<String> {
        if o.queued_bytes() == 0 {
            return vec![];
        }
        let mut out = Vec::new();
        assert!(matches!(o.next(&mut out).await, Next::Frames { .. }));
        out.iter()
            .map(|f| String::from_utf8_lossy(&f[2..]).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn overlapping_subscriptions_deliver_once_and_snapshot_once() {
        let hub = hub();
        assert_eq!(hub.publish(&topic("prices.A"), data("1"), Source::Http), 1);
        let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
        let done = hub
            .subscribe(
                &who,
                &pats(&["prices.A", "prices.*", "prices.>"]),
                &HashMap::new(),
            )
            .unwrap();
        assert_eq!(done.frames.len(), 1, "one snapshot per topic");
        let snap = String::from_utf8_lossy(&done.frames[0].0[2..]).into_owned();
        assert!(
            snap.contains(r#""type":"snapshot""#) && snap.contains(r#""seq":1"#),
            "{snap}"
        );
        assert_eq!(done.positions[&topic("prices.A")].seq, 1);
        assert!(
            frames(&who.outbox).await.is_empty(),
            "snapshots are returned, not queued"
        );
        assert_eq!(hub.publish(&topic("prices.A"), data("2"), Source::Http), 2);
        assert_eq!(frames(&who.outbox).await.len(), 1);
        // a topic created after the pattern subscription picks it up
        hub.publish(&topic("prices.B"), data("3"), Source::Http);
        assert_eq!(frames(&who.outbox).await.len(), 1);
        hub.unsubscribe(who.id, &pats(&["prices.*", "prices.>"]));
        hub.publish(&topic("prices.B"), data("4"), Source::Http);
        assert!(frames(&who.outbox).await.is_empty());
        hub.publish(&topic("prices.A"), data("5"), Source::Http);
        assert_eq!(frames(&who.outbox).await.len(), 1, "exact subscription remains");
    }

    #[tokio::test]
    async fn recovery_replays_exactly_the_missed_publications() {
        let hub = hub();
        let t = topic("chat.room");
        for i in 1..=5 {
            hub.publish(&t, data(&i.to_string()), Source::Http);
        }
        let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
        let at = hub
            .subscribe(&who, &pats(&["chat.room"]), &HashMap::new())
            .unwrap()
            .positions[&t]
            .clone();
        assert_eq!(at.seq, 5);
        let since = HashMap::from([(
            t.clone(),
            Position {
                seq: 2,
                epoch: at.epoch.clone(),
            },
        )]);
        let done = hub.subscribe(&who, &pats(&["chat.room"]), &since).unwrap();
        assert!(done.recovered[&t]);
        let got: Vec<String> = done
            .frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f.0[2..]).into_owned())
            .collect();
        assert_eq!(got.len(), 3);
        for (frame, seq) in got.iter().zip(3..) {
            assert!(
                frame.contains(&format!(r#""type":"update","topic":"chat.room","seq":{seq},"#)),
                "{frame}"
            );
        }
        let again = (hub.subscribe(&who, &pats(&["chat.room", "chat.*"]), &HashMap::new())).unwrap();
        assert!(again.frames.is_empty(), "already receiving: no second snapshot");
        assert_eq!(again.positions[&t].seq, 5);
        let wrong = HashMap::from([(
            t.clone(),
            Position {
                seq: 2,
                epoch: "other".into(),
            },
        )]);
        let done = hub.subscribe(&who, &pats(&["chat.room"]), &wrong).unwrap();
        assert!(!done.recovered[&t]);
        assert_eq!(done.frames.len(), 1);
        assert!(String::from_utf8_lossy(&done.frames[0].0).contains(r#""type":"snapshot""#));
    }

    #[tokio::test]
    async fn idle_topics_are_dropped() {
        let hub = hub();
        let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
        hub.subscribe(&who, &pats(&["a.b", "x.*"]), &HashMap::new())
            .unwrap();
        assert_eq!(hub.list(None, 10).topics.len(), 1);
        hub.unsubscribe(who.id, &pats(&["a.b", "x.*"]));
        assert!(hub.list(None, 10).topics.is_empty());
        hub.publish(&topic("a.b"), data("1"), Source::Http);
        hub.subscribe(&who, &pats(&["a.b"]), &HashMap::new()).unwrap();
        hub.unsubscribe(who.id, &pats(&["a.b"]));
        assert_eq!(
            hub.list(None, 10).topics.len(),
            1,
            "a topic with a last value stays"
        );
        assert_eq!(hub.last(&topic("a.b")).unwrap().seq, 1);
    }

    #[tokio::test]
    async fn topic_limit_is_all_or_none_and_listing_pages() {
        let hub = hub_with("[limits]\nmax_topics = 2");
        let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
        hub.subscribe(&who, &pats(&["x.*"]), &HashMap::new()).unwrap();
        hub.reserve(&[topic("x.a")]).unwrap();
        let refused = hub.reserve(&[topic("x.b"), topic("x.c")]).unwrap_err();
        assert_eq!(refused.code(), "too_many_topics");
        // x.b was created (with the pattern subscriber on it) before x.c did not fit.
        assert!(!hub.has(&topic("x.b")), "rolled back");
        assert_eq!(hub.topic_count(), 1);
        let refused = hub.subscribe(&who, &pats(&["x.b", "x.c"]), &HashMap::new());
        assert!(refused.is_err());
        assert_eq!(hub.topic_count(), 1);
        hub.publish(&topic("x.b"), data("1"), Source::Http);
        let page = hub.list(None, 1);
        assert_eq!(page.topics[0].topic, topic("x.a"));
        assert_eq!(page.topics[0].subscribers, 1);
        assert_eq!(page.next, Some(topic("x.a")));
        let page = hub.list(page.next.as_ref(), 1);
        assert_eq!((page.topics[0].topic.clone(), page.next), (topic("x.b"), None));
    }
}
