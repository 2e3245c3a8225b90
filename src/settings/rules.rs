//! The parsed forms of the settings' lists, built once at start-up: the topic rules (queue
//! policies, history retention), the topic bounds and the trusted proxies' networks, and the one
//! parser of pattern lists that every list of topic patterns (these, the anonymous ACL, the API
//! keys' `publish`) goes through, so each failure reads the same and names its key.

use std::time::Duration;

use crate::settings::cidr::Cidr;
use crate::settings::error::SettingsError;
use crate::settings::sections::{Policy, Retention, Settings, TopicBounds};
use crate::topic::{Pattern, Topic};

/// The most `history.policies` entries: the hub keeps which one applies to a topic in a byte.
pub const MAX_RETENTION_POLICIES: usize = 255;

/// Validated, parsed forms of the pattern lists, built once at start-up.
#[derive(Debug, Clone)]
pub struct TopicRules {
    /// Per pattern, the first match wins: the delivery policy, and its max rate if it has one.
    pub policies: Vec<(Pattern, Policy, Option<f64>)>,
    pub retention: Retention,
    pub retention_policies: Vec<(Pattern, Retention)>,
}

impl TopicRules {
    pub fn policy_for(&self, topic: &Topic) -> Policy {
        self.policies
            .iter()
            .find(|(p, ..)| p.matches(topic))
            .map_or(Policy::Conflate, |(_, policy, _)| *policy)
    }

    /// The max rate the policy of `topic` sets, if any.
    pub fn max_rate_for(&self, topic: &Topic) -> Option<f64> {
        (self.policies.iter())
            .find(|(p, ..)| p.matches(topic))
            .and_then(|(.., rate)| *rate)
    }

    /// The `queue.policies` pattern under which `subscription` may get topics delivered with
    /// the `queue` policy, where a max rate cannot apply (every message must arrive). Exact for
    /// a topic name; for a pattern, any `queue` rule that overlaps it counts, even one an
    /// earlier rule shadows: refusing then is the safe side.
    pub fn may_queue(&self, subscription: &Pattern) -> Option<&Pattern> {
        let mut rules = self.policies.iter();
        let found = match subscription.as_exact() {
            // The first rule that matches decides, as for delivery.
            Some(topic) => {
                (rules.find(|(p, ..)| p.matches(&topic))).filter(|(_, policy, _)| *policy == Policy::Queue)
            }
            None => rules.find(|(p, policy, _)| *policy == Policy::Queue && p.overlaps(subscription)),
        };
        found.map(|(p, ..)| p)
    }

    pub fn retention_for(&self, topic: &Topic) -> Retention {
        self.retention_at(self.retention_index(topic))
    }

    /// Which bounds [`TopicRules::retention_for`] gives `topic`, as a small index (the hub keeps
    /// one per topic, in a byte): the first matching policy's position, or the default's, one
    /// past them. Settings allow at most [`MAX_RETENTION_POLICIES`].
    pub fn retention_index(&self, topic: &Topic) -> u8 {
        let found = (self.retention_policies.iter()).position(|(p, _)| p.matches(topic));
        let index = found.unwrap_or(self.retention_policies.len());
        u8::try_from(index).expect("settings allow at most MAX_RETENTION_POLICIES")
    }

    /// The bounds at `index` (from [`TopicRules::retention_index`]).
    pub fn retention_at(&self, index: u8) -> Retention {
        (self.retention_policies.get(usize::from(index))).map_or(self.retention, |(_, r)| *r)
    }
}

/// Parses every pattern of the list under `key`; the first invalid one fails, quoted.
pub(crate) fn patterns<'a>(
    key: &'static str,
    list: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Pattern>, SettingsError> {
    (list.into_iter())
        .map(|p| Pattern::parse(p).map_err(|e| SettingsError::invalid(key, format!("{p:?}: {e}"))))
        .collect()
}

impl Settings {
    /// Parses `server.trusted_proxies`.
    pub fn trusted_proxies(&self) -> Result<Vec<Cidr>, SettingsError> {
        (self.server.trusted_proxies.iter())
            .map(|s| Cidr::parse(s))
            .collect::<Result<_, _>>()
            .map_err(|message| {
                SettingsError::invalid(
                    "server.trusted_proxies",
                    format!("{message} (a CIDR such as \"10.0.0.0/8\" or an address)"),
                )
            })
    }

    pub fn topic_bounds(&self) -> TopicBounds {
        TopicBounds {
            max_topics: self.limits.max_topics,
            max_catch_up_topics: self.limits.max_catch_up_topics,
            max_topics_per_connection: self.limits.max_topics_per_connection,
            idle_ttl: (!self.topics.idle_ttl.is_zero()).then_some(self.topics.idle_ttl),
            delta_min_bytes: self.delta.min_bytes,
            deflate_min_bytes: self.compression.min_bytes,
            deflate_level: self.compression.level,
        }
    }

    /// Parses the pattern lists of the topic rules; every failure names its key.
    pub fn topic_rules(&self) -> Result<TopicRules, SettingsError> {
        let (queue, history) = (&self.queue.policies, &self.history.policies);
        let retention = |size, ttl_seconds| Retention {
            size,
            ttl: Duration::from_secs(ttl_seconds),
        };
        let policies = patterns("queue.policies", queue.iter().map(|r| r.pattern.as_str()))?;
        let retentions = patterns("history.policies", history.iter().map(|r| r.pattern.as_str()))?;
        if retentions.len() > MAX_RETENTION_POLICIES {
            let why = format!(
                "at most {MAX_RETENTION_POLICIES} policies (found {})",
                retentions.len()
            );
            return Err(SettingsError::invalid("history.policies", why));
        }
        Ok(TopicRules {
            policies: (policies.into_iter())
                .zip(queue)
                .map(|(pattern, rule)| (pattern, rule.policy, rule.max_rate))
                .collect(),
            retention: retention(self.history.size, self.history.ttl_seconds),
            retention_policies: (retentions.into_iter())
                .zip(history.iter().map(|r| retention(r.size, r.ttl_seconds)))
                .collect(),
        })
    }
}
