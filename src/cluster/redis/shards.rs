//! What differs when the broker's Redis is a Redis Cluster (`broker.kind = "redis-cluster"`):
//! the connection (one server, or a cluster connection that routes each command to the shard
//! owning its slot and follows MOVED/ASK), the channel names, the split of a publish batch into
//! per-slot groups, and the sharded subscriptions the link holds.
//!
//! Every key and the channel of topic `T` carry the hash tag `{T}` (`P:{T}:m`, `P:{T}:h`,
//! `P:c:{T}`), so one shard owns all of a topic and the publish script stays atomic per topic;
//! publications travel by sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis ≥ 7.0), so a shard
//! only carries its own topics' traffic. Sharded pub/sub has no pattern subscription: a node
//! that wants a pattern `SSUBSCRIBE`s each matching topic from the topic set and learns of new
//! topics from one broadcast channel `P:new`, on which the publish path announces each topic
//! it created.

use std::collections::{HashMap, HashSet};

use futures_util::stream::{self, TryStreamExt};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisFuture, RedisResult, Value};

use crate::settings::BrokerSettings;
use crate::topic::Topic;

/// Subscription commands in flight at once while (re)subscribing many sharded channels.
const SUBSCRIBE_CONCURRENCY: usize = 64;

/// A connection to the broker's Redis: one server, or a whole cluster. Clones share the
/// underlying connection.
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Starts (`on`) or stops receiving one topic's channel, or a channel pattern (single
    /// server only: a cluster has no sharded pattern subscription).
    pub(super) async fn listen(&mut self, channel: &str, exact: bool, on: bool) -> RedisResult<()> {
        match (self, exact, on) {
            (Conn::Single(c), true, true) => c.subscribe(channel).await,
            (Conn::Single(c), true, false) => c.unsubscribe(channel).await,
            (Conn::Single(c), false, true) => c.psubscribe(channel).await,
            (Conn::Single(c), false, false) => c.punsubscribe(channel).await,
            (Conn::Cluster(c), _, true) => c.ssubscribe(channel).await,
            (Conn::Cluster(c), _, false) => c.sunsubscribe(channel).await,
        }
    }

    /// Subscribes a regular (broadcast) channel.
    pub(super) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.subscribe(channel).await,
        }
    }
}

/// The channel names of one prefix `P`: `P:c:T` on one server, `P:c:{T}` on a cluster (the
/// hash tag puts the channel in its topic's slot, which `SPUBLISH` inside the script needs).
#[derive(Clone)]
pub(super) struct Channels {
    prefix: String,
    sharded: bool,
}

impl Channels {
    pub(super) fn new(prefix: &str, sharded: bool) -> Channels {
        Channels {
            prefix: format!("{prefix}:c:{}", if sharded { "{" } else { "" }),
            sharded,
        }
    }

    /// What the script puts before the topic's name, and after it.
    pub(super) fn affixes(&self) -> (&str, &str) {
        (&self.prefix, if self.sharded { "}" } else { "" })
    }

    /// The channel (or, on one server, the channel pattern) of a topic name or glob.
    pub(super) fn of(&self, name: &str) -> String {
        let (before, after) = self.affixes();
        format!("{before}{name}{after}")
    }

    /// The topic a channel message came on, if it is one of ours.
    pub(super) fn topic(&self, channel: &str) -> Option<Topic> {
        let (before, after) = self.affixes();
        let name = channel.strip_prefix(before)?.strip_suffix(after)?;
        Topic::parse(name).ok()
    }
}

/// The indices of `topics` grouped by hash slot, groups in order of first appearance and each
/// in batch order: one script call per group keeps a batch's order within every topic.
pub(super) fn slot_groups<'a>(topics: impl Iterator<Item = &'a Topic>) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut at: HashMap<Slot, usize> = HashMap::new();
    for (i, topic) in topics.enumerate() {
        let slot = Slot::for_key(topic.as_str());
        let g = *at.entry(slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

/// The seed nodes of a Redis Cluster and how to reach them (TLS and password from their URLs,
/// `broker.redis_ca_file`, `broker.timeout`).
pub(super) struct Seeds {
    nodes: Vec<redis::ConnectionInfo>,
    certs: Option<Vec<u8>>,
}

impl Seeds {
    /// `certs`: the PEM of `broker.redis_ca_file`, read by the caller.
    pub(super) fn new(settings: &BrokerSettings, certs: Option<Vec<u8>>) -> RedisResult<Seeds> {
        let nodes = (settings.redis_cluster_urls.iter())
            .map(|u| u.expose().into_connection_info())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Seeds { nodes, certs })
    }

    fn builder(&self, settings: &BrokerSettings) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(settings.timeout)
            .response_timeout(settings.timeout);
        if let Some(root_cert) = &self.certs {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert.clone()),
            });
        }
        builder
    }

    /// The command connection (RESP2) and the pub/sub connection (RESP3, its pushes handed to
    /// `push`), both to the whole cluster.
    pub(super) async fn connect(
        &self,
        settings: &BrokerSettings,
        push: impl redis::aio::AsyncPushSender,
    ) -> RedisResult<(Conn, Conn)> {
        let commands = self.builder(settings).build()?.get_async_connection().await?;
        let pubsub = (self.builder(settings))
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(push)
            .build()?
            .get_async_connection()
            .await?;
        Ok((Conn::Cluster(commands), Conn::Cluster(pubsub)))
    }
}

/// The sharded channels the link holds on a cluster (by topic); the link alone owns it.
#[derive(Default)]
pub(super) struct Sharded {
    topics: HashSet<Topic>,
}

impl Sharded {
    pub(super) fn has(&self, topic: &Topic) -> bool {
        self.topics.contains(topic)
    }

    /// `SSUBSCRIBE`s the channels of `topics` not held yet, a bounded number at a time; returns
    /// the topics newly held.
    pub(super) async fn add(
        &mut self,
        pubsub: &Conn,
        channels: &Channels,
        topics: impl IntoIterator<Item = Topic>,
    ) -> RedisResult<Vec<Topic>> {
        let fresh: Vec<Topic> = (topics.into_iter())
            .filter(|t| !self.topics.contains(t))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        each(pubsub, channels, &fresh, true).await?;
        self.topics.extend(fresh.iter().cloned());
        Ok(fresh)
    }

    /// Stops counting as held the topics `which` picks (Redis already unsubscribed them);
    /// returns them.
    pub(super) fn forget(&mut self, which: impl Fn(&Topic) -> bool) -> Vec<Topic> {
        let gone: Vec<Topic> = self.topics.iter().filter(|t| which(t)).cloned().collect();
        for topic in &gone {
            self.topics.remove(topic);
        }
        gone
    }

    /// The held topics `wanted` says no local client wants any more.
    pub(super) fn unwanted(&self, wanted: impl Fn(&Topic) -> bool) -> Vec<Topic> {
        self.topics.iter().filter(|t| !wanted(t)).cloned().collect()
    }

    /// `SUNSUBSCRIBE`s the channels of `topics`, a bounded number at a time.
    pub(super) async fn remove(
        &mut self,
        pubsub: &Conn,
        channels: &Channels,
        topics: Vec<Topic>,
    ) -> RedisResult<()> {
        each(pubsub, channels, &topics, false).await?;
        for topic in &topics {
            self.topics.remove(topic);
        }
        Ok(())
    }
}

/// `SSUBSCRIBE`s (`on`) or `SUNSUBSCRIBE`s the channel of each topic, a bounded number at a
/// time: a cluster takes one slot per command, so one topic per command.
async fn each(pubsub: &Conn, channels: &Channels, topics: &[Topic], on: bool) -> RedisResult<()> {
    stream::iter(topics.iter().map(Ok))
        .try_for_each_concurrent(SUBSCRIBE_CONCURRENCY, |topic| {
            let mut pubsub = pubsub.clone();
            let channel = channels.of(topic.as_str());
            async move { pubsub.listen(&channel, true, on).await }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_channels_carry_the_topic_hash_tag() {
        let sharded = Channels::new("tw", true);
        assert_eq!(sharded.of("a.b"), "tw:c:{a.b}");
        assert_eq!(sharded.topic("tw:c:{a.b}"), Topic::parse("a.b").ok());
        assert_eq!(sharded.topic("tw:c:a.b"), None);
        assert_eq!(
            Slot::for_key("tw:c:{a.b}"),
            Slot::for_key("tw:{a.b}:m"),
            "channel and keys share a slot"
        );
        let single = Channels::new("tw", false);
        assert_eq!(single.of("a.*"), "tw:c:a.*");
        assert_eq!(single.topic("tw:c:a.b"), Topic::parse("a.b").ok());
    }

    #[test]
    fn batches_split_by_slot_in_order() {
        let topics: Vec<Topic> = ["a", "b", "a", "c", "b"]
            .iter()
            .map(|t| Topic::parse(t).unwrap())
            .collect();
        let groups = slot_groups(topics.iter());
        let flat: Vec<usize> = groups.iter().flatten().copied().collect();
        assert_eq!(flat.len(), 5);
        for group in &groups {
            assert!(
                group.windows(2).all(|w| w[0] < w[1]),
                "batch order within a group"
            );
            let slot = Slot::for_key(topics[group[0]].as_str());
            assert!(group.iter().all(|&i| Slot::for_key(topics[i].as_str()) == slot));
        }
        assert_eq!(groups[0][..2], [0, 2], "both `a` in one group");
    }
}
