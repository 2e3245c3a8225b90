//! The Redis broker: what makes several tickwire nodes act as one (`broker.kind = "redis"`).
//!
//! Redis is the single source of truth for every topic: one Lua script assigns the next seq
//! atomically, stores the publication as the last value and in a capped stream (the history),
//! and `PUBLISH`es it on the topic's channel, all in one step, so nothing is acknowledged that
//! was not stored, and channel messages leave Redis in seq order. Keys, per topic `T`, under
//! `broker.prefix` `P`: `P:{T}:m` (hash: epoch `e`, seq `s`, last `t`/`d`), `P:{T}:h` (stream,
//! entry id = seq), `P:topics` (set of topic names), channel `P:c:T`, and per HTTP
//! `Idempotency-Key` `P:idem:K` (hash: body digest `h`, seqs `s`; expires with the window, K the
//! hex digest of the scoped key). The epoch is created by
//! the first publication after the hash went missing, so it changes exactly when Redis lost
//! the topic.
//!
//! Each node mirrors, in its [`Hub`], only the topics its clients need: a subscription first
//! subscribes to the Redis channel (a pattern subscription to a channel pattern), then loads
//! the topic's stored state into the hub, after which the hub applies channel messages by seq
//! ([`Hub::apply`]): duplicates (a topic seen through a topic and a pattern channel, or both a
//! load and a message) are dropped, and a gap (a message lost while the link was down) is
//! filled from the stream, or turned into an explicit reset when history no longer reaches.
//!
//! One task (the link) owns the pub/sub connection: it applies subscription changes in the
//! order they were made, dispatches messages, pings, and on any failure reconnects with
//! backoff, re-subscribes everything still wanted and catches every mirrored topic up.
//! Publishes and loads use a separate multiplexed connection, shared by all tasks.
//!
//! On a Redis Cluster (`broker.kind = "redis-cluster"`) the same code runs with the channel
//! `P:c:{T}` in its topic's slot, `SPUBLISH`/`SSUBSCRIBE`, a batch published per slot and new
//! topics announced on `P:new` (see `shards`).
//!
//! Files: this one holds the broker's state and what the node asks of it (its errors become
//! the [`RequestError`]s clients see here); `commands`: the publish script and the reads;
//! `interest`: what local clients want; `inbox`: the bounded queue between the pub/sub
//! connection and the link; `link`: the pub/sub link task; `sentinel`: which server to connect
//! to (fixed, or the primary Redis Sentinel names); `shards`: the connection to one server or a
//! Redis Cluster, channel names and what only a cluster needs; `presence`: the cluster's presence rooms,
//! subscriber counts and occupancy (its script `presence.lua`, its server found the same way as
//! the link's). The Lua scripts are `publish.lua` and `rebase.lua`.

mod commands;
mod inbox;
mod interest;
mod link;
pub mod presence;
mod sentinel;
mod shards;

pub use inbox::pause;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::Script;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tracing::warn;

use crate::cluster::idempotency::{self, IdempotencyKey};
use crate::metrics::Metrics;
use crate::protocol::error::RequestError;
use crate::protocol::Data;
use crate::pubsub::hub::{HistoryPage, Hub, Publication, TopicInfo, TopicPage};
use crate::settings::{BrokerKind, BrokerSettings, BrokerSubscribe};
use crate::sync::{lock, read};
use crate::topic::{Pattern, Topic};

use interest::{Command, Interest, Want};
use shards::{Channels, Conn, Seeds};

/// Why the Redis broker could not do what was asked.
#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("not connected to Redis")]
    Down,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot read broker.redis_ca_file {0}: {1}")]
    CaFile(std::path::PathBuf, std::io::Error),
    #[error("unexpected data in Redis key {key}: {what}")]
    Corrupt { key: String, what: &'static str },
    #[error("Redis holds limits.max_topics = {0} topics: new topics are refused")]
    TooManyTopics(usize),
    #[error("no sentinel names a primary for {0:?}")]
    NoPrimary(String),
    #[error("the server the sentinels name is not a primary (role {0:?}): a failover is under way")]
    NotPrimary(String),
}

/// The error code [`PUBLISH_LUA`] refuses a batch with when its new topics do not fit.
const TOO_MANY_TOPICS: &str = "TOOMANYTOPICS";

/// Subscription changes waiting for the link, at most this many.
const COMMAND_QUEUE: usize = 4096;
/// Topics per pipelined load.
const LOAD_CHUNK: usize = 256;

/// Assigns seqs, stores and publishes a batch of publications, atomically and in order.
/// KEYS: meta and stream of every message, the topic set, then the idempotency key. ARGV: an
/// epoch for topics that have none, the accept time, the channel prefix, the body digest (empty:
/// no idempotency key), the window in ms, `limits.max_topics`, then topic, data and history
/// size per message. Returns `{0, seqs...}` once published, `{1, seqs...}` when the idempotency
/// key already published this body (nothing published now), `{2}` when it published another
/// body. A batch whose new topics would take the set past the limit is refused whole, before
/// anything is written.
// In its own file so that it reads (and lints) as Lua; the bytes are the script.
const PUBLISH_LUA: &str = include_str!("publish.lua");
/// Starts a new epoch for a topic whose stream Redis lost part of (see `link::catch_up`).
const REBASE_LUA: &str = include_str!("rebase.lua");

/// What the publish script did.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// Stored and published with these seqs.
    New(Vec<u64>),
    /// The idempotency key already published this body with these seqs; nothing published.
    Replayed(Vec<u64>),
    /// The idempotency key already published another body.
    Conflict,
}

pub struct RedisBroker {
    /// Where Redis is; resolved again on every connect.
    target: sentinel::Target,
    /// The seed nodes, when Redis is a Redis Cluster (then `target` is unused).
    seeds: Option<Seeds>,
    channels: Channels,
    prefix: String,
    settings: BrokerSettings,
    /// `http.idempotency_window`, how long Redis keeps a publish's key.
    idempotency_window: Duration,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    script: Script,
    rebase: Script,
    /// The command connection; `None` while Redis is unreachable.
    conn: RwLock<Option<Conn>>,
    up: AtomicBool,
    /// Tells the link a command failed in a way that means the connection is gone.
    broken: Notify,
    interest: Mutex<Interest>,
    commands: mpsc::Sender<Command>,
    /// Topics whose messages the inbox dropped, for the link to resynchronise.
    drops: Arc<inbox::Drops>,
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

impl RedisBroker {
    /// Creates the broker and its link task; the node serves (not ready) until Redis answers.
    pub fn start(
        settings: &BrokerSettings,
        idempotency_window: Duration,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let target = sentinel::Target::new(settings)?;
        let cluster = settings.kind == BrokerKind::RedisCluster;
        let seeds = if cluster {
            let certs = (settings.redis_ca_file.as_ref())
                .map(|ca| std::fs::read(ca).map_err(|e| BrokerError::CaFile(ca.clone(), e)))
                .transpose()?;
            Some(Seeds::new(settings, certs)?)
        } else {
            None
        };
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let broker = Arc::new(RedisBroker {
            target,
            seeds,
            channels: Channels::new(&settings.prefix, cluster),
            prefix: settings.prefix.clone(),
            settings: settings.clone(),
            idempotency_window,
            hub,
            metrics,
            script: Script::new(PUBLISH_LUA),
            rebase: Script::new(REBASE_LUA),
            conn: RwLock::new(None),
            up: AtomicBool::new(false),
            broken: Notify::new(),
            interest: Mutex::default(),
            commands,
            drops: Arc::default(),
        });
        broker.metrics.broker_up.set(0);
        tokio::spawn(broker.clone().link(queue));
        Ok(broker)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn meta_key(&self, topic: &Topic) -> String {
        format!("{}:{{{}}}:m", self.prefix, topic.as_str())
    }

    fn stream_key(&self, topic: &Topic) -> String {
        format!("{}:{{{}}}:h", self.prefix, topic.as_str())
    }

    fn topics_key(&self) -> String {
        format!("{}:topics", self.prefix)
    }

    /// The broadcast channel announcing new topics on a cluster (see `shards`).
    fn new_topics_channel(&self) -> String {
        format!("{}:new", self.prefix)
    }

    fn connection(&self) -> Result<Conn, BrokerError> {
        let conn = read(&self.conn);
        conn.clone().ok_or(BrokerError::Down)
    }

    /// Runs one command round trip, bounded by `broker.timeout`; a connection-level failure
    /// also tells the link to reconnect.
    async fn round_trip<T>(
        &self,
        work: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        let timeout = self.settings.timeout;
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r.map_err(BrokerError::from),
            Err(_) => Err(BrokerError::Timeout(timeout)),
        };
        if let Err(e) = &result {
            let gone = match e {
                // READONLY: the server was demoted to a replica (a Sentinel failover); the
                // reconnect asks the sentinels for the new primary.
                BrokerError::Redis(e) => {
                    e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_timeout()
                        || e.code() == Some("READONLY")
                }
                BrokerError::Timeout(_) => true,
                _ => false,
            };
            if gone {
                self.broken.notify_one();
            }
        }
        result
    }

    /// Publishes `messages` in order, all or none; returns their seqs once Redis stored them.
    pub async fn publish(&self, messages: &[(Topic, Data)]) -> Result<Vec<u64>, RequestError> {
        match self.eval_publish(messages, None).await.map_err(unavailable)? {
            Published::New(seqs) => Ok(seqs),
            // Only a publish with an idempotency key can be replayed or conflict.
            Published::Replayed(_) | Published::Conflict => Err(unavailable(BrokerError::Corrupt {
                key: "publish reply".into(),
                what: "a replay for a publish without an idempotency key",
            })),
        }
    }

    /// Publishes once per key within the window, checked and recorded by the same script;
    /// `true` when the seqs are a replay.
    pub async fn publish_once(
        &self,
        messages: &[(Topic, Data)],
        key: &IdempotencyKey,
    ) -> Result<(Vec<u64>, bool), RequestError> {
        let once = Some((key, self.idempotency_window));
        match self.eval_publish(messages, once).await.map_err(unavailable)? {
            Published::New(seqs) => Ok((seqs, false)),
            Published::Replayed(seqs) => Ok((seqs, true)),
            Published::Conflict => Err(idempotency::other_body()),
        }
    }

    /// Gets the hub's mirror ready for `patterns`, new to one connection (see
    /// `listen_and_load`).
    pub async fn prepare(&self, patterns: &[Pattern]) -> Result<(), RequestError> {
        // The broker loads an exact topic into the mirror before the hub sees the subscription
        // (which then finds it held), so the mirror's room is checked here, before the load.
        let exact: Vec<Topic> = patterns.iter().filter_map(Pattern::as_exact).collect();
        self.hub.has_room(&exact)?;
        self.listen_and_load(patterns).await.map_err(unavailable)
    }

    /// The latest publication of `topic` stored in Redis, if it has one.
    pub async fn last(&self, topic: &Topic) -> Result<Option<Publication>, RequestError> {
        let stored = self
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

    /// Up to `limit` publications of `topic` stored in Redis after `since`, within this
    /// node's retention rules.
    pub async fn history(
        &self,
        topic: &Topic,
        since: u64,
        limit: usize,
    ) -> Result<Option<HistoryPage>, RequestError> {
        let stored = self.load(&[(topic.clone(), since)]).await.map_err(unavailable)?;
        let page = stored.into_iter().flatten().next();
        Ok(page.map(|stored| self.hub.page_of(topic, &stored, since, limit)))
    }

    /// A page of the topics in Redis, with this node's subscriber counts.
    pub async fn list(&self, after: Option<&Topic>, limit: usize) -> Result<TopicPage, RequestError> {
        let (rows, next) = self.scan_topics(after, limit).await.map_err(unavailable)?;
        let topics = (rows.into_iter())
            .map(|(topic, seq)| TopicInfo {
                subscribers: self.hub.subscribers(&topic).unwrap_or(0),
                topic,
                seq,
            })
            .collect();
        Ok(TopicPage { topics, next })
    }

    /// Makes sure the hub mirrors every topic `patterns` (new to this connection) cover:
    /// records the interest, waits until Redis delivers their channels, then loads what the hub
    /// does not hold yet. On failure nothing stays recorded.
    async fn listen_and_load(&self, patterns: &[Pattern]) -> Result<(), BrokerError> {
        if !self.is_up() {
            return Err(BrokerError::Down);
        }
        let live = self.want(patterns)?;
        let result = self.load_wanted(patterns, live).await;
        if result.is_err() {
            self.release(patterns);
        }
        result
    }

    /// Records `patterns` as wanted (all or none); returns what tells when each is live.
    fn want(&self, patterns: &[Pattern]) -> Result<Vec<watch::Receiver<bool>>, BrokerError> {
        let mut interest = lock(&self.interest);
        let mut live = Vec::with_capacity(patterns.len());
        for (i, pattern) in patterns.iter().enumerate() {
            if let Some(want) = interest.get_mut(pattern) {
                want.count += 1;
                live.push(want.live.subscribe());
                continue;
            }
            let all = self.settings.subscribe == BrokerSubscribe::All;
            let tx = Arc::new(watch::Sender::new(all));
            // Full means the link is far behind: refuse rather than wait unboundedly.
            if !all
                && self
                    .commands
                    .try_send(Command::Subscribe(pattern.clone(), tx.clone()))
                    .is_err()
            {
                drop(interest);
                self.release(&patterns[..i]);
                return Err(BrokerError::Down);
            }
            live.push(tx.subscribe());
            interest.insert(pattern, Want { count: 1, live: tx });
        }
        Ok(live)
    }

    async fn load_wanted(
        &self,
        patterns: &[Pattern],
        live: Vec<watch::Receiver<bool>>,
    ) -> Result<(), BrokerError> {
        let timeout = self.settings.timeout;
        for mut rx in live {
            match tokio::time::timeout(timeout, rx.wait_for(|live| *live)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(BrokerError::Down),
                Err(_) => return Err(BrokerError::Timeout(timeout)),
            }
        }
        let mut wanted = Vec::new();
        for pattern in patterns {
            match pattern.as_exact() {
                Some(topic) => wanted.push(topic),
                None => wanted.extend(self.topics_matching(pattern).await?),
            }
        }
        wanted.retain(|t| !self.hub.has(t));
        wanted.sort();
        wanted.dedup();
        let from_start: Vec<(Topic, u64)> = wanted.into_iter().map(|t| (t, 0)).collect();
        let stored = self.load(&from_start).await?;
        for ((topic, _), stored) in from_start.iter().zip(stored) {
            if let Some(stored) = stored {
                self.hub.mirror(topic, &stored);
            }
        }
        Ok(())
    }

    /// Forgets subscriptions; channels nobody wants any more are unsubscribed.
    pub fn release(&self, patterns: &[Pattern]) {
        let mut interest = lock(&self.interest);
        for pattern in patterns {
            let Some(want) = interest.get_mut(pattern) else {
                continue;
            };
            want.count -= 1;
            if want.count == 0 {
                interest.remove(pattern);
                if self.settings.subscribe == BrokerSubscribe::Interest {
                    // If the queue is full the channel stays subscribed until the next
                    // reconnect: its messages are dropped as unwanted, nothing is lost.
                    let _ = self.commands.try_send(Command::Unsubscribe(pattern.clone()));
                }
            }
        }
    }

    /// Whether a local client subscribes to `topic`, exactly or through a pattern.
    fn wanted(&self, topic: &Topic) -> bool {
        lock(&self.interest).wants(topic)
    }
}
