//! The broker seam: where a node's publications get their seqs and are stored, and how it
//! learns of everybody else's. The node talks to a [`Broker`] and never asks which one it is.
//!
//! - [`Broker::Memory`] (`broker.kind = "memory"`): one node; the hub assigns and stores.
//! - [`Broker::Redis`] (`"redis"`, `"redis-cluster"`): Redis (one server or a Redis Cluster)
//!   assigns and stores; the hub mirrors what local clients need.
//!
//! An enum, not a trait object: the set of brokers is closed and known at build time, and a
//! `match` is static dispatch the compiler can inline (a `dyn Broker` would also need boxed
//! futures for its async methods, one allocation per publish). Either way the cost is once per
//! publish *batch*, outside the hub's fan-out, so it adds nothing per delivery. Measured
//! (callgrind, see docs/architecture.md "A broker"): node + broker outside the hub went from
//! 6,365 to 5,908 instructions per batch (debug build), per-delivery functions unchanged.
//!
//! Adding a broker (e.g. NATS): a module beside `memory` and `redis` with the same methods,
//! and one more arm in each `match` below. Errors become [`RequestError`]s inside each broker,
//! which alone knows what its failures mean to a client.

use std::sync::Arc;

use crate::cluster::idempotency::IdempotencyKey;
use crate::cluster::memory::MemoryBroker;
use crate::cluster::redis::{BrokerError, RedisBroker};
use crate::metrics::Metrics;
use crate::protocol::error::RequestError;
use crate::protocol::Data;
use crate::pubsub::hub::{HistoryPage, Hub, Publication, TopicPage};
use crate::settings::{BrokerKind, Settings};
use crate::topic::{Pattern, Topic};

/// Test hook: `true` stops every Redis link of this process from taking messages off its
/// receive queue (a stalled node, for the bounded receive path's test), `false` resumes them.
#[doc(hidden)]
pub use crate::cluster::redis::pause as pause_redis_links;

pub enum Broker {
    Memory(MemoryBroker),
    Redis(Arc<RedisBroker>),
}

impl Broker {
    /// Whether `kind`'s hub mirrors topics whose seqs are assigned elsewhere.
    pub fn mirrors(kind: BrokerKind) -> bool {
        matches!(kind, BrokerKind::Redis | BrokerKind::RedisCluster)
    }

    /// The broker `broker.kind` names, feeding `hub`; a Redis broker starts its link task
    /// (so this needs a runtime), and Redis need not be reachable yet.
    pub fn start(settings: &Settings, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Result<Broker, BrokerError> {
        Ok(match settings.broker.kind {
            BrokerKind::Memory => Broker::Memory(MemoryBroker::start(settings, hub, &metrics)),
            BrokerKind::Redis | BrokerKind::RedisCluster => {
                let window = settings.http.idempotency_window;
                Broker::Redis(RedisBroker::start(&settings.broker, window, hub, metrics)?)
            }
        })
    }

    /// Whether the broker can take publishes and new subscriptions.
    pub fn ready(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(redis) => redis.is_up(),
        }
    }

    /// Publishes `messages` in order, all or none; returns their seqs once they are stored.
    pub async fn publish(&self, messages: &[(Topic, Data)]) -> Result<Vec<u64>, RequestError> {
        match self {
            Broker::Memory(memory) => memory.publish(messages).await,
            Broker::Redis(redis) => redis.publish(messages).await,
        }
    }

    /// Publishes once per `key` within `http.idempotency_window`; `true` when the seqs are a
    /// replay (nothing published now). Another body under the key is `idempotency_conflict`.
    pub async fn publish_once(
        &self,
        messages: &[(Topic, Data)],
        key: &IdempotencyKey,
    ) -> Result<(Vec<u64>, bool), RequestError> {
        match self {
            Broker::Memory(memory) => memory.publish_once(messages, key).await,
            Broker::Redis(redis) => redis.publish_once(messages, key).await,
        }
    }

    /// Makes the hub ready to register `patterns`, new to one connection.
    pub async fn prepare(&self, patterns: &[Pattern]) -> Result<(), RequestError> {
        match self {
            // The hub holds every topic already.
            Broker::Memory(_) => Ok(()),
            Broker::Redis(redis) => redis.prepare(patterns).await,
        }
    }

    /// Forgets subscriptions a connection dropped.
    pub fn release(&self, patterns: &[Pattern]) {
        match self {
            Broker::Memory(_) => {}
            Broker::Redis(redis) => redis.release(patterns),
        }
    }

    pub async fn last(&self, topic: &Topic) -> Result<Option<Publication>, RequestError> {
        match self {
            Broker::Memory(memory) => Ok(memory.last(topic)),
            Broker::Redis(redis) => redis.last(topic).await,
        }
    }

    pub async fn history(
        &self,
        topic: &Topic,
        since: u64,
        limit: usize,
    ) -> Result<Option<HistoryPage>, RequestError> {
        match self {
            Broker::Memory(memory) => Ok(memory.history(topic, since, limit)),
            Broker::Redis(redis) => redis.history(topic, since, limit).await,
        }
    }

    pub async fn list(&self, after: Option<&Topic>, limit: usize) -> Result<TopicPage, RequestError> {
        match self {
            Broker::Memory(memory) => Ok(memory.list(after, limit)),
            Broker::Redis(redis) => redis.list(after, limit).await,
        }
    }
}
