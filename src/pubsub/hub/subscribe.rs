//! Subscribing, with the catch-up that brings a client up to date (recovered publications or
//! a snapshot), and unsubscribing.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::Ordering;

use crate::protocol::error::RequestError;
use crate::protocol::{now_ms, Position};
use crate::pubsub::idmap::IdHasher;
use crate::pubsub::outbox::TopicKey;
use crate::pubsub::presence::Joining;
use crate::pubsub::throttle::Terms;
use crate::settings::Policy;
use crate::sync::{lock, write};
use crate::topic::{Pattern, Topic};

use super::{ClientId, Hub, Subscribed, Subscriber, TopicEntry, TopicState, ENCODING, UNKNOWN_EPOCH};

/// Topics an unsubscribe removes per hold of the names (a pattern's walk goes in slices).
const SLICE: usize = 4096;

impl Hub {
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
    ///
    /// In one go, for the tests; the node runs the same steps with yields between them.
    #[cfg(test)]
    pub fn subscribe(
        &self,
        who: &Subscriber,
        subscriptions: &[Pattern],
        since: &HashMap<Topic, Position>,
    ) -> Result<Subscribed, RequestError> {
        self.subscribe_on(who, subscriptions, since, Terms::PLAIN)
    }

    /// [`Hub::subscribe`] on `terms`.
    #[cfg(test)]
    pub fn subscribe_on(
        &self,
        who: &Subscriber,
        subscriptions: &[Pattern],
        since: &HashMap<Topic, Position>,
        terms: Terms,
    ) -> Result<Subscribed, RequestError> {
        let mut job = self.subscribing(who, subscriptions, since, terms, None)?;
        for sub in subscriptions {
            job.add(sub);
            while !job.run(usize::MAX) {}
        }
        Ok(job.finish())
    }

    /// [`Hub::subscribe`] in steps, so that a large request can let other work run between
    /// them (every step leaves the hub consistent, and no lock is held between steps): the
    /// exact topics are reserved here, all or none; then each subscription is [added]
    /// (`Subscribing::add`) and [run](`Subscribing::run`) to the end in slices; then
    /// [`Subscribing::finish`] gives what [`Hub::subscribe`] returns. With `joining`, an exact
    /// subscription to a presence room seats the connection as a member.
    pub fn subscribing<'a>(
        &'a self,
        who: &'a Subscriber,
        subscriptions: &[Pattern],
        since: &'a HashMap<Topic, Position>,
        terms: Terms,
        joining: Option<Joining>,
    ) -> Result<Subscribing<'a>, RequestError> {
        let exact: Vec<Topic> = subscriptions.iter().filter_map(Pattern::as_exact).collect();
        self.reserve(&exact)?;
        let catch_up = CatchUp {
            hub: self,
            who,
            since,
            terms,
            joining,
            now: now_ms(),
            seen: HashSet::default(),
            out: Subscribed::default(),
        };
        Ok(Subscribing {
            catch_up,
            pattern: None,
            after: None,
            work: 0,
            created_from: 0,
        })
    }

    /// Up to `budget` of the existing topics `pattern` matches, in name order after `after`:
    /// for counting what a subscription would bring before registering it.
    pub fn matching_after(&self, pattern: &Pattern, after: Option<&Topic>, budget: usize) -> Vec<Topic> {
        lock(&self.names).matching_after(pattern, after, budget)
    }

    /// Removes subscriptions. Once this returns, nothing more is queued through them. Returns
    /// the work done (patterns plus topics visited), for callers that pace themselves.
    pub fn unsubscribe(&self, who: ClientId, subscriptions: &[Pattern]) -> usize {
        let mut idle = Vec::new();
        let mut work = subscriptions.len();
        for sub in subscriptions {
            if let Some(topic) = sub.as_exact() {
                let entry = self.topics.get(&topic).map(|e| e.clone());
                if let Some(entry) = entry {
                    if self.remove_reason(&topic, &entry, who, sub) {
                        idle.push(topic);
                    }
                }
                continue;
            }
            // Out of the index first: a topic created from now on does not pick the pattern up,
            // and every topic that did is in the names by the time the write lock is ours.
            write(&self.patterns).remove(sub, who);
            // The names held for one slice at a time: a wide pattern's walk does not keep
            // topic creation waiting.
            let mut after = None;
            loop {
                let slice = lock(&self.names).matching_after(sub, after.as_ref(), SLICE);
                work += slice.len();
                for topic in &slice {
                    let Some(entry) = self.topics.get(topic).map(|e| e.clone()) else {
                        continue;
                    };
                    if self.remove_reason(topic, &entry, who, sub) {
                        idle.push(topic.clone());
                    }
                }
                if slice.len() < SLICE {
                    break;
                }
                after = slice.last().cloned();
            }
        }
        for topic in idle {
            self.remove_if(&topic, |state| state.is_idle(self.mirrored));
        }
        work
    }

    /// Drops `who`'s subscription `sub` from `topic`: its seat in a presence room when `sub` is
    /// exact, and the topic's occupancy when it was the last subscriber. Returns whether the
    /// topic is left idle.
    fn remove_reason(&self, topic: &Topic, entry: &TopicEntry, who: ClientId, sub: &Pattern) -> bool {
        let mut state = lock(&entry.state);
        let before = state.subscribers.len();
        let idle = state.remove(who, sub, self.mirrored);
        if sub.as_str() == topic.as_str() && self.presence.covers(topic) {
            self.presence.leave(topic, who);
        }
        self.presence.counted(topic, before, state.subscribers.len());
        idle
    }
}

/// A subscribe request in progress (see [`Hub::subscribing`]).
pub struct Subscribing<'a> {
    catch_up: CatchUp<'a>,
    /// The pattern last added, while some of the topics it matched then are not registered.
    pattern: Option<Pattern>,
    /// The last of its topics registered (they go in name order), if any.
    after: Option<Topic>,
    /// Subscriptions added and topics registered since [`Subscribing::worked`] last said so.
    work: usize,
    /// The first topic key handed out after the pattern entered the index: a topic with this
    /// key or a later one was created with the pattern already registered on it.
    created_from: TopicKey,
}

impl Subscribing<'_> {
    /// Registers `sub`. An exact subscription is registered at once; a pattern enters the
    /// pattern index (from then on every new topic it matches is created with the subscriber
    /// on it) and the topics it matches now wait for [`Subscribing::run`].
    pub fn add(&mut self, sub: &Pattern) {
        debug_assert!(
            self.pattern.is_none(),
            "run the previous subscription to the end first"
        );
        self.work += 1;
        let hub = self.catch_up.hub;
        if let Some(topic) = sub.as_exact() {
            let catch_up = &mut self.catch_up;
            hub.with_topic(&topic, |entry, state| catch_up.add(&topic, entry, state, sub));
            return;
        }
        let who = self.catch_up.who;
        {
            let mut patterns = write(&hub.patterns);
            let watcher = (who.outbox.clone(), self.catch_up.terms);
            patterns.insert(sub, who.id, watcher);
            // Read under the write lock: no topic is being created meanwhile (creation holds
            // the read lock while it takes its key and looks the patterns up).
            self.created_from = hub.next_key.load(Ordering::Relaxed);
        }
        self.after = None;
        self.pattern = Some(sub.clone());
    }

    /// Registers up to `budget` of the pattern's existing topics, in name order from where the
    /// last call stopped, the names locked only to find them; true when none is left. A topic
    /// created meanwhile has the pattern already (`created_from`), one dropped meanwhile is
    /// not found: the walk sees what the request would have seen in one go.
    pub fn run(&mut self, budget: usize) -> bool {
        let Some(sub) = &self.pattern else {
            return true;
        };
        let hub = self.catch_up.hub;
        let budget = budget.max(1);
        let slice = lock(&hub.names).matching_after(sub, self.after.as_ref(), budget);
        self.work += slice.len();
        let done = slice.len() < budget;
        self.after = slice.last().cloned();
        for topic in slice {
            let Some(entry) = hub.topics.get(&topic).map(|e| e.clone()) else {
                continue; // dropped since: if it comes back, it picks the pattern up
            };
            // Created after the pattern was indexed: registered at its creation, delivering
            // from its first publication, like a topic created after this request. Reporting
            // a position now could name a seq the client is about to receive as an update.
            if entry.key >= self.created_from {
                continue;
            }
            let mut state = lock(&entry.state);
            if !state.removed {
                self.catch_up.add(&topic, &entry, &mut state, sub);
            }
        }
        if done {
            self.pattern = None;
        }
        done
    }

    /// Whether `slice` units of work (subscriptions added, topics registered) were done since
    /// it last said so: the caller's cue to let other work run.
    pub fn worked(&mut self, slice: usize) -> bool {
        let due = self.work >= slice;
        if due {
            self.work = 0;
        }
        due
    }

    /// What the request collected: positions, recovery outcomes and catch-up frames.
    pub fn finish(self) -> Subscribed {
        debug_assert!(self.pattern.is_none());
        self.catch_up.out
    }
}

/// One subscribe request's registration, topic by topic, and what it collects for the reply.
struct CatchUp<'a> {
    hub: &'a Hub,
    who: &'a Subscriber,
    since: &'a HashMap<Topic, Position>,
    /// What the request asked for: max rate, deltas.
    terms: Terms,
    /// The connection as a member of the presence rooms it subscribes to exactly.
    joining: Option<Joining>,
    /// Milliseconds since the Unix epoch, for history's TTL.
    now: u64,
    /// Topics (by key) already answered for: a topic two subscriptions match is caught up once.
    /// Keys are handed out by the hub, so a multiply hashes them (no keyed hash needed).
    seen: HashSet<TopicKey, BuildHasherDefault<IdHasher>>,
    out: Subscribed,
}

impl CatchUp<'_> {
    /// Registers the subscriber on `topic` for `reason`, then, the first time the request meets
    /// the topic, records its position and the frames that bring the client up to date.
    fn add(&mut self, topic: &Topic, entry: &TopicEntry, state: &mut TopicState, reason: &Pattern) {
        let before = state.subscribers.len();
        let fresh = state.add(self.who, reason, self.terms);
        let presence = &self.hub.presence;
        presence.counted(topic, before, state.subscribers.len());
        if let Some(joining) = &self.joining {
            if reason.as_str() == topic.as_str() && presence.covers(topic) {
                presence.join(topic, joining, &self.who.outbox);
            }
        }
        // Past the cap only what `since` names (bounded by the request's size) is caught up;
        // nor is a skipped topic remembered, so the request holds no more than the cap either.
        let full = self.out.positions.len() >= self.hub.bounds.max_catch_up_topics;
        if full && !self.since.contains_key(topic) {
            self.out.truncated |= !self.seen.contains(&entry.key);
            if fresh {
                // No snapshot: the client has no value a delta could start from.
                state.forget_sent(self.who.id);
            }
            return;
        }
        if !self.seen.insert(entry.key) {
            return;
        }
        let position = Position {
            seq: state.seq,
            epoch: state.epoch.clone(),
        };
        self.out.positions.insert(topic.clone(), position);
        if let Some(from) = self.since.get(topic) {
            if self.recover(topic, state, from) {
                return;
            }
        }
        // A client already receiving the topic has its value, so a snapshot would repeat it;
        // unless it asked to recover and could not be, which always resets it.
        let reset = self.since.contains_key(topic);
        if !(fresh || reset) {
            return;
        }
        let deflate = self.who.outbox.deflate();
        if let Some(frame) = state.snapshot_frame(topic, deflate, self.hub.bounds) {
            let key = (state.policy == Policy::Conflate).then_some(entry.key);
            self.out.frames.push((frame, key));
        }
    }

    /// Queues the publications missed since `from` if history still holds them all; returns
    /// whether it did (otherwise the client gets a snapshot).
    fn recover(&mut self, topic: &Topic, state: &mut TopicState, from: &Position) -> bool {
        let bounds = self.hub.rules.retention_at(state.retention);
        let expired = state.history.expire(bounds, self.now);
        self.hub.count_history(expired);
        // A position taken before the stream had an epoch (a mirrored topic nobody had
        // published to yet) is the start of whatever epoch came next.
        let same = from.epoch == state.epoch || (from.seq == 0 && &*from.epoch == UNKNOWN_EPOCH);
        let missed = same.then(|| state.history.after(from.seq, state.seq)).flatten();
        let recovered = missed.is_some();
        if let Some(missed) = missed {
            let replay = missed.map(|e| (ENCODING.update_frame(topic, e.seq, e.ts, e.data), None));
            self.out.frames.extend(replay);
        }
        self.hub.metrics.recovery(recovered);
        self.out.recovered.insert(topic.clone(), recovered);
        recovered
    }
}
