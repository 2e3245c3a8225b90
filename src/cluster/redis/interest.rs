//! What local clients subscribe to, as the Redis broker sees it: the wanted topics and
//! patterns with how many connections hold each, the changes the link must apply to its pub/sub
//! subscriptions, and the Redis channel glob of a pattern. Plain data; the broker's `prepare`
//! and `release` keep it, the link reads it.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::topic::{Pattern, Topic};

/// A change of what the node listens to, applied by the link in order.
pub(super) enum Command {
    /// Subscribe, then tell the waiting subscribers the channel is live.
    Subscribe(Pattern, Arc<watch::Sender<bool>>),
    Unsubscribe(Pattern),
}

/// One subscription (exact topic or pattern) that local clients hold.
pub(super) struct Want {
    /// How many connections hold it.
    pub(super) count: usize,
    /// Becomes true once Redis delivers its channel; every connection that takes the
    /// subscription waits for it, not only the first, so that none loads a topic's state
    /// before its updates are sure to arrive.
    pub(super) live: Arc<watch::Sender<bool>>,
}

/// What local clients subscribe to; exact topics apart so that a message finds out in one
/// lookup whether anybody wants it.
#[derive(Default)]
pub(super) struct Interest {
    exact: HashMap<Topic, Want>,
    patterns: HashMap<Pattern, Want>,
}

impl Interest {
    pub(super) fn get_mut(&mut self, p: &Pattern) -> Option<&mut Want> {
        match p.as_exact() {
            Some(topic) => self.exact.get_mut(&topic),
            None => self.patterns.get_mut(p),
        }
    }

    pub(super) fn insert(&mut self, p: &Pattern, want: Want) {
        match p.as_exact() {
            Some(topic) => self.exact.insert(topic, want),
            None => self.patterns.insert(p.clone(), want),
        };
    }

    pub(super) fn remove(&mut self, p: &Pattern) {
        match p.as_exact() {
            Some(topic) => self.exact.remove(&topic),
            None => self.patterns.remove(p),
        };
    }

    pub(super) fn wants(&self, topic: &Topic) -> bool {
        self.exact.contains_key(topic) || self.patterns.keys().any(|p| p.matches(topic))
    }

    /// After (re-)subscribing everything: every subscription's channel is live.
    pub(super) fn set_live(&self) {
        let wants = self.exact.values().chain(self.patterns.values());
        wants.for_each(|w| {
            w.live.send_replace(true);
        });
    }

    pub(super) fn all(&self) -> Vec<Pattern> {
        let exact = self.exact.keys().filter_map(|t| Pattern::parse(t.as_str()).ok());
        exact.chain(self.patterns.keys().cloned()).collect()
    }
}

/// The Redis glob for a pattern's channels. Glob `*` also crosses dots, so it matches a
/// superset; messages are checked against the pattern itself before they are used.
pub(super) fn glob(pattern: &Pattern) -> String {
    (pattern.as_str().split('.'))
        .map(|token| if token == ">" { "*" } else { token })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_cover_their_patterns() {
        assert_eq!(glob(&Pattern::parse("prices.*").unwrap()), "prices.*");
        assert_eq!(glob(&Pattern::parse("chat.>").unwrap()), "chat.*");
        assert_eq!(glob(&Pattern::parse("a.*.c").unwrap()), "a.*.c");
    }
}
