//! The link: the one task that owns the Redis pub/sub connection. It applies subscription
//! changes in the order they were made, hands channel messages to the hub (resolving gaps and
//! topics new to this node; resynchronising topics whose messages the bounded inbox dropped),
//! pings, and on any failure reconnects with backoff, re-subscribes
//! everything still wanted and catches every mirrored topic up.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use redis::aio::AsyncPushSender;
use redis::AsyncConnectionConfig;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::protocol::{new_epoch, Position};
use crate::pubsub::hub::{Applied, Remote, Stored};
use crate::settings::BrokerSubscribe;
use crate::sync::{lock, write};
use crate::topic::{Pattern, Topic};

use super::inbox::{self, Inbound, Inbox};
use super::interest::{glob, Command};
use super::shards::{Conn, Sharded};
use super::{BrokerError, RedisBroker, LOAD_CHUNK};

/// A connected link: what `serve` runs on.
struct Live {
    pubsub: Conn,
    inbound: mpsc::Receiver<Inbound>,
    /// The sharded channels held (cluster only).
    sharded: Sharded,
}

/// Channels per SUBSCRIBE when re-subscribing after a reconnect.
const SUBSCRIBE_CHUNK: usize = 1000;
/// A link that lasted this long was healthy: losing it is retried at once.
const STABLE_LINK: Duration = Duration::from_secs(1);
/// How often the link checks the pub/sub connection is alive.
const PING_EVERY: Duration = Duration::from_secs(5);

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

impl RedisBroker {
    /// The link: connects, serves until the connection fails, and starts over with backoff.
    pub(super) async fn link(self: Arc<Self>, mut queue: mpsc::Receiver<Command>) {
        let (min, max) = (self.settings.reconnect_min, self.settings.reconnect_max);
        let mut delay = min;
        let mut connected_before = false;
        loop {
            let failure = match self.connect().await {
                Ok(live) => {
                    if connected_before {
                        self.metrics.broker_reconnects.inc();
                    }
                    connected_before = true;
                    let since = std::time::Instant::now();
                    let reason = self.serve(live, &mut queue).await;
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
        *write(&self.conn) = None;
    }

    /// Opens both connections and subscribes to everything local clients want; returns the
    /// pub/sub connection, the queue its messages arrive on and (cluster) the sharded channels.
    async fn connect(&self) -> Result<Live, BrokerError> {
        let (inbox, inbound) = Inbox::new(
            self.settings.receive_queue,
            self.drops.clone(),
            self.channels.clone(),
            self.metrics.clone(),
        );
        let push = move |info| {
            inbox.push(info);
            Ok::<(), ()>(())
        };
        let mut sharded = Sharded::default();
        let pubsub = match &self.seeds {
            Some(seeds) => {
                let (conn, mut pubsub) = seeds.connect(&self.settings, push).await?;
                // The topic scans below read the set through it.
                *write(&self.conn) = Some(conn);
                let announcements = self.new_topics_channel();
                self.round_trip(pubsub.subscribe(&announcements)).await?;
                self.subscribe_sharded(&pubsub, &mut sharded).await?;
                pubsub
            }
            None => {
                let (conn, pubsub) = self.connect_single(push).await?;
                *write(&self.conn) = Some(conn);
                pubsub
            }
        };
        // Anything wanted meanwhile had its Subscribe queued and is subscribed again, harmlessly.
        lock(&self.interest).set_live();
        // Whatever the inbox dropped before is covered by the catch-up below, and every channel
        // is subscribed again.
        self.drops.take();
        self.drops.take_unsubscribed();
        // Subscribed first, then caught up: whatever was published meanwhile arrives either
        // in the stream read below or as a channel message after it (then a duplicate).
        let positions = self.hub.positions();
        for chunk in positions.chunks(LOAD_CHUNK) {
            self.catch_up(chunk).await?;
        }
        self.up.store(true, Ordering::Release);
        self.metrics.broker_up.set(1);
        info!(topics = positions.len(), "connected to Redis");
        Ok(Live {
            pubsub,
            inbound,
            sharded,
        })
    }

    /// One server's connections (the primary's, with Sentinel), subscribed to every channel
    /// and channel pattern local clients want.
    async fn connect_single(&self, push: impl AsyncPushSender) -> Result<(Conn, Conn), BrokerError> {
        let timeout = self.settings.timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let clients = self.target.resolve(&self.settings).await?;
        let mut conn = (clients.commands)
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if self.target.is_sentinel() {
            // A sentinel may still name a primary that was just demoted or not yet promoted.
            let role: Vec<redis::Value> = self.round_trip(redis::cmd("ROLE").query_async(&mut conn)).await?;
            let role = match role.first() {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            };
            if role != "master" {
                return Err(BrokerError::NotPrimary(role));
            }
        }
        let config = config.set_push_sender(push);
        let mut pubsub = (clients.pubsub)
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if self.settings.subscribe == BrokerSubscribe::All {
            pubsub.psubscribe(self.channels.of("*")).await?;
        } else {
            let wanted = lock(&self.interest).all();
            let (exact, patterns): (Vec<_>, Vec<_>) = wanted.iter().partition(|p| p.as_exact().is_some());
            for chunk in exact.chunks(SUBSCRIBE_CHUNK) {
                let channels: Vec<String> = chunk.iter().map(|p| self.channel(p)).collect();
                pubsub.subscribe(channels).await?;
            }
            for chunk in patterns.chunks(SUBSCRIBE_CHUNK) {
                let globs: Vec<String> = chunk.iter().map(|p| self.channel(p)).collect();
                pubsub.psubscribe(globs).await?;
            }
        }
        Ok((Conn::Single(conn), Conn::Single(pubsub)))
    }

    /// The channel (or channel pattern) of a subscription.
    fn channel(&self, pattern: &Pattern) -> String {
        match pattern.as_exact() {
            Some(topic) => self.channels.of(topic.as_str()),
            None => self.channels.of(&glob(pattern)),
        }
    }

    /// Brings mirrored topics up to Redis: what they missed, or a reset when the stream they
    /// follow is gone (new epoch) or no longer reaches back far enough. A stream that went
    /// *back* (Redis lost publications this node delivered, e.g. a failover to a replica that
    /// had not received them) gets a new epoch in Redis first, so that everybody resets.
    async fn catch_up(&self, positions: &[(Topic, Position)]) -> Result<(), BrokerError> {
        // From the delivered position itself, to compare it with what Redis holds there.
        let after: Vec<(Topic, u64)> = (positions.iter())
            .map(|(t, p)| (t.clone(), p.seq.saturating_sub(1)))
            .collect();
        let stored = self.load(&after).await?;
        let mut restarted = Vec::new();
        for ((topic, position), stored) in positions.iter().zip(stored) {
            // Unknown to Redis: it lost the topic, and the next publication starts a new
            // epoch, which resets the mirror when it arrives.
            let Some(stored) = stored else { continue };
            if stored.epoch == position.epoch && position.seq > 0 && self.diverged(topic, position, &stored) {
                warn!(
                    topic = topic.as_str(),
                    seq = position.seq,
                    stored = stored.seq,
                    "Redis lost publications this node delivered; starting a new epoch"
                );
                let mut call = self.rebase.prepare_invoke();
                call.key(self.meta_key(topic))
                    .arg(&*position.epoch)
                    .arg(&*new_epoch());
                let mut conn = self.connection()?;
                self.round_trip(call.invoke_async::<i64>(&mut conn)).await?;
                restarted.push((topic.clone(), 0));
            } else if stored.epoch == position.epoch || position.seq == 0 {
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

    /// Whether Redis's `stored` stream (same epoch, loaded from `position`) no longer holds
    /// what this node delivered at `position`: fewer publications, or another one at its seq.
    fn diverged(&self, topic: &Topic, position: &Position, stored: &Stored) -> bool {
        if stored.seq < position.seq {
            return true;
        }
        let Some(delivered) = self.hub.last(topic).filter(|p| p.seq == position.seq) else {
            return false;
        };
        let differs = |ts: u64, data: &str| ts != delivered.ts || data != delivered.data.get();
        if stored.seq == position.seq {
            return stored
                .last
                .as_ref()
                .is_some_and(|(ts, data)| differs(*ts, data.get()));
        }
        (stored.entries.iter())
            .find(|e| e.seq == position.seq)
            .is_some_and(|e| differs(e.ts, e.data.get()))
    }

    /// Serves a connected link until it fails; returns why.
    async fn serve(&self, live: Live, queue: &mut mpsc::Receiver<Command>) -> BrokerError {
        let Live {
            mut pubsub,
            mut inbound,
            mut sharded,
        } = live;
        let mut ping = tokio::time::interval(PING_EVERY);
        let announcements = self.new_topics_channel();
        loop {
            tokio::select! {
                // Not biased: under a flood messages are always ready, and subscription changes
                // and pings must still get their turn. Any order is correct: messages apply by
                // seq, so one that a resync already covered is a duplicate.
                msg = async { inbox::unpaused().await; inbound.recv().await } => {
                    let msg = match msg {
                        Some(Inbound::Message(msg)) => msg,
                        Some(Inbound::Closed) | None => return BrokerError::Down,
                    };
                    if msg.get_channel_name() == announcements {
                        let topic = std::str::from_utf8(msg.get_payload_bytes()).ok().and_then(|t| Topic::parse(t).ok());
                        if let Some(topic) = topic {
                            if let Err(e) = self.new_topic(&pubsub, &mut sharded, topic).await {
                                return e;
                            }
                        }
                        continue;
                    }
                    let topic = self.channels.topic(msg.get_channel_name());
                    let (Some(topic), Some(remote)) = (topic, parse_remote(msg.get_payload_bytes())) else {
                        debug!(channel = msg.get_channel_name(), "ignoring a malformed channel message");
                        continue;
                    };
                    if let Err(e) = self.dispatch(&topic, &remote).await {
                        return e;
                    }
                }
                () = self.drops.wake.notified() => {
                    if let Err(e) = self.resync(&pubsub, &mut sharded).await {
                        return e;
                    }
                }
                command = queue.recv() => {
                    let result = match command {
                        Some(Command::Subscribe(pattern, live)) => {
                            let r = self.listen(&mut pubsub, &mut sharded, &pattern, true).await;
                            if r.is_ok() {
                                live.send_replace(true);
                            }
                            r
                        }
                        Some(Command::Unsubscribe(pattern)) => {
                            self.listen(&mut pubsub, &mut sharded, &pattern, false).await
                        }
                        None => return BrokerError::Down,
                    };
                    if let Err(e) = result {
                        return e;
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = self.round_trip(redis::cmd("PING").query_async::<redis::Value>(&mut pubsub)).await {
                        return e;
                    }
                }
                () = self.broken.notified() => return BrokerError::Down,
            }
        }
    }

    /// Brings the topics whose messages the inbox dropped back up to Redis, as a reconnect
    /// does: what they missed from the stream, or an explicit reset when it no longer reaches
    /// back. A dropped topic this node does not mirror yet but a pattern covers is loaded whole.
    async fn resync(&self, pubsub: &Conn, sharded: &mut Sharded) -> Result<(), BrokerError> {
        self.follow_slots(pubsub, sharded).await?;
        let missed = self.drops.take();
        if missed.is_empty() {
            return Ok(());
        }
        if missed.all && pubsub.is_cluster() {
            // A dropped `P:new` announcement names no topic: look for new topics again.
            self.subscribe_sharded(pubsub, sharded).await?;
        }
        if missed.all {
            let positions = self.hub.positions();
            info!(
                topics = positions.len(),
                "receive queue overflowed; resynchronising"
            );
            for chunk in positions.chunks(LOAD_CHUNK) {
                self.catch_up(chunk).await?;
            }
            return Ok(());
        }
        info!(
            topics = missed.topics.len(),
            "receive queue overflowed; resynchronising"
        );
        self.bring_up(missed.topics).await
    }

    /// Cluster: subscribes again, where their slots are now, to the sharded channels Redis
    /// unsubscribed the node from while it still held them (a slot moved to another shard:
    /// without this the node would silently stop receiving those topics), and catches them up
    /// with what was published in between. Confirmations of our own `SUNSUBSCRIBE`s name
    /// topics no longer held, and are passed over.
    async fn follow_slots(&self, pubsub: &Conn, sharded: &mut Sharded) -> Result<(), BrokerError> {
        let unsubscribed = self.drops.take_unsubscribed();
        if unsubscribed.is_empty() || !pubsub.is_cluster() {
            return Ok(());
        }
        let lost = match unsubscribed.all {
            true => sharded.forget(|_| true),
            false => sharded.forget(|t| unsubscribed.topics.contains(t)),
        };
        if lost.is_empty() {
            return Ok(());
        }
        info!(
            topics = lost.len(),
            "Redis unsubscribed sharded channels (a slot moved): subscribing again"
        );
        let held = sharded.add(pubsub, &self.channels, lost).await?;
        self.bring_up(held).await
    }

    /// Brings `topics` up to Redis: a mirrored one caught up from its position, one a local
    /// client wants but the hub does not hold loaded whole, the others left alone.
    async fn bring_up(&self, topics: impl IntoIterator<Item = Topic>) -> Result<(), BrokerError> {
        let mut positions = Vec::new();
        let mut unknown = Vec::new();
        for topic in topics {
            match self.hub.position(&topic) {
                Some(position) => positions.push((topic, position)),
                None if self.wanted(&topic) => unknown.push((topic, 0)),
                None => {}
            }
        }
        for chunk in positions.chunks(LOAD_CHUNK) {
            self.catch_up(chunk).await?;
        }
        for (topic, stored) in unknown.iter().zip(self.load(&unknown).await?) {
            if let Some(stored) = stored {
                self.hub.mirror(&topic.0, &stored);
            }
        }
        Ok(())
    }

    /// Applies one subscription change; on a cluster, to the sharded channels of the topics
    /// it covers (a pattern's, found in the topic set).
    async fn listen(
        &self,
        pubsub: &mut Conn,
        sharded: &mut Sharded,
        pattern: &Pattern,
        on: bool,
    ) -> Result<(), BrokerError> {
        if !pubsub.is_cluster() {
            let channel = self.channel(pattern);
            let exact = pattern.as_exact().is_some();
            return self.round_trip(pubsub.listen(&channel, exact, on)).await;
        }
        let all = self.settings.subscribe == BrokerSubscribe::All;
        match (pattern.as_exact(), on) {
            (Some(topic), true) => Ok(sharded.add(pubsub, &self.channels, [topic]).await.map(drop)?),
            (None, true) => {
                let topics = self.topics_matching(pattern).await?;
                Ok(sharded.add(pubsub, &self.channels, topics).await.map(drop)?)
            }
            (Some(topic), false) if all || self.wanted(&topic) => Ok(()),
            (Some(topic), false) => Ok(sharded.remove(pubsub, &self.channels, vec![topic]).await?),
            (None, false) if all => Ok(()),
            (None, false) => {
                let gone = sharded.unwanted(|t| self.wanted(t));
                Ok(sharded.remove(pubsub, &self.channels, gone).await?)
            }
        }
    }

    /// Cluster: `SSUBSCRIBE`s every topic local clients want (with `subscribe = "all"`, every
    /// topic of the set) not held yet, and loads the new ones a local client waits for.
    async fn subscribe_sharded(&self, pubsub: &Conn, sharded: &mut Sharded) -> Result<(), BrokerError> {
        let mut topics = Vec::new();
        let patterns = match self.settings.subscribe {
            BrokerSubscribe::All => vec![Pattern::parse(">").map_err(|_| BrokerError::Down)?],
            BrokerSubscribe::Interest => lock(&self.interest).all(),
        };
        for pattern in patterns {
            match pattern.as_exact() {
                Some(topic) => topics.push(topic),
                None => topics.extend(self.topics_matching(&pattern).await?),
            }
        }
        let fresh = sharded.add(pubsub, &self.channels, topics).await?;
        // Newly held and not mirrored: what was published before is read from Redis now (both
        // callers then catch every mirrored topic up).
        self.bring_up(fresh.into_iter().filter(|t| !self.hub.has(t)))
            .await
    }

    /// Cluster: a topic just created somewhere; held and loaded if a local client wants it.
    async fn new_topic(&self, pubsub: &Conn, sharded: &mut Sharded, topic: Topic) -> Result<(), BrokerError> {
        let all = self.settings.subscribe == BrokerSubscribe::All;
        if sharded.has(&topic) || !(all || self.wanted(&topic)) {
            return Ok(());
        }
        let fresh = sharded.add(pubsub, &self.channels, [topic]).await?;
        self.bring_up(fresh).await
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
}
