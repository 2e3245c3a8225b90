//! The topic registry: finding or creating a topic within `limits.max_topics`, removing one
//! (the `removed` protocol that tells holders of a stale entry to look again), the idle sweep,
//! and the ordered listing.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::mapref::entry::Entry;

use crate::protocol::disconnect::Disconnect;
use crate::protocol::error::RequestError;
use crate::protocol::{new_epoch, now_ms};
use crate::pubsub::history::History;
use crate::pubsub::idmap::IdMap;
use crate::pubsub::throttle::Interval;
use crate::sync::{lock, read};
use crate::topic::Topic;

use super::{Hub, Subscriber, TopicEntry, TopicInfo, TopicPage, TopicState};

impl Hub {
    /// The topic's entry, created (with the pattern subscribers it matches) when missing; with
    /// `bounded`, creation beyond `max_topics` is refused. Also says whether it was created.
    fn entry(&self, topic: &Topic, bounded: bool) -> Result<(Arc<TopicEntry>, bool), RequestError> {
        if let Some(entry) = self.topics.get(topic) {
            return Ok((entry.clone(), false));
        }
        let patterns = read(&self.patterns);
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
        let epoch = lock(&self.epoch).clone();
        let cap = (self.rules.max_rate_for(topic)).map_or(Interval::NONE, |rate| {
            Interval::from_rate(rate).expect("settings validate queue.policies' max_rate")
        });
        let mut state = TopicState {
            epoch,
            seq: 0,
            history: History::default(),
            snapshot: None,
            subscribers: IdMap::default(),
            touched: self.clock.ticks(Instant::now()),
            special: 0,
            cap,
            policy: self.rules.policy_for(topic),
            retention: self.rules.retention_index(topic),
            removed: false,
        };
        let limit = self.bounds.max_topics_per_connection;
        patterns.for_each_match(topic, |pattern, id, (outbox, terms)| {
            // One more topic would take the connection past its limit: closed, with a code
            // that says why, rather than left without this topic's updates and not knowing.
            if outbox.topics() >= limit && state.subscribers.get_mut(id).is_none() {
                outbox.close(Disconnect::TooManyTopics);
                return;
            }
            let who = Subscriber {
                id,
                outbox: outbox.clone(),
            };
            state.add(&who, pattern, *terms);
        });
        if !state.subscribers.is_empty() {
            self.presence.counted(topic, 0, state.subscribers.len());
        }
        let entry = Arc::new(TopicEntry {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(state),
        });
        lock(&self.names).insert(topic);
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
    pub(super) fn remove_if(&self, topic: &Topic, pred: impl FnOnce(&TopicState) -> bool) -> bool {
        let removed = self.topics.remove_if(topic, |_, entry| {
            let mut state = lock(&entry.state);
            if state.removed || !pred(&state) {
                return false;
            }
            state.removed = true;
            // Under the map shard, so no one can create the topic again before this.
            let mut epoch = lock(&self.epoch);
            if !self.mirrored && Arc::ptr_eq(&epoch, &state.epoch) {
                *epoch = new_epoch();
            }
            drop(epoch);
            let held = state.history.clear();
            self.count_history(held);
            state.snapshot = None;
            lock(&self.names).remove(topic);
            self.count.fetch_sub(1, Ordering::AcqRel);
            true
        });
        removed.is_some()
    }

    /// Runs `f` on the live state of `topic`, creating the topic if needed.
    pub(super) fn with_topic<R>(
        &self,
        topic: &Topic,
        mut f: impl FnMut(&TopicEntry, &mut TopicState) -> R,
    ) -> R {
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

    /// Whether the hub holds `topic`.
    pub fn has(&self, topic: &Topic) -> bool {
        self.topics.contains_key(topic)
    }

    /// How many topics the hub knows.
    pub fn topic_count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Drops expired history entries of every topic, so that topics nobody touches release
    /// their memory too, and drops idle topics (see [`TopicBounds::idle_ttl`]). Called
    /// periodically by the server, off the async workers: it walks every topic, one map shard
    /// at a time, collecting candidates, then removes each under its own shard and topic lock,
    /// re-checked there (a publish or subscribe may have come in between). Returns how many
    /// topics it dropped.
    pub fn sweep(&self) -> usize {
        let (now, now_ms) = (Instant::now(), now_ms());
        let idle = |state: &TopicState| {
            (self.bounds.idle_ttl).is_some_and(|ttl| {
                state.subscribers.is_empty() && self.clock.idle_for(state.touched, ttl, now)
            })
        };
        let mut candidates = Vec::new();
        for item in self.topics.iter() {
            let mut state = lock(&item.value().state);
            let bounds = self.rules.retention_at(state.retention);
            let expired = state.history.expire(bounds, now_ms);
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

    /// Up to `limit` topics in name order, starting after `after`. O(log n + limit): a range
    /// of the name index (held only to copy the names), then one lookup per name. A topic
    /// dropped in between is left out of the page; the next page still starts after it.
    pub fn list(&self, after: Option<&Topic>, limit: usize) -> TopicPage {
        let mut names = lock(&self.names).page(after, limit);
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

    /// Local subscribers of `topic` (connections receiving it), and how many of them through
    /// patterns only, if the hub holds it.
    pub fn subscriber_counts(&self, topic: &Topic) -> Option<(usize, usize)> {
        let entry = self.topics.get(topic).map(|e| e.clone())?;
        let state = lock(&entry.state);
        let total = state.subscribers.len();
        Some((total, total - state.subscribers.tally() as usize))
    }

    /// Queues a `join`/`leave` `frame` of another node's member for the local watchers of
    /// `topic`, under the topic's lock like its updates.
    pub fn presence_event(&self, topic: &Topic, frame: &bytes::Bytes) {
        let Some(entry) = self.topics.get(topic).map(|e| e.clone()) else {
            return;
        };
        let state = lock(&entry.state);
        if !state.removed {
            self.presence.remote(topic, frame);
        }
    }

    /// Local subscribers of `topic`, if the hub holds it.
    pub fn subscribers(&self, topic: &Topic) -> Option<usize> {
        let entry = self.topics.get(topic).map(|e| e.clone())?;
        let count = lock(&entry.state).subscribers.len();
        Some(count)
    }
}
