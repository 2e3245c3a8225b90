//! The node: what publishers (HTTP, WebSocket clients, the feed) and sessions go through, so
//! that none of them needs to know whether topics live in this process or in a cluster.
//!
//! With `broker.kind = "memory"` the [`Hub`] assigns seqs and keeps last values and history.
//! With `"redis"` the [`Broker`] assigns and stores them in Redis and the hub mirrors the
//! topics local clients need; every publication, including one made on this node, reaches the
//! local subscribers through Redis, which is what makes the order the same on every node.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::cluster::broker::{Broker, BrokerError, Published};
use crate::cluster::idempotency::{self, Claim, IdempotencyKey, Ledger};
use crate::metrics::{Metrics, Source};
use crate::protocol::error::RequestError;
use crate::protocol::Data;
use crate::pubsub::hub::{HistoryPage, Hub, Publication, TopicInfo, TopicPage};
use crate::settings::{BrokerKind, Settings};
use crate::topic::{Pattern, Topic};

/// Why the node could not start: bad topic rules, or a broker that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    #[error("cluster broker: {0}")]
    Broker(#[from] BrokerError),
}

/// Publications of one in-memory batch between two yields to the scheduler: a huge batch lands
/// in every subscriber's queue at once, and letting writers run in between keeps readers that
/// keep up from looking like slow consumers.
const YIELD_EVERY: usize = 256;

pub struct Node {
    hub: Arc<Hub>,
    broker: Option<Arc<Broker>>,
    metrics: Arc<Metrics>,
    /// `http.idempotency_window`; zero: keys are ignored.
    idempotency_window: Duration,
    /// Recent idempotency keys, in memory mode (a cluster keeps them in Redis).
    ledger: Option<Ledger>,
}

/// The edge's view of a broker failure, logged once here with its detail.
fn unavailable(e: BrokerError) -> RequestError {
    if let BrokerError::TooManyTopics(max) = e {
        return RequestError::TooManyTopics(max);
    }
    warn!(error = %e, "cluster broker request failed");
    RequestError::Unavailable(match e {
        BrokerError::Timeout(_) => "the cluster broker (Redis) did not answer in time",
        BrokerError::Corrupt { .. } => "the cluster broker (Redis) holds unreadable data",
        _ => "the cluster broker (Redis) is unavailable",
    })
}

impl Node {
    /// The hub, and in a cluster the broker with its link task (started here, so it needs a
    /// runtime). Redis need not be reachable yet: the node serves, unready, until it is.
    pub fn start(settings: &Settings, metrics: Arc<Metrics>) -> Result<Node, StartError> {
        let cluster = settings.broker.kind == BrokerKind::Redis;
        let (rules, bounds) = (settings.topic_rules()?, settings.topic_bounds());
        let hub = Arc::new(Hub::new(rules, bounds, metrics.clone(), cluster));
        let broker = match cluster {
            true => Some(Broker::start(&settings.broker, hub.clone(), metrics.clone())?),
            false => {
                metrics.broker_up.set(1);
                None
            }
        };
        let window = settings.http.idempotency_window;
        let ledger = (!cluster && !window.is_zero()).then(|| {
            let gauges = (
                metrics.idempotency_keys.clone(),
                metrics.idempotency_bytes.clone(),
            );
            Ledger::new(window, settings.http.idempotency_max_keys, gauges)
        });
        Ok(Node {
            hub,
            broker,
            metrics,
            idempotency_window: window,
            ledger,
        })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Whether the node can serve publishes and new subscriptions.
    pub fn ready(&self) -> bool {
        self.broker.as_ref().is_none_or(|b| b.is_up())
    }

    /// Publishes `messages` in order, all or none; returns their seqs once they are stored.
    pub async fn publish(
        &self,
        messages: &[(Topic, Data)],
        source: Source,
    ) -> Result<Vec<u64>, RequestError> {
        let Some(broker) = &self.broker else {
            // All or none: the batch's new topics are created (within max_topics) up front.
            self.hub.reserve(messages.iter().map(|(topic, _)| topic))?;
            let mut seqs = Vec::with_capacity(messages.len());
            for (i, (topic, data)) in messages.iter().enumerate() {
                if i > 0 && i % YIELD_EVERY == 0 {
                    tokio::task::yield_now().await;
                }
                seqs.push(self.hub.publish(topic, data.clone(), source));
            }
            return Ok(seqs);
        };
        match broker.publish(messages, None).await.map_err(unavailable)? {
            Published::New(seqs) => {
                self.metrics.published(source).inc_by(seqs.len() as u64);
                Ok(seqs)
            }
            // Only a publish with an idempotency key can be replayed or conflict.
            Published::Replayed(_) | Published::Conflict => Err(unavailable(BrokerError::Corrupt {
                key: "publish reply".into(),
                what: "a replay for a publish without an idempotency key",
            })),
        }
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
        if let Some(broker) = &self.broker {
            let once = Some((key, self.idempotency_window));
            return match broker.publish(messages, once).await.map_err(unavailable)? {
                Published::New(seqs) => {
                    self.metrics.published(source).inc_by(seqs.len() as u64);
                    Ok((seqs, false))
                }
                Published::Replayed(seqs) => Ok((seqs, true)),
                Published::Conflict => Err(idempotency::other_body()),
            };
        }
        let Some(ledger) = &self.ledger else {
            return Ok((self.publish(messages, source).await?, false));
        };
        match ledger.claim(key).await? {
            Claim::Replay(seqs) => Ok((seqs, true)),
            Claim::Fresh(reservation) => {
                let seqs = self.publish(messages, source).await?;
                reservation.finish(&seqs);
                Ok((seqs, false))
            }
        }
    }

    /// Gets the node ready to register `patterns`, new to one connection, with the hub. The
    /// caller must [`Node::release`] them when the connection drops them (not on error).
    pub async fn prepare(&self, patterns: &[Pattern]) -> Result<(), RequestError> {
        let Some(broker) = &self.broker else {
            return Ok(());
        };
        // The broker loads an exact topic into the mirror before the hub sees the subscription
        // (which then finds it held), so the mirror's room is checked here, before the load.
        let exact: Vec<Topic> = patterns.iter().filter_map(Pattern::as_exact).collect();
        self.hub.has_room(&exact)?;
        broker.prepare(patterns).await.map_err(unavailable)
    }

    /// Forgets subscriptions a connection dropped (after the hub did).
    pub fn release(&self, patterns: &[Pattern]) {
        if let Some(broker) = &self.broker {
            broker.release(patterns);
        }
    }

    /// The latest publication of `topic`, if it has one.
    pub async fn last(&self, topic: &Topic) -> Result<Option<Publication>, RequestError> {
        let Some(broker) = &self.broker else {
            return Ok(self.hub.last(topic));
        };
        let stored = broker
            .load(&[(topic.clone(), u64::MAX)])
            .await
            .map_err(unavailable)?;
        Ok(stored.into_iter().flatten().next().and_then(|s| {
            let (ts, data) = s.last?;
            Some(Publication {
                topic: topic.clone(),
                seq: s.seq,
                ts,
                data,
            })
        }))
    }

    /// Up to `limit` stored publications of `topic` after `since`.
    pub async fn history(
        &self,
        topic: &Topic,
        since: u64,
        limit: usize,
    ) -> Result<Option<HistoryPage>, RequestError> {
        let Some(broker) = &self.broker else {
            return Ok(self.hub.history(topic, since, limit));
        };
        let stored = broker
            .load(&[(topic.clone(), since)])
            .await
            .map_err(unavailable)?;
        let page = stored.into_iter().flatten().next();
        Ok(page.map(|stored| self.hub.page_of(topic, &stored, since, limit)))
    }

    /// A page of the known topics in name order, after `after`; in a cluster, of the topics
    /// in Redis, with this node's subscriber counts.
    pub async fn list(&self, after: Option<&Topic>, limit: usize) -> Result<TopicPage, RequestError> {
        let Some(broker) = &self.broker else {
            return Ok(self.hub.list(after, limit));
        };
        let (rows, next) = broker.list(after, limit).await.map_err(unavailable)?;
        let topics = (rows.into_iter())
            .map(|(topic, seq)| TopicInfo {
                subscribers: self.hub.subscribers(&topic).unwrap_or(0),
                topic,
                seq,
            })
            .collect();
        Ok(TopicPage { topics, next })
    }
}

/// What a connection's session goes through for its subscriptions, so that it never touches
/// the hub: the subscribe sequence (prepare in a cluster, cork, register, uncork with the reply
/// and the catch-up) and its undoing, each written once here.
impl Node {
    /// A fresh identity for a new connection, delivering to `outbox`.
    pub fn new_subscriber(
        &self,
        outbox: Arc<crate::pubsub::outbox::Outbox>,
    ) -> crate::pubsub::hub::Subscriber {
        self.hub.new_subscriber(outbox)
    }

    /// Registers `who`'s subscriptions `patterns`, of which `new` are new to its connection
    /// (prepared in a cluster, counted, released again on failure), and queues on its outbox
    /// the frame `reply` makes of the outcome, followed on success by the catch-up (recovered
    /// publications from the `since` positions, or snapshots), ahead of every update published
    /// meanwhile, so that nothing is lost or repeated around a snapshot. A failure is returned
    /// after its reply is queued.
    pub async fn subscribe(
        &self,
        who: &crate::pubsub::hub::Subscriber,
        patterns: &[Pattern],
        new: &[Pattern],
        since: &std::collections::HashMap<Topic, crate::protocol::Position>,
        reply: impl FnOnce(Result<&crate::pubsub::hub::Subscribed, &RequestError>) -> bytes::Bytes,
    ) -> Result<(), RequestError> {
        // In a cluster: listen to the new topics' channels and load their state first.
        if let Err(e) = self.prepare(new).await {
            who.outbox.push(reply(Err(&e)));
            return Err(e);
        }
        // Updates published while the hub registers us wait behind the reply and the catch-up
        // frames (see `Hub::subscribe`).
        let cork = who.outbox.cork();
        match self.hub.subscribe(who, patterns, since) {
            Ok(done) => {
                self.metrics.subscriptions.add(new.len() as i64);
                let first = std::iter::once((reply(Ok(&done)), None));
                cork.uncork(first.chain(done.frames));
                Ok(())
            }
            Err(e) => {
                cork.uncork(std::iter::once((reply(Err(&e)), None)));
                self.release(new);
                Err(e)
            }
        }
    }

    /// Ends `who`'s subscriptions `patterns` in the hub (so nothing more is queued through
    /// them), then releases and uncounts `held`: those among them its connection held (an
    /// unsubscribe request may name others).
    pub fn unsubscribe(&self, who: &crate::pubsub::hub::Subscriber, patterns: &[Pattern], held: &[Pattern]) {
        self.hub.unsubscribe(who.id, patterns);
        self.release(held);
        self.metrics.subscriptions.sub(held.len() as i64);
    }
}
