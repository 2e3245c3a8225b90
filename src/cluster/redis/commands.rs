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
use super::{BrokerError, Published, RedisBroker, LOAD_CHUNK, TOO_MANY_TOPICS};

/// A stream entry as XRANGE returns it: id `seq-0`, fields `t` (ts) and `d` (data).
type RawEntry = (String, Vec<(String, String)>);
/// A topic's hash: epoch, seq, last ts, last data.
type RawMeta = (Option<String>, Option<u64>, Option<u64>, Option<String>);

impl RedisBroker {
    /// Stores and publishes `messages` in order, all or none, unless `once` (an idempotency
    /// key and its window) already published: checked and recorded in the same script.
    pub(super) async fn eval_publish(
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
        call.arg(&*new_epoch())
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
    pub(super) async fn load(&self, topics: &[(Topic, u64)]) -> Result<Vec<Option<Stored>>, BrokerError> {
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
            let mut pipe = redis::pipe();
            for topic in chunk {
                pipe.cmd("HGET").arg(self.meta_key(topic)).arg("s");
            }
            let seqs: Vec<Option<u64>> = self.round_trip(pipe.query_async(&mut conn)).await?;
            out.extend(chunk.iter().cloned().zip(seqs).filter_map(|(t, s)| Some((t, s?))));
        }
        Ok((out, next.flatten()))
    }
}
