//! Subscribing, with the catch-up that brings a client up to date (recovered publications or
//! a snapshot), and unsubscribing.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::protocol::error::RequestError;
use crate::protocol::Position;
use crate::pubsub::outbox::TopicKey;
use crate::settings::Policy;
use crate::sync::{lock, write};
use crate::topic::{Pattern, Topic};

use super::{ClientId, Hub, Subscribed, Subscriber, TopicEntry, TopicState, ENCODING, UNKNOWN_EPOCH};

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
    pub fn subscribe(
        &self,
        who: &Subscriber,
        subscriptions: &[Pattern],
        since: &HashMap<Topic, Position>,
    ) -> Result<Subscribed, RequestError> {
        let exact: Vec<Topic> = subscriptions.iter().filter_map(Pattern::as_exact).collect();
        self.reserve(&exact)?;
        let mut catch_up = CatchUp {
            hub: self,
            who,
            since,
            now: Instant::now(),
            seen: HashSet::new(),
            out: Subscribed::default(),
        };
        for sub in subscriptions {
            if let Some(topic) = sub.as_exact() {
                self.with_topic(&topic, |entry, state| catch_up.add(&topic, entry, state, sub));
                continue;
            }
            let mut patterns = write(&self.patterns);
            patterns.insert(sub, who.id, who.outbox.clone());
            for item in self.topics.iter() {
                if sub.matches(item.key()) {
                    let mut state = lock(&item.value().state);
                    catch_up.add(item.key(), item.value(), &mut state, sub);
                }
            }
        }
        Ok(catch_up.out)
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
            let mut patterns = write(&self.patterns);
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
}

/// One subscribe request's registration, topic by topic, and what it collects for the reply.
struct CatchUp<'a> {
    hub: &'a Hub,
    who: &'a Subscriber,
    since: &'a HashMap<Topic, Position>,
    now: Instant,
    /// Topics (by key) already answered for: a topic two subscriptions match is caught up once.
    seen: HashSet<TopicKey>,
    out: Subscribed,
}

impl CatchUp<'_> {
    /// Registers the subscriber on `topic` for `reason`, then, the first time the request meets
    /// the topic, records its position and the frames that bring the client up to date.
    fn add(&mut self, topic: &Topic, entry: &TopicEntry, state: &mut TopicState, reason: &Pattern) {
        let fresh = state.add(self.who, reason);
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
        if let (true, Some(frame)) = (fresh || reset, state.snapshot_frame(topic)) {
            let key = (entry.policy == Policy::Conflate).then_some(entry.key);
            self.out.frames.push((frame, key));
        }
    }

    /// Queues the publications missed since `from` if history still holds them all; returns
    /// whether it did (otherwise the client gets a snapshot).
    fn recover(&mut self, topic: &Topic, state: &mut TopicState, from: &Position) -> bool {
        let expired = state.history.expire(self.now);
        self.hub.count_history(expired);
        // A position taken before the stream had an epoch (a mirrored topic nobody had
        // published to yet) is the start of whatever epoch came next.
        let same = from.epoch == state.epoch || (from.seq == 0 && &*from.epoch == UNKNOWN_EPOCH);
        let missed = same.then(|| state.history.after(from.seq, state.seq)).flatten();
        let recovered = missed.is_some();
        if let Some(missed) = missed {
            let replay = missed.map(|e| (ENCODING.update_frame(topic, e.seq, e.ts, &e.data), None));
            self.out.frames.extend(replay);
        }
        self.hub.metrics.recovery(recovered);
        self.out.recovered.insert(topic.clone(), recovered);
        recovered
    }
}
