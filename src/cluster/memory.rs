//! The in-memory broker (`broker.kind = "memory"`): one node, whose [`Hub`] assigns the seqs
//! and keeps last values and history itself. It owns what only this mode has: the publish
//! loop straight into the hub, and the `Idempotency-Key` [`Ledger`] (a cluster keeps its keys
//! in Redis).

use std::sync::Arc;

use crate::cluster::idempotency::{Claim, IdempotencyKey, Ledger};
use crate::metrics::Metrics;
use crate::protocol::error::RequestError;
use crate::protocol::Data;
use crate::pubsub::hub::{HistoryPage, Hub, Publication, TopicPage};
use crate::settings::Settings;
use crate::topic::Topic;

/// Publications of one batch between two yields to the scheduler: a huge batch lands in every
/// subscriber's queue at once, and letting writers run in between keeps readers that keep up
/// from looking like slow consumers.
const YIELD_EVERY: usize = 256;

pub struct MemoryBroker {
    hub: Arc<Hub>,
    /// Recent idempotency keys; `None` when `http.idempotency_window` is zero (keys ignored).
    ledger: Option<Ledger>,
}

impl MemoryBroker {
    /// Always up: there is nothing to connect to.
    pub fn start(settings: &Settings, hub: Arc<Hub>, metrics: &Metrics) -> MemoryBroker {
        metrics.broker_up.set(1);
        let window = settings.http.idempotency_window;
        let ledger = (!window.is_zero()).then(|| {
            let gauges = (
                metrics.idempotency_keys.clone(),
                metrics.idempotency_bytes.clone(),
            );
            Ledger::new(window, settings.http.idempotency_max_keys, gauges)
        });
        MemoryBroker { hub, ledger }
    }

    /// Publishes `messages` in order, all or none: the batch's new topics are created (within
    /// `max_topics`) up front, after which no publication can fail.
    pub async fn publish(&self, messages: &[(Topic, Data)]) -> Result<Vec<u64>, RequestError> {
        self.hub.reserve(messages.iter().map(|(topic, _)| topic))?;
        let mut seqs = Vec::with_capacity(messages.len());
        for (i, (topic, data)) in messages.iter().enumerate() {
            if i > 0 && i % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            seqs.push(self.hub.publish(topic, data.clone()));
        }
        Ok(seqs)
    }

    /// Publishes once per key (see `Node::publish_once`); `true` when the seqs are a replay.
    pub async fn publish_once(
        &self,
        messages: &[(Topic, Data)],
        key: &IdempotencyKey,
    ) -> Result<(Vec<u64>, bool), RequestError> {
        let Some(ledger) = &self.ledger else {
            return Ok((self.publish(messages).await?, false));
        };
        match ledger.claim(key).await? {
            Claim::Replay(seqs) => Ok((seqs, true)),
            Claim::Fresh(reservation) => {
                let seqs = self.publish(messages).await?;
                reservation.finish(&seqs);
                Ok((seqs, false))
            }
        }
    }

    pub fn last(&self, topic: &Topic) -> Option<Publication> {
        self.hub.last(topic)
    }

    pub fn history(&self, topic: &Topic, since: u64, limit: usize) -> Option<HistoryPage> {
        self.hub.history(topic, since, limit)
    }

    pub fn list(&self, after: Option<&Topic>, limit: usize) -> TopicPage {
        self.hub.list(after, limit)
    }
}
