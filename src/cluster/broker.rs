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

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, Script};
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

use crate::cluster::idempotency::IdempotencyKey;
use crate::metrics::Metrics;
use crate::protocol::now_ms;
use crate::protocol::Data;
use crate::protocol::Position;
use crate::pubsub::hub::{self, lock, Applied, Hub, Remote, Stored};
use crate::settings::{BrokerSettings, BrokerSubscribe};
use crate::topic::{Pattern, Topic};

/// Why the broker could not do what was asked.
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
}

/// The error code [`PUBLISH_LUA`] refuses a batch with when its new topics do not fit.
const TOO_MANY_TOPICS: &str = "TOOMANYTOPICS";

/// Subscription changes waiting for the link, at most this many.
const COMMAND_QUEUE: usize = 4096;
/// Channels per SUBSCRIBE when re-subscribing after a reconnect.
const SUBSCRIBE_CHUNK: usize = 1000;
/// Topics per pipelined load.
const LOAD_CHUNK: usize = 256;
/// A link that lasted this long was healthy: losing it is retried at once.
const STABLE_LINK: Duration = Duration::from_secs(1);
/// How often the link checks the pub/sub connection is alive.
const PING_EVERY: Duration = Duration::from_secs(5);

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

/// A change of what the node listens to, applied by the link in order.
enum Command {
    /// Subscribe, then tell the waiting subscribers the channel is live.
    Subscribe(Pattern, Arc<watch::Sender<bool>>),
    Unsubscribe(Pattern),
}

pub struct Broker {
    client: Client,
    prefix: String,
    settings: BrokerSettings,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    script: Script,
    /// The command connection; `None` while Redis is unreachable.
    conn: RwLock<Option<MultiplexedConnection>>,
    up: AtomicBool,
    /// Tells the link a command failed in a way that means the connection is gone.
    broken: Notify,
    interest: Mutex<Interest>,
    commands: mpsc::Sender<Command>,
}

/// One subscription (exact topic or pattern) that local clients hold.
struct Want {
    /// How many connections hold it.
    count: usize,
    /// Becomes true once Redis delivers its channel; every connection that takes the
    /// subscription waits for it, not only the first, so that none loads a topic's state
    /// before its updates are sure to arrive.
    live: Arc<watch::Sender<bool>>,
}

/// What local clients subscribe to; exact topics apart so that a message finds out in one
/// lookup whether anybody wants it.
#[derive(Default)]
struct Interest {
    exact: HashMap<Topic, Want>,
    patterns: HashMap<Pattern, Want>,
}

impl Interest {
    fn get_mut(&mut self, p: &Pattern) -> Option<&mut Want> {
        match p.as_exact() {
            Some(topic) => self.exact.get_mut(&topic),
            None => self.patterns.get_mut(p),
        }
    }

    fn insert(&mut self, p: &Pattern, want: Want) {
        match p.as_exact() {
            Some(topic) => self.exact.insert(topic, want),
            None => self.patterns.insert(p.clone(), want),
        };
    }

    fn remove(&mut self, p: &Pattern) {
        match p.as_exact() {
            Some(topic) => self.exact.remove(&topic),
            None => self.patterns.remove(p),
        };
    }

    fn wants(&self, topic: &Topic) -> bool {
        self.exact.contains_key(topic) || self.patterns.keys().any(|p| p.matches(topic))
    }

    /// After (re-)subscribing everything: every subscription's channel is live.
    fn set_live(&self) {
        let wants = self.exact.values().chain(self.patterns.values());
        wants.for_each(|w| {
            w.live.send_replace(true);
        });
    }

    fn all(&self) -> Vec<Pattern> {
        let exact = self.exact.keys().filter_map(|t| Pattern::parse(t.as_str()).ok());
        exact.chain(self.patterns.keys().cloned()).collect()
    }
}

/// The Redis glob for a pattern's channels. Glob `*` also crosses dots, so it matches a
/// superset; messages are checked against the pattern itself before they are used.
fn glob(pattern: &Pattern) -> String {
    (pattern.as_str().split('.'))
        .map(|token| if token == ">" { "*" } else { token })
        .collect::<Vec<_>>()
        .join(".")
}

/// Parses a channel payload: `epoch seq ts data`.
fn parse_remote(payload: &[u8]) -> Option<Remote> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(4, ' ');
    let epoch = parts.next()?.into();
    let seq = parts.next()?.parse().ok()?;
    let ts = parts.next()?.parse().ok()?;
    let data = RawValue::from_string(parts.next()?.to_string()).ok()?;
    Some(Remote {
        epoch,
        seq,
        ts,
        data: Arc::from(data),
    })
}

/// A stream entry as XRANGE returns it: id `seq-0`, fields `t` (ts) and `d` (data).
type RawEntry = (String, Vec<(String, String)>);
/// A topic's hash: epoch, seq, last ts, last data.
type RawMeta = (Option<String>, Option<u64>, Option<u64>, Option<String>);

impl Broker {
    /// Creates the broker and its link task; the node serves (not ready) until Redis answers.
    pub fn start(
        settings: &BrokerSettings,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Broker>, BrokerError> {
        let url = settings.redis_url.expose();
        let client = match &settings.redis_ca_file {
            Some(ca) => {
                let root_cert = std::fs::read(ca).map_err(|e| BrokerError::CaFile(ca.clone(), e))?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                Client::build_with_tls(url, certs)?
            }
            None => Client::open(url)?,
        };
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let broker = Arc::new(Broker {
            client,
            prefix: settings.prefix.clone(),
            settings: settings.clone(),
            hub,
            metrics,
            script: Script::new(PUBLISH_LUA),
            conn: RwLock::new(None),
            up: AtomicBool::new(false),
            broken: Notify::new(),
            interest: Mutex::default(),
            commands,
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

    fn channel_prefix(&self) -> String {
        format!("{}:c:", self.prefix)
    }

    fn connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        let conn = self.conn.read().unwrap_or_else(|e| e.into_inner());
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
                BrokerError::Redis(e) => e.is_io_error() || e.is_connection_dropped() || e.is_timeout(),
                BrokerError::Timeout(_) => true,
                _ => false,
            };
            if gone {
                self.broken.notify_one();
            }
        }
        result
    }

    /// Stores and publishes `messages` in order, all or none, unless `once` (an idempotency
    /// key and its window) already published: checked and recorded in the same script.
    pub async fn publish(
        &self,
        messages: &[(Topic, Data)],
        once: Option<(&IdempotencyKey, Duration)>,
    ) -> Result<Published, BrokerError> {
        let mut conn = self.connection()?;
        let mut call = self.script.prepare_invoke();
        for (topic, _) in messages {
            call.key(self.meta_key(topic)).key(self.stream_key(topic));
        }
        call.key(self.topics_key());
        let (idem, digest, window) = match once {
            Some((key, window)) => (
                format!("{}:idem:{}", self.prefix, key.key_hex()),
                key.body_hex(),
                window.as_millis().max(1) as u64,
            ),
            // Never read or written without a digest; a key is passed so the layout is fixed.
            None => (format!("{}:idem:", self.prefix), String::new(), 0),
        };
        call.key(idem);
        let max_topics = self.hub.bounds().max_topics;
        call.arg(&*hub::new_epoch())
            .arg(now_ms())
            .arg(self.channel_prefix())
            .arg(digest)
            .arg(window)
            .arg(max_topics);
        let rules = self.hub.rules();
        for (topic, data) in messages {
            call.arg(topic.as_str())
                .arg(data.get())
                .arg(rules.retention_for(topic).size);
        }
        let started = std::time::Instant::now();
        let mut reply: Vec<u64> = match self.round_trip(call.invoke_async(&mut conn)).await {
            Err(BrokerError::Redis(e)) if e.code() == Some(TOO_MANY_TOPICS) => {
                return Err(BrokerError::TooManyTopics(max_topics))
            }
            result => result?,
        };
        (self.metrics.broker_publish_duration).observe(started.elapsed().as_secs_f64());
        let corrupt = |what| BrokerError::Corrupt {
            key: format!("{}:idem:", self.prefix),
            what,
        };
        if reply.is_empty() {
            return Err(corrupt("empty publish reply"));
        }
        let seqs = reply.split_off(1);
        match reply[0] {
            0 => Ok(Published::New(seqs)),
            1 if seqs.len() == messages.len() => Ok(Published::Replayed(seqs)),
            1 => Err(corrupt("stored seqs do not match the batch")),
            _ => Ok(Published::Conflict),
        }
    }

    /// The stored state of each topic (`None`: unknown to Redis), with the history entries
    /// after the given seq. One atomic pipeline per chunk, so each topic's hash and stream agree.
    pub async fn load(&self, topics: &[(Topic, u64)]) -> Result<Vec<Option<Stored>>, BrokerError> {
        let mut out = Vec::with_capacity(topics.len());
        for chunk in topics.chunks(LOAD_CHUNK) {
            let mut conn = self.connection()?;
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (topic, after) in chunk {
                pipe.cmd("HMGET")
                    .arg(self.meta_key(topic))
                    .arg(&["e", "s", "t", "d"]);
                pipe.cmd("XRANGE")
                    .arg(self.stream_key(topic))
                    .arg(after.saturating_add(1))
                    .arg("+");
            }
            let replies: Vec<(RawMeta, Vec<RawEntry>)> = self.round_trip(pipe.query_async(&mut conn)).await?;
            for ((topic, _), (meta, entries)) in chunk.iter().zip(replies) {
                out.push(self.parse_stored(topic, meta, entries)?);
            }
        }
        Ok(out)
    }

    fn parse_stored(
        &self,
        topic: &Topic,
        meta: RawMeta,
        entries: Vec<RawEntry>,
    ) -> Result<Option<Stored>, BrokerError> {
        let corrupt = |what| BrokerError::Corrupt {
            key: self.meta_key(topic),
            what,
        };
        let (Some(epoch), Some(seq)) = (meta.0, meta.1) else {
            return Ok(None);
        };
        let json = |s: String| {
            RawValue::from_string(s)
                .map(Arc::from)
                .map_err(|_| corrupt("data is not JSON"))
        };
        let last = match (meta.2, meta.3) {
            (Some(ts), Some(data)) => Some((ts, json(data)?)),
            _ => None,
        };
        let epoch: Arc<str> = epoch.into();
        let mut stored = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            let seq = (id.split('-').next().and_then(|s| s.parse().ok()))
                .ok_or_else(|| corrupt("bad stream id"))?;
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            let ts = field("t")
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| corrupt("entry without ts"))?;
            let data = json(field("d").ok_or_else(|| corrupt("entry without data"))?)?;
            stored.push(Remote {
                epoch: epoch.clone(),
                seq,
                ts,
                data,
            });
        }
        Ok(Some(Stored {
            epoch,
            seq,
            last,
            entries: stored,
        }))
    }

    /// Every topic Redis knows whose name matches `pattern`.
    async fn topics_matching(&self, pattern: &Pattern) -> Result<Vec<Topic>, BrokerError> {
        let mut conn = self.connection()?;
        let (mut cursor, mut out) = (0u64, Vec::new());
        loop {
            let mut cmd = redis::cmd("SSCAN");
            cmd.arg(self.topics_key())
                .arg(cursor)
                .arg("MATCH")
                .arg(glob(pattern))
                .arg("COUNT")
                .arg(1000);
            let (next, names): (u64, Vec<String>) = self.round_trip(cmd.query_async(&mut conn)).await?;
            let topics = names.iter().filter_map(|n| Topic::parse(n).ok());
            out.extend(topics.filter(|t| pattern.matches(t)));
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Up to `limit` topics Redis knows, in name order after `after`, with their seqs, and
    /// the name the next page starts after (`None` on the last page). A set has no order, so
    /// this scans all of it (SSCAN, in chunks) and keeps the `limit + 1` smallest names past
    /// `after` in an ordered set (which also drops the duplicates SSCAN may return):
    /// O(n log limit) time, O(limit) memory, one seq read per row.
    pub async fn list(
        &self,
        after: Option<&Topic>,
        limit: usize,
    ) -> Result<(Vec<(Topic, u64)>, Option<Topic>), BrokerError> {
        let mut conn = self.connection()?;
        let keep = limit.saturating_add(1);
        let (mut cursor, mut smallest) = (0u64, BTreeSet::new());
        loop {
            let mut cmd = redis::cmd("SSCAN");
            cmd.arg(self.topics_key()).arg(cursor).arg("COUNT").arg(1000);
            let (next, names): (u64, Vec<String>) = self.round_trip(cmd.query_async(&mut conn)).await?;
            for topic in names.iter().filter_map(|n| Topic::parse(n).ok()) {
                if after.is_some_and(|a| &topic <= a) {
                    continue;
                }
                smallest.insert(topic);
                if smallest.len() > keep {
                    smallest.pop_last();
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut topics: Vec<Topic> = smallest.into_iter().collect();
        let next = (topics.len() > limit).then(|| {
            topics.truncate(limit);
            topics.last().cloned()
        });
        let mut out = Vec::with_capacity(topics.len());
        for chunk in topics.chunks(LOAD_CHUNK) {
            let mut pipe = redis::pipe();
            for topic in chunk {
                pipe.cmd("HGET").arg(self.meta_key(topic)).arg("s");
            }
            let seqs: Vec<Option<u64>> = self.round_trip(pipe.query_async(&mut conn)).await?;
            out.extend(chunk.iter().cloned().zip(seqs).filter_map(|(t, s)| Some((t, s?))));
        }
        Ok((out, next.flatten()))
    }

    /// Makes sure the hub mirrors every topic `patterns` (new to this connection) cover:
    /// records the interest, waits until Redis delivers their channels, then loads what the hub
    /// does not hold yet. On failure nothing stays recorded.
    pub async fn prepare(&self, patterns: &[Pattern]) -> Result<(), BrokerError> {
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

    /// The link: connects, serves until the connection fails, and starts over with backoff.
    async fn link(self: Arc<Self>, mut queue: mpsc::Receiver<Command>) {
        let (min, max) = (self.settings.reconnect_min, self.settings.reconnect_max);
        let mut delay = min;
        let mut connected_before = false;
        loop {
            let failure = match self.connect().await {
                Ok((sink, stream)) => {
                    if connected_before {
                        self.metrics.broker_reconnects.inc();
                    }
                    connected_before = true;
                    let since = std::time::Instant::now();
                    let reason = self.serve(sink, stream, &mut queue).await;
                    self.set_down();
                    warn!(error = %reason, "lost Redis; reconnecting");
                    // A link that held for a while earns an immediate retry; one that fails
                    // right after connecting backs off like a failed connect.
                    if since.elapsed() >= STABLE_LINK {
                        delay = min;
                        continue;
                    }
                    reason
                }
                Err(e) => {
                    self.set_down();
                    e
                }
            };
            warn!(error = %failure, retry_in = ?delay, "cannot reach Redis");
            let jitter = rand::rng().random_range(0.5..1.0);
            tokio::time::sleep(delay.mul_f64(jitter)).await;
            delay = (delay * 2).min(max);
        }
    }

    fn set_down(&self) {
        self.up.store(false, Ordering::Release);
        self.metrics.broker_up.set(0);
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Opens both connections and subscribes to everything local clients want.
    async fn connect(&self) -> Result<(PubSubSink, PubSubStream), BrokerError> {
        let timeout = self.settings.timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let pubsub = match tokio::time::timeout(timeout, self.client.get_async_pubsub()).await {
            Ok(pubsub) => pubsub?,
            Err(_) => return Err(BrokerError::Timeout(timeout)),
        };
        let (mut sink, stream) = pubsub.split();
        if self.settings.subscribe == BrokerSubscribe::All {
            sink.psubscribe(format!("{}*", self.channel_prefix())).await?;
        } else {
            let wanted = lock(&self.interest).all();
            let (exact, patterns): (Vec<_>, Vec<_>) = wanted.iter().partition(|p| p.as_exact().is_some());
            for chunk in exact.chunks(SUBSCRIBE_CHUNK) {
                let channels: Vec<String> = chunk.iter().map(|p| self.channel(p)).collect();
                sink.subscribe(channels).await?;
            }
            for chunk in patterns.chunks(SUBSCRIBE_CHUNK) {
                let globs: Vec<String> = chunk.iter().map(|p| self.channel(p)).collect();
                sink.psubscribe(globs).await?;
            }
        }
        // Anything wanted meanwhile had its Subscribe queued and is subscribed again, harmlessly.
        lock(&self.interest).set_live();
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        // Subscribed first, then caught up: whatever was published meanwhile arrives either
        // in the stream read below or as a channel message after it (then a duplicate).
        let positions = self.hub.positions();
        for chunk in positions.chunks(LOAD_CHUNK) {
            self.catch_up(chunk).await?;
        }
        self.up.store(true, Ordering::Release);
        self.metrics.broker_up.set(1);
        info!(topics = positions.len(), "connected to Redis");
        Ok((sink, stream))
    }

    /// The channel (or channel pattern) of a subscription.
    fn channel(&self, pattern: &Pattern) -> String {
        match pattern.as_exact() {
            Some(topic) => format!("{}{}", self.channel_prefix(), topic.as_str()),
            None => format!("{}{}", self.channel_prefix(), glob(pattern)),
        }
    }

    /// Brings mirrored topics up to Redis: what they missed, or a reset when the stream they
    /// follow is gone (new epoch) or no longer reaches back far enough.
    async fn catch_up(&self, positions: &[(Topic, Position)]) -> Result<(), BrokerError> {
        let after: Vec<(Topic, u64)> = positions.iter().map(|(t, p)| (t.clone(), p.seq)).collect();
        let stored = self.load(&after).await?;
        let mut restarted = Vec::new();
        for ((topic, position), stored) in positions.iter().zip(stored) {
            // Unknown to Redis: it lost the topic, and the next publication starts a new
            // epoch, which resets the mirror when it arrives.
            let Some(stored) = stored else { continue };
            if stored.epoch == position.epoch || position.seq == 0 {
                self.hub.mirror(topic, &stored);
            } else {
                restarted.push((topic.clone(), 0));
            }
        }
        // A new epoch: the whole stored history, so that the mirror's history is complete.
        if !restarted.is_empty() {
            for ((topic, _), stored) in restarted.iter().zip(self.load(&restarted).await?) {
                if let Some(stored) = stored {
                    self.hub.mirror(topic, &stored);
                }
            }
        }
        Ok(())
    }

    /// Serves a connected link until it fails; returns why.
    async fn serve(
        &self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        queue: &mut mpsc::Receiver<Command>,
    ) -> BrokerError {
        let mut ping = tokio::time::interval(PING_EVERY);
        let prefix = self.channel_prefix();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return BrokerError::Down };
                    let topic = msg.get_channel_name().strip_prefix(&prefix).and_then(|t| Topic::parse(t).ok());
                    let (Some(topic), Some(remote)) = (topic, parse_remote(msg.get_payload_bytes())) else {
                        debug!(channel = msg.get_channel_name(), "ignoring a malformed channel message");
                        continue;
                    };
                    if let Err(e) = self.dispatch(&topic, &remote).await {
                        return e;
                    }
                }
                command = queue.recv() => {
                    let result = match command {
                        Some(Command::Subscribe(pattern, live)) => {
                            let r = self.listen(&mut sink, &pattern, true).await;
                            if r.is_ok() {
                                live.send_replace(true);
                            }
                            r
                        }
                        Some(Command::Unsubscribe(pattern)) => self.listen(&mut sink, &pattern, false).await,
                        None => return BrokerError::Down,
                    };
                    if let Err(e) = result {
                        return e;
                    }
                }
                _ = ping.tick() => {
                    // Subscribed, Redis answers PING with an array: any answer proves the link.
                    if let Err(e) = self.round_trip(sink.ping::<redis::Value>()).await {
                        return e;
                    }
                }
                () = self.broken.notified() => return BrokerError::Down,
            }
        }
    }

    async fn listen(&self, sink: &mut PubSubSink, pattern: &Pattern, on: bool) -> Result<(), BrokerError> {
        let channel = self.channel(pattern);
        let exact = pattern.as_exact().is_some();
        let work = async {
            match (exact, on) {
                (true, true) => sink.subscribe(&channel).await,
                (true, false) => sink.unsubscribe(&channel).await,
                (false, true) => sink.psubscribe(&channel).await,
                (false, false) => sink.punsubscribe(&channel).await,
            }
        };
        self.round_trip(work).await
    }

    /// Hands one channel message to the hub, resolving gaps and topics new to this node.
    async fn dispatch(&self, topic: &Topic, remote: &Remote) -> Result<(), BrokerError> {
        match self.hub.apply(topic, remote) {
            Applied::Delivered | Applied::Duplicate => Ok(()),
            Applied::Gap => match self.hub.position(topic) {
                Some(known) => self.catch_up(&[(topic.clone(), known)]).await,
                None => Ok(()),
            },
            Applied::Unknown if self.wanted(topic) => {
                // A topic new to this node that a pattern subscription covers: it starts right
                // before this message, so its subscribers receive it and everything after.
                let previous = remote.seq - 1;
                let mut before = if previous == 0 {
                    None
                } else {
                    self.load(&[(topic.clone(), 0)]).await?.pop().flatten()
                };
                let baseline = match before.as_mut() {
                    Some(stored) if stored.epoch == remote.epoch => {
                        stored.entries.retain(|p| p.seq <= previous);
                        Stored {
                            epoch: remote.epoch.clone(),
                            seq: previous,
                            last: (stored.entries.last()).map(|p| (p.ts, p.data.clone())),
                            entries: std::mem::take(&mut stored.entries),
                        }
                    }
                    _ => Stored {
                        epoch: remote.epoch.clone(),
                        seq: previous,
                        last: None,
                        entries: Vec::new(),
                    },
                };
                self.hub.mirror(topic, &baseline);
                match (self.hub.apply(topic, remote), self.hub.position(topic)) {
                    (Applied::Gap, Some(known)) => self.catch_up(&[(topic.clone(), known)]).await,
                    _ => Ok(()),
                }
            }
            Applied::Unknown => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_payloads_parse() {
        let r = parse_remote(br#"Ab3xYz 42 1700000000000 {"p":1.5, "s":"a b"}"#).unwrap();
        assert_eq!((&*r.epoch, r.seq, r.ts), ("Ab3xYz", 42, 1_700_000_000_000));
        assert_eq!(r.data.get(), r#"{"p":1.5, "s":"a b"}"#);
        assert!(parse_remote(b"e 1 2").is_none());
        assert!(parse_remote(b"e x 2 1").is_none());
        assert!(parse_remote(b"e 1 2 {bad").is_none());
    }

    #[test]
    fn globs_cover_their_patterns() {
        assert_eq!(glob(&Pattern::parse("prices.*").unwrap()), "prices.*");
        assert_eq!(glob(&Pattern::parse("chat.>").unwrap()), "chat.*");
        assert_eq!(glob(&Pattern::parse("a.*.c").unwrap()), "a.*.c");
    }
}
