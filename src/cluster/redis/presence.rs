//! Presence and occupancy across a cluster, in Redis: every node's subscriber count per topic,
//! every node's room members, the occupied topics, and the one node that emits each event.
//!
//! Each node writes its own share (counts and members, from the hub's changes, coalesced and
//! batched: one script call per batch, never while a lock is held) and heartbeats; everything
//! else is derived in Redis by one Lua script (`presence.lua`), atomically, so that whatever a
//! call observes (a topic's first subscriber in the cluster, a vacate delay that ran out, a dead
//! node's members) is seen by that call alone: its node emits the event, and no other does.
//! Joins and leaves also go out on the channel `P:presence`, from which every other node queues
//! the `join`/`leave` frames for its own watchers.
//!
//! A node heartbeats every third of `presence.ttl` and is live for two thirds of it after each
//! beat (one late beat is tolerated); a node that stops is reaped by the next live node's
//! heartbeat, so within `presence.ttl` of its last beat: its counts go, and its members leave
//! (the reaping node emits the `leave`s). A node that
//! finds itself missing from Redis (a restart of Redis, a pause longer than the TTL), or that
//! lost changes or a write, writes its whole share again (`resync`), which adds and removes
//! exactly what differs. Keys are described in `presence.lua`; being computed inside the
//! script, they need a single Redis (as the broker does), not Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};
use serde_json::value::RawValue;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::protocol::error::RequestError;
use crate::pubsub::hub::Hub;
use crate::pubsub::presence::{event_frame, Change, Member};
use crate::settings::{BrokerSettings, Settings};
use crate::sync::{read, write};
use crate::topic::Topic;
use crate::webhooks::EventKind;

use super::inbox::{self, Burst, Inbound, Inbox};
use super::sentinel::Target;
use super::{unavailable, BrokerError};

const PRESENCE_LUA: &str = include_str!("presence.lua");

/// How a node's events leave it (to the webhooks): kind, topic, member.
pub type Emit = Arc<dyn Fn(EventKind, Topic, Option<Box<RawValue>>) + Send + Sync>;

/// Changes written per script call, at most: a storm of subscribes becomes several calls of
/// bounded size rather than one huge one.
const BATCH: usize = 2048;

/// How often the listener checks its channel connection is alive.
const PING_EVERY: Duration = Duration::from_secs(5);

pub struct ClusterPresence {
    /// The broker's Redis, resolved again on every (re)connect (so a Sentinel failover is
    /// followed here as by the link).
    target: Target,
    broker: BrokerSettings,
    prefix: String,
    node: Arc<str>,
    timeout: Duration,
    ttl: Duration,
    vacate_delay: Duration,
    script: Script,
    /// The command connection, made at first use and again after a failure (two tasks may
    /// make one at once; the last one stays, harmlessly). No lock is held while connecting.
    conn: std::sync::RwLock<Option<MultiplexedConnection>>,
    metrics: Arc<Metrics>,
}

/// A room as Redis holds it.
pub struct StoredRoom {
    pub members: Vec<Arc<Member>>,
    pub count: usize,
}

impl ClusterPresence {
    pub fn new(
        settings: &Settings,
        node: Arc<str>,
        metrics: Arc<Metrics>,
    ) -> Result<ClusterPresence, BrokerError> {
        Ok(ClusterPresence {
            target: Target::new(&settings.broker)?,
            broker: settings.broker.clone(),
            prefix: settings.broker.prefix.clone(),
            node,
            timeout: settings.broker.timeout,
            ttl: settings.presence.ttl,
            vacate_delay: settings.occupancy.vacate_delay,
            script: Script::new(PRESENCE_LUA),
            conn: std::sync::RwLock::new(None),
            metrics,
        })
    }

    fn key(&self, topic: &Topic, kind: &str) -> String {
        format!("{}:{{{}}}:{kind}", self.prefix, topic.as_str())
    }

    async fn connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        if let Some(c) = &*read(&self.conn) {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let clients = self.target.resolve(&self.broker).await?;
        let made = clients
            .commands
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *write(&self.conn) = Some(made.clone());
        Ok(made)
    }

    /// One round trip within `broker.timeout`; a failure drops the connection for the next.
    async fn round_trip<T: redis::FromRedisValue>(&self, cmd: RoundTrip<'_>) -> Result<T, BrokerError> {
        let mut conn = self.connection().await?;
        let work = async {
            match cmd {
                RoundTrip::Cmd(cmd) => cmd.query_async(&mut conn).await,
                RoundTrip::Pipe(pipe) => pipe.query_async(&mut conn).await,
                RoundTrip::Script(op, args) => {
                    let mut call = self.script.prepare_invoke();
                    for kind in ["occupied", "reported", "vacating", "nodes"] {
                        call.key(format!("{}:presence:{kind}", self.prefix));
                    }
                    call.key(format!("{}:node:{}:t", self.prefix, self.node));
                    call.key(format!("{}:node:{}:m", self.prefix, self.node));
                    call.arg(op)
                        .arg(&self.prefix)
                        .arg(&*self.node)
                        .arg(self.vacate_delay.as_millis() as u64)
                        .arg((self.ttl * 2 / 3).as_millis() as u64);
                    for arg in args {
                        call.arg(arg);
                    }
                    call.invoke_async(&mut conn).await
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r.map_err(BrokerError::from),
            Err(_) => Err(BrokerError::Timeout(self.timeout)),
        };
        if result.is_err() {
            *write(&self.conn) = None;
        }
        result
    }

    /// Who is in `topic`'s room, cluster-wide: up to `limit` members (any of them), and the
    /// exact count.
    pub async fn room(&self, topic: &Topic, limit: usize) -> Result<StoredRoom, RequestError> {
        let key = self.key(topic, "p");
        let mut pipe = redis::pipe();
        pipe.cmd("HLEN").arg(&key);
        pipe.cmd("HRANDFIELD").arg(&key).arg(limit).arg("WITHVALUES");
        let (count, flat): (usize, Vec<String>) = self
            .round_trip(RoundTrip::Pipe(&pipe))
            .await
            .map_err(unavailable)?;
        let members = (flat.chunks_exact(2))
            .filter_map(|pair| {
                let json = RawValue::from_string(pair[1].clone()).ok()?;
                Some(Arc::new(Member::stored(&pair[0], json)))
            })
            .collect();
        Ok(StoredRoom { members, count })
    }

    /// `topic`'s subscribers on every node, and of those the ones through patterns only.
    pub async fn subscribers(&self, topic: &Topic) -> Result<(usize, usize), RequestError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HVALS").arg(self.key(topic, "n"));
        pipe.cmd("HVALS").arg(self.key(topic, "q"));
        let (total, patterns): (Vec<usize>, Vec<usize>) = self
            .round_trip(RoundTrip::Pipe(&pipe))
            .await
            .map_err(unavailable)?;
        Ok((total.iter().sum(), patterns.iter().sum()))
    }

    /// Up to `limit` occupied topics after `after`, in name order, and whether more follow.
    pub async fn occupied(
        &self,
        after: Option<&Topic>,
        limit: usize,
    ) -> Result<(Vec<Topic>, bool), RequestError> {
        let from = after.map_or("-".to_string(), |t| format!("({}", t.as_str()));
        let mut cmd = redis::cmd("ZRANGEBYLEX");
        cmd.arg(format!("{}:presence:occupied", self.prefix))
            .arg(from)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1);
        let names: Vec<String> = self.round_trip(RoundTrip::Cmd(&cmd)).await.map_err(unavailable)?;
        let mut topics: Vec<Topic> = names.iter().filter_map(|n| Topic::parse(n).ok()).collect();
        let more = topics.len() > limit;
        topics.truncate(limit);
        Ok((topics, more))
    }

    /// Keeps this node's share in Redis and emits the events it observes, for as long as the
    /// node lives.
    pub async fn run(self: Arc<Self>, hub: Arc<Hub>, emit: Emit) {
        let presence = hub.presence();
        presence.track(true);
        tokio::spawn(self.clone().listen(hub.clone()));
        let mut resync = true;
        let mut beat = tokio::time::interval(self.ttl / 3);
        let poll = (self.vacate_delay / 4).clamp(Duration::from_millis(50), Duration::from_millis(250));
        let mut vacates = tokio::time::interval(poll);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        vacates.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                (topics, changes) = presence.take() => {
                    resync |= presence.lost_changes();
                    // A resync is due: it writes the whole share, these changes included.
                    if !resync {
                        if let Err(e) = self.write(&hub, topics, changes, &emit).await {
                            warn!(error = %e, "presence: cannot write to Redis; resyncing");
                            resync = true;
                        }
                    }
                }
                _ = beat.tick() => match self.heartbeat(&emit).await {
                    Ok(missing) => {
                        resync |= missing;
                        if resync {
                            match self.resync(&hub, &emit).await {
                                Ok(()) => resync = false,
                                Err(e) => warn!(error = %e, "presence: resync failed"),
                            }
                        }
                    }
                    Err(e) => debug!(error = %e, "presence: heartbeat failed"),
                },
                _ = vacates.tick() => {
                    if let Err(e) = self.vacate(&emit).await {
                        debug!(error = %e, "presence: vacate check failed");
                    }
                }
            }
        }
    }

    /// Writes a batch of the hub's changes: counts, then members.
    async fn write(
        &self,
        hub: &Hub,
        topics: Vec<Topic>,
        changes: Vec<Change>,
        emit: &Emit,
    ) -> Result<(), BrokerError> {
        for chunk in topics.chunks(BATCH) {
            let mut args = Vec::with_capacity(chunk.len() * 3);
            for topic in chunk {
                let (total, patterns) = hub.subscriber_counts(topic).unwrap_or((0, 0));
                args.extend([
                    topic.as_str().to_string(),
                    total.to_string(),
                    patterns.to_string(),
                ]);
            }
            let occupied: Vec<String> = self.round_trip(RoundTrip::Script("counts", args)).await?;
            for topic in occupied.iter().filter_map(|t| Topic::parse(t).ok()) {
                emit(EventKind::Occupied, topic, None);
            }
        }
        for chunk in changes.chunks(BATCH) {
            let mut args = Vec::with_capacity(chunk.len() * 4);
            for change in chunk {
                let (kind, topic, member) = match change {
                    Change::Join(t, m) => ("j", t, m),
                    Change::Leave(t, m) => ("l", t, m),
                };
                args.extend([
                    kind.to_string(),
                    topic.as_str().to_string(),
                    member.shown.to_string(),
                    member.json().get().to_string(),
                ]);
            }
            let changed: Vec<usize> = self.round_trip(RoundTrip::Script("members", args)).await?;
            for i in changed {
                let Some(change) = i.checked_sub(1).and_then(|i| chunk.get(i)) else {
                    continue;
                };
                let (kind, topic, member) = match change {
                    Change::Join(t, m) => (EventKind::Join, t, m),
                    Change::Leave(t, m) => (EventKind::Leave, t, m),
                };
                emit(kind, topic.clone(), Some(member.json().to_owned()));
            }
        }
        Ok(())
    }

    /// Refreshes this node's expiry and reaps dead nodes (emitting their members' `leave`s);
    /// returns whether this node was missing (it must resync).
    async fn heartbeat(&self, emit: &Emit) -> Result<bool, BrokerError> {
        let reply: Vec<String> = self
            .round_trip(RoundTrip::Script("heartbeat", Vec::new()))
            .await?;
        let missing = reply.first().is_some_and(|f| f == "1");
        for pair in reply.get(1..).unwrap_or_default().chunks_exact(2) {
            let (Ok(topic), Ok(json)) = (Topic::parse(&pair[0]), RawValue::from_string(pair[1].clone()))
            else {
                continue;
            };
            emit(EventKind::Leave, topic, Some(json));
        }
        Ok(missing)
    }

    /// Claims the vacates that ran out and emits the `vacated`s; refreshes the occupied gauge.
    async fn vacate(&self, emit: &Emit) -> Result<(), BrokerError> {
        let vacated: Vec<String> = self.round_trip(RoundTrip::Script("vacate", Vec::new())).await?;
        for topic in vacated.iter().filter_map(|t| Topic::parse(t).ok()) {
            emit(EventKind::Vacated, topic, None);
        }
        let mut cmd = redis::cmd("SCARD");
        cmd.arg(format!("{}:presence:reported", self.prefix));
        let reported: i64 = self.round_trip(RoundTrip::Cmd(&cmd)).await?;
        self.metrics.occupied_topics.set(reported);
        Ok(())
    }

    /// Writes this node's whole share, removing from Redis whatever it no longer has, and
    /// emits what that changed.
    async fn resync(&self, hub: &Hub, emit: &Emit) -> Result<(), BrokerError> {
        let presence = hub.presence();
        let topics = presence.all_occupied();
        let members = presence.all_members();
        let mut args = Vec::with_capacity(1 + topics.len() * 3 + members.len() * 3);
        let counts: Vec<(Topic, (usize, usize))> = (topics.into_iter())
            .filter_map(|t| Some((t.clone(), hub.subscriber_counts(&t)?)))
            .filter(|(_, (total, _))| *total > 0)
            .collect();
        args.push(counts.len().to_string());
        for (topic, (total, patterns)) in &counts {
            args.extend([
                topic.as_str().to_string(),
                total.to_string(),
                patterns.to_string(),
            ]);
        }
        for (topic, member) in &members {
            args.extend([
                topic.as_str().to_string(),
                member.shown.to_string(),
                member.json().get().to_string(),
            ]);
        }
        let reply: Vec<String> = self.round_trip(RoundTrip::Script("resync", args)).await?;
        let occupied: usize = reply.first().and_then(|n| n.parse().ok()).unwrap_or(0);
        let topics = reply.get(1..1 + occupied).unwrap_or_default();
        for topic in topics.iter().filter_map(|t| Topic::parse(t).ok()) {
            emit(EventKind::Occupied, topic, None);
        }
        for change in reply.get(1 + occupied..).unwrap_or_default().chunks_exact(3) {
            let kind = if change[0] == "j" {
                EventKind::Join
            } else {
                EventKind::Leave
            };
            let (Ok(topic), Ok(json)) = (Topic::parse(&change[1]), RawValue::from_string(change[2].clone()))
            else {
                continue;
            };
            emit(kind, topic, Some(json));
        }
        Ok(())
    }

    /// Queues the joins and leaves of other nodes' members for this node's watchers, from the
    /// `P:presence` channel, reconnecting after a failure. Messages come through a bounded
    /// inbox (`broker.receive_queue`, RESP3 pushes, as the link's do): a node that cannot keep
    /// up drops notifications, counted in `tickwire_broker_receive_dropped_total` and logged
    /// once per burst, rather than buffering them without bound.
    async fn listen(self: Arc<Self>, hub: Arc<Hub>) {
        let channel = format!("{}:presence", self.prefix);
        let burst = Arc::new(Burst::default());
        let mut delay = Duration::from_millis(50);
        loop {
            let result: Result<(), BrokerError> = async {
                let clients = self.target.resolve(&self.broker).await?;
                let (inbox, mut inbound) =
                    Inbox::counting(self.broker.receive_queue, burst.clone(), self.metrics.clone());
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_push_sender(move |info| {
                        inbox.push(info);
                        Ok::<(), ()>(())
                    });
                let mut pubsub = (clients.pubsub)
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                pubsub.subscribe(&channel).await?;
                delay = Duration::from_millis(50);
                let mut ping = tokio::time::interval(PING_EVERY);
                loop {
                    tokio::select! {
                        msg = async { inbox::unpaused().await; inbound.recv().await } => {
                            let Some(Inbound::Message(msg)) = msg else {
                                return Err(BrokerError::Down);
                            };
                            if let Ok(text) = msg.get_payload::<String>() {
                                self.remote(&hub, &text);
                            }
                            // Caught up: whatever was dropped ends here.
                            if inbound.is_empty() {
                                let dropped = burst.take();
                                if dropped > 0 {
                                    info!(dropped, "presence: caught up; other nodes' joins and leaves were dropped meanwhile");
                                }
                            }
                        }
                        // Bounded by the connection's response timeout (`broker.timeout`).
                        _ = ping.tick() => {
                            redis::cmd("PING").query_async::<redis::Value>(&mut pubsub).await?;
                        }
                    }
                }
            }
            .await;
            if let Err(e) = result {
                debug!(error = %e, "presence: channel lost; reconnecting");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// One message of the channel: `j|l\nnode\ntopic\nmember`.
    fn remote(&self, hub: &Hub, text: &str) {
        let mut parts = text.splitn(4, '\n');
        let (Some(kind), Some(node), Some(topic), Some(json)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        // This node's own members were framed locally, under the topic's lock.
        if node == &*self.node {
            return;
        }
        let kind = if kind == "j" { "join" } else { "leave" };
        let (Ok(topic), Ok(member)) = (Topic::parse(topic), serde_json::from_str::<&RawValue>(json)) else {
            return;
        };
        hub.presence_event(&topic, &event_frame(kind, &topic, member));
    }
}

/// What [`ClusterPresence::round_trip`] sends.
enum RoundTrip<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    Script(&'static str, Vec<String>),
}
