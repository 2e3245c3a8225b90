//! The Redis broker's commands on the shared connection: the publish script, loading topics'
//! stored state (meta hash and stream, in one atomic pipeline) and scanning the topic set.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::cluster::idempotency::IdempotencyKey;
use crate::protocol::{new_epoch, now_ms, Data};
use crate::pubsub::hub::{Remote, Stored};
use crate::topic::{Pattern, Topic};

use super::interest::glob;
use super::{shards, BrokerError, Published, RedisBroker, LOAD_CHUNK, TOO_MANY_TOPICS};

/// A stream entry as XRANGE returns it: id `seq-0`, fields `t` (ts) and `d` (data).
type RawEntry = (String, Vec<(String, String)>);
/// A topic's hash: epoch, seq, last ts, last data.
type RawMeta = (Option<String>, Option<u64>, Option<u64>, Option<String>);

impl RedisBroker {
    /// Stores and publishes `messages` in order, all or none, unless `once` (an idempotency
    /// key and its window) already published: checked and recorded in the same script. On a
    /// cluster, all or none holds per hash slot: the batch is one script call per slot (see
    /// `publish_sharded`).
    pub(super) async fn eval_publish(
        &self,
        messages: &[(Topic, Data)],
        once: Option<(&IdempotencyKey, Duration)>,
    ) -> Result<Published, BrokerError> {
        if self.seeds.is_some() {
            return self.publish_sharded(messages, once).await;
        }
        let key = once.map_or(String::new(), |(key, _)| key.key_hex());
        let idem = format!("{}:idem:{key}", self.prefix);
        let all: Vec<usize> = (0..messages.len()).collect();
        let (published, _) = (self.eval_group(messages, &all, idem, Some(self.topics_key()), once)).await?;
        Ok(published)
    }

    /// The cluster's publish: one script call per hash slot, in order of first appearance; the
    /// idempotency key of a group carries the hash tag of its first topic (`P:{T}:idem:K`), so
    /// a retried batch replays the groups already published and publishes the rest. Topics the
    /// scripts created join the topic set and are announced on `P:new` afterwards: the set is
    /// in another slot. `limits.max_topics` is checked against the set before, so concurrent
    /// publishers on several nodes may pass it by the topics they create at the same moment.
    async fn publish_sharded(
        &self,
        messages: &[(Topic, Data)],
        once: Option<(&IdempotencyKey, Duration)>,
    ) -> Result<Published, BrokerError> {
        self.check_room(messages).await?;
        let key = once.map_or(String::new(), |(key, _)| key.key_hex());
        let (mut seqs, mut replayed, mut created) = (vec![0; messages.len()], true, Vec::new());
        for group in shards::slot_groups(messages.iter().map(|(t, _)| t)) {
            let tag = messages[group[0]].0.as_str();
            let idem = format!("{}:{{{tag}}}:idem:{key}", self.prefix);
            let (published, fresh) = self.eval_group(messages, &group, idem, None, once).await?;
            let group_seqs = match published {
                Published::New(s) => {
                    replayed = false;
                    s
                }
                Published::Replayed(s) => s,
                Published::Conflict => return Ok(Published::Conflict),
            };
            for (i, seq) in group.iter().zip(group_seqs) {
                seqs[*i] = seq;
            }
            created.extend(fresh);
        }
        if !created.is_empty() {
            let mut pipe = redis::pipe();
            let names: Vec<&str> = created.iter().map(Topic::as_str).collect();
            pipe.cmd("SADD").arg(self.topics_key()).arg(names).ignore();
            let mut conn = self.connection()?;
            self.round_trip(pipe.query_async::<()>(&mut conn)).await?;
            for topic in &created {
                let announce = redis::cmd("PUBLISH")
                    .arg(self.new_topics_channel())
                    .arg(topic.as_str())
                    .clone();
                self.round_trip(announce.query_async::<i64>(&mut conn)).await?;
            }
        }
        Ok(if replayed {
            Published::Replayed(seqs)
        } else {
            Published::New(seqs)
        })
    }

    /// Refuses a cluster batch whose topics unknown to the topic set would take it past
    /// `limits.max_topics`. Topics this node mirrors exist already and cost no question.
    async fn check_room(&self, messages: &[(Topic, Data)]) -> Result<(), BrokerError> {
        let mut unknown: Vec<&str> = (messages.iter())
            .filter(|(t, _)| !self.hub.has(t))
            .map(|(t, _)| t.as_str())
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if unknown.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SMISMEMBER").arg(self.topics_key()).arg(&unknown);
        pipe.cmd("SCARD").arg(self.topics_key());
        let mut conn = self.connection()?;
        let (known, count): (Vec<bool>, usize) = self.round_trip(pipe.query_async(&mut conn)).await?;
        let fresh = known.iter().filter(|k| !**k).count();
        let max_topics = self.hub.bounds().max_topics;
        if fresh > 0 && count + fresh > max_topics {
            return Err(BrokerError::TooManyTopics(max_topics));
        }
        Ok(())
    }

    /// Runs the publish script for the messages at `group` (all in one slot on a cluster) with
    /// the idempotency key `idem` and, on one server, the topic set; returns what it did and
    /// the topics it created.
    async fn eval_group(
        &self,
        messages: &[(Topic, Data)],
        group: &[usize],
        idem: String,
        set: Option<String>,
        once: Option<(&IdempotencyKey, Duration)>,
    ) -> Result<(Published, Vec<Topic>), BrokerError> {
        let mut conn = self.connection()?;
        let mut call = self.script.prepare_invoke();
        for &i in group {
            let topic = &messages[i].0;
            call.key(self.meta_key(topic)).key(self.stream_key(topic));
        }
        // Never read or written without a digest; a key is passed so the layout is fixed.
        call.key(idem);
        if let Some(set) = set {
            call.key(set);
        }
        let (digest, window) = match once {
            Some((key, window)) => (key.body_hex(), window.as_millis().max(1) as u64),
            None => (String::new(), 0),
        };
        let max_topics = self.hub.bounds().max_topics;
        let (before, after) = self.channels.affixes();
        let publish = if self.seeds.is_some() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        call.arg(&*new_epoch())
            .arg(now_ms())
            .arg(before)
            .arg(digest)
            .arg(window)
            .arg(max_topics)
            .arg(publish)
            .arg(after);
        let rules = self.hub.rules();
        for &i in group {
            let (topic, data) = &messages[i];
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
        let n = group.len();
        let mut seqs = reply.split_off(1);
        match reply[0] {
            0 if seqs.len() == 2 * n => {
                let flags = seqs.split_off(n);
                let created = (group.iter().zip(flags))
                    .filter(|(_, created)| *created == 1)
                    .map(|(&i, _)| messages[i].0.clone())
                    .collect();
                Ok((Published::New(seqs), created))
            }
            0 => Err(corrupt("publish reply does not match the batch")),
            1 if seqs.len() == n => Ok((Published::Replayed(seqs), Vec::new())),
            1 => Err(corrupt("stored seqs do not match the batch")),
            _ => Ok((Published::Conflict, Vec::new())),
        }
    }

    /// The stored state of each topic (`None`: unknown to Redis), with the history entries
    /// after the given seq. One atomic pipeline per chunk, so each topic's hash and stream agree.
    pub(super) async fn load(&self, topics: &[(Topic, u64)]) -> Result<Vec<Option<Stored>>, BrokerError> {
        let mut out = Vec::with_capacity(topics.len());
        for chunk in topics.chunks(LOAD_CHUNK) {
            let conn = self.connection()?;
            // A cluster takes a transaction within one slot only: one per topic, concurrently.
            let replies: Vec<(RawMeta, Vec<RawEntry>)> = if conn.is_cluster() {
                let each = chunk.iter().map(|(topic, after)| {
                    let mut conn = conn.clone();
                    let pipe = self.load_pipe(&[(topic.clone(), *after)]);
                    async move {
                        let mut one: Vec<(RawMeta, Vec<RawEntry>)> =
                            self.round_trip(pipe.query_async(&mut conn)).await?;
                        one.pop().ok_or(BrokerError::Corrupt {
                            key: self.meta_key(topic),
                            what: "empty load reply",
                        })
                    }
                });
                futures_util::future::try_join_all(each).await?
            } else {
                let mut conn = conn;
                self.round_trip(self.load_pipe(chunk).query_async(&mut conn))
                    .await?
            };
            for ((topic, _), (meta, entries)) in chunk.iter().zip(replies) {
                out.push(self.parse_stored(topic, meta, entries)?);
            }
        }
        Ok(out)
    }

    /// One transaction reading each topic's hash and its stream after the given seq.
    fn load_pipe(&self, topics: &[(Topic, u64)]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (topic, after) in topics {
            pipe.cmd("HMGET")
                .arg(self.meta_key(topic))
                .arg(&["e", "s", "t", "d"]);
            pipe.cmd("XRANGE")
                .arg(self.stream_key(topic))
                .arg(after.saturating_add(1))
                .arg("+");
        }
        pipe
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
    pub(super) async fn topics_matching(&self, pattern: &Pattern) -> Result<Vec<Topic>, BrokerError> {
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
    pub(super) async fn scan_topics(
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
            let seqs: Vec<Option<u64>> = if conn.is_cluster() {
                // A pipeline takes one slot only on a cluster: one read per topic, concurrently.
                let each = chunk.iter().map(|topic| {
                    let mut conn = conn.clone();
                    let read = redis::cmd("HGET").arg(self.meta_key(topic)).arg("s").clone();
                    async move { self.round_trip(read.query_async(&mut conn)).await }
                });
                futures_util::future::try_join_all(each).await?
            } else {
                let mut pipe = redis::pipe();
                for topic in chunk {
                    pipe.cmd("HGET").arg(self.meta_key(topic)).arg("s");
                }
                self.round_trip(pipe.query_async(&mut conn)).await?
            };
            out.extend(chunk.iter().cloned().zip(seqs).filter_map(|(t, s)| Some((t, s?))));
        }
        Ok((out, next.flatten()))
    }
}
