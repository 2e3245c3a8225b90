//! Which topics exist and who subscribes to what: topic names (flat `<prefix><i>` or grouped
//! `<prefix><g>.<j>`, so that a pattern `<prefix><g>.*` matches one group), and each
//! connection's subscribe request and the topics it then receives.
//!
//! Topics are numbered `0..topics`; with groups of `group` topics, topic `i` is `j = i % group`
//! of group `g = i / group`. Connection `c` subscribes to `per_conn − patterns` consecutive
//! topics (modulo `topics`) from `c × (per_conn − patterns)`, so exact subscriptions spread
//! evenly and a connection never names a topic twice, plus `patterns` group patterns taken
//! from the last group backwards. A topic both named and matched arrives once (the server
//! delivers a publication to a connection at most once), so [`SubPlan::streams_of`] lists it
//! once.

/// The subscription plan of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubPlan {
    pub topics: u32,
    /// Subscriptions per connection, patterns included (0: connect only).
    pub per_conn: u32,
    /// How many of `per_conn` are group patterns (needs `group > 0`).
    pub patterns: u32,
    /// Topics per group; 0: flat names, no patterns.
    pub group: u32,
}

impl SubPlan {
    /// Flat names, exact subscriptions only (the fan-out, idle and connect scenarios).
    pub fn flat(topics: u32, per_conn: u32) -> SubPlan {
        SubPlan {
            topics,
            per_conn,
            patterns: 0,
            group: 0,
        }
    }

    fn exact_per_conn(&self) -> u32 {
        self.per_conn - self.patterns.min(self.per_conn)
    }

    fn groups(&self) -> u32 {
        self.topics.checked_div(self.group).unwrap_or(0)
    }

    /// Checks that the plan can be laid out: groups divide the topics, patterns need groups,
    /// and a connection never holds the same exact topic or group twice.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.topics == 0 {
            anyhow::bail!("need at least one topic");
        }
        if self.patterns > self.per_conn {
            anyhow::bail!(
                "more patterns ({}) than subscriptions ({})",
                self.patterns,
                self.per_conn
            );
        }
        if self.exact_per_conn() > self.topics {
            anyhow::bail!(
                "{} exact subscriptions per connection but only {} topics",
                self.exact_per_conn(),
                self.topics
            );
        }
        if self.group > 0 && !self.topics.is_multiple_of(self.group) {
            anyhow::bail!(
                "the group size ({}) must divide the topics ({})",
                self.group,
                self.topics
            );
        }
        if self.patterns > 0 && (self.group == 0 || self.patterns > self.groups()) {
            anyhow::bail!(
                "{} patterns per connection need as many groups (--group {} makes {})",
                self.patterns,
                self.group,
                self.groups()
            );
        }
        Ok(())
    }

    /// The exact topics connection `conn` names.
    pub fn topics_of(&self, conn: usize) -> impl Iterator<Item = u32> {
        let (t, k) = (u64::from(self.topics.max(1)), u64::from(self.exact_per_conn()));
        let start = conn as u64 * k;
        (0..k).map(move |j| ((start + j) % t) as u32)
    }

    /// The groups whose pattern connection `conn` subscribes to.
    pub fn groups_of(&self, conn: usize) -> impl Iterator<Item = u32> {
        let (g, p) = (u64::from(self.groups().max(1)), u64::from(self.patterns));
        let start = conn as u64 * p;
        (0..p).map(move |j| (g - 1 - (start + j) % g) as u32)
    }

    /// Every topic connection `conn` receives (named or matched), sorted, each once.
    pub fn streams_of(&self, conn: usize) -> Vec<u32> {
        let mut v: Vec<u32> = self.topics_of(conn).collect();
        for g in self.groups_of(conn) {
            v.extend(g * self.group..(g + 1) * self.group);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The `topics` of connection `conn`'s subscribe request: exact names, then patterns.
    pub fn request_of(&self, conn: usize, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self.topics_of(conn).map(|t| self.name(prefix, t)).collect();
        v.extend(self.groups_of(conn).map(|g| format!("{prefix}{g}.*")));
        v
    }

    /// Subscribers of each topic when connections `0..n` are all subscribed.
    pub fn subscribers_per_topic(&self, n: usize) -> Vec<u64> {
        let mut v = vec![0u64; self.topics as usize];
        for i in 0..n {
            for t in self.streams_of(i) {
                v[t as usize] += 1;
            }
        }
        v
    }

    /// The name of topic `index`.
    pub fn name(&self, prefix: &str, index: u32) -> String {
        match index.checked_div(self.group) {
            None => topic_name(prefix, index),
            Some(g) => format!("{prefix}{g}.{}", index % self.group),
        }
    }

    /// The index of a topic named by [`SubPlan::name`].
    #[inline]
    pub fn index_of(&self, topic: &[u8], prefix: &[u8]) -> Option<u32> {
        if self.group == 0 {
            return topic_index(topic, prefix);
        }
        let rest = topic.strip_prefix(prefix)?;
        let dot = memchr::memchr(b'.', rest)?;
        let (g, j) = (number(&rest[..dot])?, number(&rest[dot + 1..])?);
        (j < self.group).then(|| g.checked_mul(self.group)?.checked_add(j))?
    }
}

pub fn topic_name(prefix: &str, index: u32) -> String {
    format!("{prefix}{index}")
}

fn number(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u32, |v, &d| v * 10 + u32::from(d - b'0')))
}

/// The index of a topic named `<prefix><digits>`.
#[inline]
pub fn topic_index(topic: &[u8], prefix: &[u8]) -> Option<u32> {
    number(topic.strip_prefix(prefix)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_spread_subscriptions() {
        let plan = SubPlan::flat(3, 2);
        assert_eq!(plan.topics_of(0).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(plan.topics_of(1).collect::<Vec<_>>(), vec![2, 0]);
        assert_eq!(plan.subscribers_per_topic(3), vec![2, 2, 2]);
        assert_eq!(SubPlan::flat(1, 1).subscribers_per_topic(10), vec![10]);
        assert_eq!(SubPlan::flat(1, 0).topics_of(5).count(), 0);
        assert_eq!(plan.request_of(1, "x.t"), vec!["x.t2", "x.t0"]);
    }

    #[test]
    fn grouped_plans_mix_exact_names_and_patterns() {
        // 6 topics in 3 groups of 2; 3 subscriptions each, one of them a pattern.
        let plan = SubPlan {
            topics: 6,
            per_conn: 3,
            patterns: 1,
            group: 2,
        };
        plan.check().unwrap();
        assert_eq!(plan.request_of(0, "p."), vec!["p.0.0", "p.0.1", "p.2.*"]);
        assert_eq!(plan.streams_of(0), vec![0, 1, 4, 5]);
        // connection 1 names 2 and 3 and matches them again through group 1: once each
        assert_eq!(plan.request_of(1, "p."), vec!["p.1.0", "p.1.1", "p.1.*"]);
        assert_eq!(plan.streams_of(1), vec![2, 3]);
        assert_eq!(plan.request_of(2, "p."), vec!["p.2.0", "p.2.1", "p.0.*"]);
        assert_eq!(plan.subscribers_per_topic(3), vec![2, 2, 1, 1, 2, 2]);
        assert_eq!(plan.index_of(b"p.2.1", b"p."), Some(5));
        assert_eq!(plan.index_of(b"p.2.2", b"p."), None);
        assert_eq!(plan.index_of(b"p.21", b"p."), None);
        assert_eq!(plan.name("p.", 5), "p.2.1");
    }

    #[test]
    fn impossible_plans_are_refused() {
        let ok = SubPlan {
            topics: 6,
            per_conn: 3,
            patterns: 1,
            group: 2,
        };
        for bad in [
            SubPlan { group: 4, ..ok },
            SubPlan { patterns: 4, ..ok },
            SubPlan { group: 0, ..ok },
            SubPlan {
                patterns: 3,
                per_conn: 3,
                topics: 4,
                group: 2,
            },
            SubPlan {
                per_conn: 9,
                patterns: 0,
                ..ok
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn topic_indexes() {
        assert_eq!(topic_index(b"bench.t12", b"bench.t"), Some(12));
        assert_eq!(topic_index(b"bench.t", b"bench.t"), None);
        assert_eq!(topic_index(b"other.t1", b"bench.t"), None);
        assert_eq!(topic_index(b"bench.t1x", b"bench.t"), None);
    }
}
