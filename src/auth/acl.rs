//! Access control lists: the topic patterns one client may subscribe to and publish to.
//!
//! An ACL comes from the anonymous settings, a token's claims or an API key. It is checked at
//! the edge, before anything reaches the hub: a subscription must be *covered* by one allowed
//! pattern (every topic it can ever match is readable), so the hub can deliver through it
//! without a per-message check and still never hand a client a topic it may not read.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::value::RawValue;

use crate::topic::{Pattern, Topic};

/// What one client may do. Cheap to clone: connections of the same kind share the lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    subscribe: Arc<[Pattern]>,
    publish: Arc<[Pattern]>,
}

impl Acl {
    pub fn new(subscribe: Vec<Pattern>, publish: Vec<Pattern>) -> Acl {
        Acl {
            subscribe: subscribe.into(),
            publish: publish.into(),
        }
    }

    /// Whether one allowed pattern covers every topic `subscription` can match. Coverage by a
    /// union is not recognised (`a.*` plus `a.*.>` do not allow `a.>`): refusing is the safe
    /// side, and the client can subscribe to the two patterns instead.
    pub fn may_subscribe(&self, subscription: &Pattern) -> bool {
        self.subscribe.iter().any(|allowed| allowed.covers(subscription))
    }

    pub fn may_publish(&self, topic: &Topic) -> bool {
        self.publish.iter().any(|allowed| allowed.matches(topic))
    }

    /// The first of `subscriptions` this ACL does not allow.
    pub fn first_unreadable<'a>(&self, subscriptions: &'a [Pattern]) -> Option<&'a Pattern> {
        subscriptions.iter().find(|s| !self.may_subscribe(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(subscribe: &[&str], publish: &[&str]) -> Acl {
        let parse = |list: &[&str]| list.iter().map(|p| Pattern::parse(p).unwrap()).collect();
        Acl::new(parse(subscribe), parse(publish))
    }

    #[test]
    fn subscriptions_need_one_covering_pattern() {
        let a = acl(&["prices.>", "chat.lobby", "news.*"], &[]);
        for ok in [
            "prices.*",
            "prices.BTC-USD",
            "prices.>",
            "chat.lobby",
            "news.x",
            "news.*",
        ] {
            assert!(a.may_subscribe(&Pattern::parse(ok).unwrap()), "{ok}");
        }
        for no in [
            ">", "*", "chat.*", "chat.>", "news.>", "news.x.y", "prices", "*.lobby",
        ] {
            assert!(!a.may_subscribe(&Pattern::parse(no).unwrap()), "{no}");
        }
        let requested = [
            Pattern::parse("prices.*").unwrap(),
            Pattern::parse("chat.*").unwrap(),
        ];
        assert_eq!(a.first_unreadable(&requested).unwrap().as_str(), "chat.*");
        assert!(Acl::default().first_unreadable(&requested[..1]).is_some());
    }

    #[test]
    fn publishing_matches_topics() {
        let a = acl(&[], &["chat.>", "alerts.red"]);
        for ok in ["chat.x", "chat.x.y", "alerts.red"] {
            assert!(a.may_publish(&Topic::parse(ok).unwrap()), "{ok}");
        }
        for no in ["chat", "chatx.y", "alerts.blue", "x.chat.y"] {
            assert!(!a.may_publish(&Topic::parse(no).unwrap()), "{no}");
        }
    }
}

/// A WebSocket client as the server knows it.
// Here rather than in `auth`: `jwt` builds it, and `auth` uses `jwt`.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`; `None` for anonymous clients.
    pub subject: Option<String>,
    pub acl: Acl,
    /// When the connection must close unless the token is refreshed (exp plus leeway).
    pub expires: Option<SystemTime>,
    /// The token's `info` claim (what presence shows of the client); `None` for anonymous
    /// clients and tokens without one.
    pub info: Option<Arc<RawValue>>,
}
