//! The node: what publishers (HTTP, WebSocket clients, the feed) and sessions go through, so
//! that none of them needs to know whether topics live in this process or in a cluster.
//!
//! The node holds the [`Hub`] (local fan-out) and the [`Broker`] (seqs and storage: the hub
//! itself in memory mode, Redis in a cluster, where every publication, including one made on
//! this node, reaches the local subscribers through Redis, which is what makes the order the
//! same on every node). It does not branch on which broker it has; it is the one place that
//! counts publications (`tickwire_messages_published_total`), whichever broker stored them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::broker::Broker;
use crate::cluster::idempotency::IdempotencyKey;
use crate::cluster::presence::Presence;
use crate::cluster::redis::BrokerError;
use crate::metrics::{Metrics, Source};
use crate::protocol::error::RequestError;
use bytes::Bytes;

use crate::protocol::{new_epoch, Data, Position};
use crate::pubsub::hub::{HistoryPage, Hub, Publication, Subscribed, Subscriber, TopicPage};
use crate::pubsub::outbox::Outbox;
use crate::pubsub::presence::Joining;
use crate::pubsub::throttle::Terms;
use crate::settings::{patterns, Settings};
use crate::topic::{Pattern, Topic};

/// Why the node could not start: bad topic rules, or a broker that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    #[error("cluster broker: {0}")]
    Broker(#[from] BrokerError),
}

pub struct Node {
    hub: Arc<Hub>,
    broker: Broker,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    /// `http.idempotency_window`; zero: keys are ignored.
    idempotency_window: Duration,
}

impl Node {
    /// The hub and the broker `broker.kind` names (a Redis broker starts its link task here,
    /// so this needs a runtime). Redis need not be reachable yet: the node serves, unready,
    /// until it is.
    pub fn start(settings: &Settings, metrics: Arc<Metrics>) -> Result<Node, StartError> {
        let mirrored = Broker::mirrors(settings.broker.kind);
        let (rules, bounds) = (settings.topic_rules()?, settings.topic_bounds());
        let rooms = patterns(
            "presence.patterns",
            settings.presence.patterns.iter().map(String::as_str),
        )?;
        let hub = Hub::new(rules, bounds, metrics.clone(), mirrored).with_presence(rooms);
        let hub = Arc::new(hub);
        let broker = Broker::start(settings, hub.clone(), metrics.clone())?;
        // This node's name in member ids: random, so ids stay unique across a cluster and
        // across restarts.
        let name = new_epoch();
        let presence = Arc::new(Presence::new(settings, hub.clone(), name, metrics.clone())?);
        tokio::spawn(presence.clone().run());
        // One task releases every delivery a max rate held back, for the whole node.
        let pacing = hub.clone();
        tokio::spawn(async move { pacing.pace().await });
        Ok(Node {
            hub,
            broker,
            presence,
            metrics,
            idempotency_window: settings.http.idempotency_window,
        })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Presence rooms, subscriber counts and occupancy, cluster-wide.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Whether the node can serve publishes and new subscriptions.
    pub fn ready(&self) -> bool {
        self.broker.ready()
    }

    /// Publishes `messages` in order, all or none; returns their seqs once they are stored.
    pub async fn publish(
        &self,
        messages: &[(Topic, Data)],
        source: Source,
    ) -> Result<Vec<u64>, RequestError> {
        let seqs = self.broker.publish(messages).await?;
        self.count(source, &seqs);
        Ok(seqs)
    }

    /// Whether publishes honour an idempotency key (`http.idempotency_window` is not zero).
    pub fn idempotency(&self) -> bool {
        !self.idempotency_window.is_zero()
    }

    /// Publishes like [`Node::publish`], once per `key` within `http.idempotency_window`:
    /// a repeat with the same body gets the first seqs and `true` (replayed), another body
    /// an `idempotency_conflict`.
    pub async fn publish_once(
        &self,
        messages: &[(Topic, Data)],
        source: Source,
        key: &IdempotencyKey,
    ) -> Result<(Vec<u64>, bool), RequestError> {
        let (seqs, replayed) = self.broker.publish_once(messages, key).await?;
        if !replayed {
            self.count(source, &seqs);
        }
        Ok((seqs, replayed))
    }

    /// Counts publications once they are stored: here, for every broker, once per batch.
    fn count(&self, source: Source, seqs: &[u64]) {
        self.metrics.published(source).inc_by(seqs.len() as u64);
    }

    /// Gets the node ready to register `patterns`, new to one connection, with the hub. The
    /// caller must [`Node::release`] them when the connection drops them (not on error).
    async fn prepare(&self, patterns: &[Pattern]) -> Result<(), RequestError> {
        self.broker.prepare(patterns).await
    }

    /// Forgets subscriptions a connection dropped (after the hub did).
    fn release(&self, patterns: &[Pattern]) {
        self.broker.release(patterns);
    }

    /// The latest publication of `topic`, if it has one.
    pub async fn last(&self, topic: &Topic) -> Result<Option<Publication>, RequestError> {
        self.broker.last(topic).await
    }

    /// Up to `limit` stored publications of `topic` after `since`.
    pub async fn history(
        &self,
        topic: &Topic,
        since: u64,
        limit: usize,
    ) -> Result<Option<HistoryPage>, RequestError> {
        self.broker.history(topic, since, limit).await
    }

    /// A page of the known topics in name order, after `after`; in a cluster, of the topics
    /// in Redis, with this node's subscriber counts.
    pub async fn list(&self, after: Option<&Topic>, limit: usize) -> Result<TopicPage, RequestError> {
        self.broker.list(after, limit).await
    }
}

/// Topics a subscribe or unsubscribe registers or drops between two yields to the runtime:
/// well under a millisecond of work in a release build.
const SLICE: usize = 512;

/// Undoes a subscribe that stopped between its slices because its connection ended (the
/// transport dropped the request's future): what the hub registered so far goes, and the
/// prepared patterns are released, so nothing stays behind that the session does not know of
/// (its own subscriptions it ends itself, `Session::close`).
struct Interrupted<'a> {
    node: &'a Node,
    who: &'a Subscriber,
    patterns: &'a [Pattern],
    new: &'a [Pattern],
}

impl Drop for Interrupted<'_> {
    fn drop(&mut self) {
        self.node.hub.unsubscribe(self.who.id, self.patterns);
        self.node.release(self.new);
    }
}

/// What a connection's session goes through for its subscriptions, so that it never touches
/// the hub: the subscribe sequence (prepare in a cluster, cork, register, uncork with the reply
/// and the catch-up) and its undoing, each written once here.
impl Node {
    /// A fresh identity for a new connection, delivering to `outbox`.
    pub fn new_subscriber(&self, outbox: Arc<Outbox>) -> Subscriber {
        self.hub.new_subscriber(outbox)
    }

    /// Registers `who`'s subscriptions `patterns`, of which `new` are new to its connection
    /// (prepared in a cluster, counted, released again on failure), and queues on its outbox
    /// the frame `reply` makes of the outcome, followed on success by the catch-up (recovered
    /// publications from the `since` positions, or snapshots), ahead of every update published
    /// meanwhile, so that nothing is lost or repeated around a snapshot. A failure is returned
    /// after its reply is queued. With `joining`, its exact subscriptions to presence rooms
    /// seat it as a member.
    #[allow(clippy::too_many_arguments)]
    pub async fn subscribe(
        &self,
        who: &Subscriber,
        patterns: &[Pattern],
        new: &[Pattern],
        since: &HashMap<Topic, Position>,
        terms: Terms,
        joining: Option<Joining>,
        reply: impl FnOnce(Result<&Subscribed, &RequestError>) -> Bytes,
    ) -> Result<(), RequestError> {
        if let Err(e) = self.fits(who, new).await {
            who.outbox.push(reply(Err(&e)));
            return Err(e);
        }
        // In a cluster: listen to the new topics' channels and load their state first.
        if let Err(e) = self.prepare(new).await {
            who.outbox.push(reply(Err(&e)));
            return Err(e);
        }
        // Updates published while the hub registers us wait behind the reply and the catch-up
        // frames (see `Hub::subscribe`).
        let cork = who.outbox.cork();
        let mut job = match self.hub.subscribing(who, patterns, since, terms, joining) {
            Ok(job) => job,
            Err(e) => {
                cork.uncork(std::iter::once((reply(Err(&e)), None)));
                self.release(new);
                return Err(e);
            }
        };
        // A request of many patterns over many topics is registered in slices, with the
        // runtime free between them, so that it never stalls other connections for long.
        let interrupted = Interrupted {
            node: self,
            who,
            patterns,
            new,
        };
        for pattern in patterns {
            job.add(pattern);
            loop {
                let done = job.run(SLICE);
                if job.worked(SLICE) {
                    tokio::task::yield_now().await;
                }
                if done {
                    break;
                }
            }
        }
        std::mem::forget(interrupted);
        let done = job.finish();
        self.metrics.subscriptions.add(new.len() as i64);
        let first = std::iter::once((reply(Ok(&done)), None));
        cork.uncork(first.chain(done.frames));
        Ok(())
    }

    /// Refuses, before anything is registered, `new` subscriptions that would take `who` past
    /// `limits.max_topics_per_connection`: its topics now, plus one per exact name and every
    /// existing topic each pattern matches (a topic two of them match counts twice, so this
    /// may refuse a request that would just fit). The walks stop at the limit, in slices with
    /// the runtime free between them.
    async fn fits(&self, who: &Subscriber, new: &[Pattern]) -> Result<(), RequestError> {
        let limit = self.hub.bounds().max_topics_per_connection;
        let over = || RequestError::TopicsPerConnection(limit);
        let mut total = who.outbox.topics();
        // No walk when the request would fit even if each pattern matched every topic of the
        // node: the common case, and then the walks are a subscribe's most costly part after
        // the registration itself (a reconnect storm makes thousands at once).
        let patterns = new.iter().filter(|p| !p.is_exact()).count();
        let topics = self.hub.topic_count();
        let worst =
            (total.saturating_add(new.len() - patterns)).saturating_add(patterns.saturating_mul(topics));
        if worst <= limit {
            return Ok(());
        }
        // Patterns and topics walked since the last yield: a request of many narrow patterns
        // is as much work as one wide one.
        let mut work = 0;
        for pattern in new {
            work += 1;
            if work >= SLICE {
                work = 0;
                tokio::task::yield_now().await;
            }
            if pattern.as_exact().is_some() {
                total += 1;
                if total > limit {
                    return Err(over());
                }
                continue;
            }
            let mut after = None;
            loop {
                // Enough to tell whether the pattern goes past the limit, and no more.
                let budget = (limit.saturating_sub(total) + 1).min(SLICE);
                let slice = self.hub.matching_after(pattern, after.as_ref(), budget);
                total += slice.len();
                work += slice.len();
                if total > limit {
                    return Err(over());
                }
                if slice.len() < budget {
                    break;
                }
                after = slice.last().cloned();
                if work >= SLICE {
                    work = 0;
                    tokio::task::yield_now().await;
                }
            }
        }
        Ok(())
    }

    /// Ends `who`'s subscriptions `patterns` in the hub (so nothing more is queued through
    /// them), then releases and uncounts `held`: those among them its connection held (an
    /// unsubscribe request may name others).
    pub async fn unsubscribe(&self, who: &Subscriber, patterns: &[Pattern], held: &[Pattern]) {
        // One pattern at a time, with the runtime free between slices (see `subscribe`).
        let mut work = 0;
        for pattern in patterns {
            work += self.hub.unsubscribe(who.id, std::slice::from_ref(pattern));
            if work >= SLICE {
                work = 0;
                tokio::task::yield_now().await;
            }
        }
        self.let_go(held);
    }

    /// [`Node::unsubscribe`] in one go, for a thread off the runtime (the reaper), where a long
    /// walk keeps no other task waiting.
    pub fn unsubscribe_blocking(&self, who: &Subscriber, patterns: &[Pattern], held: &[Pattern]) {
        self.hub.unsubscribe(who.id, patterns);
        self.let_go(held);
    }

    /// After an unsubscribe: releases and uncounts the subscriptions `held`.
    fn let_go(&self, held: &[Pattern]) {
        self.release(held);
        self.metrics.subscriptions.sub(held.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// A subscribe whose connection ends between its slices leaves nothing in the hub: no
    /// subscriber on the topics registered so far, no pattern that a new topic would pick up.
    #[tokio::test]
    async fn an_interrupted_subscribe_leaves_nothing_behind() {
        let settings = Settings::from_toml("").unwrap();
        let node = Node::start(&settings, Arc::new(Metrics::new().unwrap())).unwrap();
        let topics: Vec<Topic> = (0..3 * SLICE)
            .map(|i| Topic::parse(&format!("p.t{i}")).unwrap())
            .collect();
        let one: Data = Arc::from(RawValue::from_string("1".into()).unwrap());
        for topic in &topics {
            node.hub.publish(topic, one.clone());
        }
        let outbox = Arc::new(Outbox::new(1 << 20));
        let who = node.new_subscriber(outbox.clone());
        let patterns = [Pattern::parse("p.*").unwrap()];
        let since = HashMap::new();
        {
            let subscribe = node.subscribe(&who, &patterns, &patterns, &since, Terms::PLAIN, None, |_| {
                Bytes::new()
            });
            tokio::pin!(subscribe);
            // Counted first (`fits`, in slices too), then registered slice by slice.
            let registered = || {
                (topics.iter())
                    .filter(|t| node.hub.subscribers(t) == Some(1))
                    .count()
            };
            let mut polls = 0;
            while registered() == 0 {
                let poll = futures_util::poll!(subscribe.as_mut());
                assert!(poll.is_pending(), "3 slices' worth of topics yield in between");
                polls += 1;
                assert!(polls <= 4 * 3, "never started registering");
            }
            assert!(
                registered() >= SLICE && registered() < topics.len(),
                "a first slice was registered: {}",
                registered()
            );
        }
        assert!(topics.iter().all(|t| node.hub.subscribers(t) == Some(0)));
        assert_eq!(
            outbox.topics(),
            0,
            "the connection's topic count went back with its records"
        );
        node.hub.publish(&Topic::parse("p.new").unwrap(), one);
        assert_eq!(node.hub.subscribers(&Topic::parse("p.new").unwrap()), Some(0));
        assert_eq!(outbox.queued_bytes(), 0, "nothing delivered, nothing left corked");
    }
}
