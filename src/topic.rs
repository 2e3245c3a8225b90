//! Topic names and subscription patterns.
//!
//! A topic is 1–256 bytes of dot-separated, non-empty tokens of `[A-Za-z0-9_:-]`. A pattern may
//! also use `*` (exactly one token) and `>` (last token only, one or more tokens), with NATS
//! semantics. Validation happens once at the edge; past it, code holds [`Topic`] or [`Pattern`]
//! and never re-checks.

use std::fmt;
use std::sync::Arc;

use crate::error::TopicError;

/// Longest accepted topic or pattern, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;

/// A validated, concrete topic name (no wildcards). Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

/// A validated subscription: an exact topic or a pattern with `*` / `>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(Arc<str>);

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-')
}

fn check_length(s: &str) -> Result<(), TopicError> {
    if s.is_empty() || s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::Length(s.len()));
    }
    Ok(())
}

impl Topic {
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        check_length(s)?;
        for token in s.split('.') {
            if token == "*" || token == ">" {
                return Err(TopicError::Wildcard);
            }
            if token.is_empty() || !token.bytes().all(is_token_char) {
                return Err(TopicError::Token(token.to_string()));
            }
        }
        Ok(Topic(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, TopicError> {
        check_length(s)?;
        let mut tokens = s.split('.').peekable();
        while let Some(token) = tokens.next() {
            match token {
                "*" => {}
                ">" if tokens.peek().is_none() => {}
                ">" => return Err(TopicError::TailWildcard),
                t if !t.is_empty() && t.bytes().all(is_token_char) => {}
                t => return Err(TopicError::Token(t.to_string())),
            }
        }
        Ok(Pattern(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The concrete topic this subscription names, when it has no wildcard.
    pub fn as_exact(&self) -> Option<Topic> {
        let wild = self.0.split('.').any(|t| t == "*" || t == ">");
        (!wild).then(|| Topic(self.0.clone()))
    }

    pub fn matches(&self, topic: &Topic) -> bool {
        let mut topic_tokens = topic.as_str().split('.');
        for p in self.0.split('.') {
            match (p, topic_tokens.next()) {
                (">", Some(_)) => return true,
                (_, None) => return false,
                ("*", Some(_)) => {}
                (p, Some(t)) if p == t => {}
                _ => return false,
            }
        }
        topic_tokens.next().is_none()
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::parse(p).unwrap().matches(&Topic::parse(t).unwrap())
    }

    #[test]
    fn topic_validation() {
        assert!(Topic::parse("prices.BTC-USD").is_ok());
        assert!(Topic::parse("a_b:c-d.E9").is_ok());
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a b",
            "a.*",
            "a.>",
            "é",
            &"x".repeat(257),
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Topic::parse(&"x".repeat(256)).is_ok());
    }

    #[test]
    fn pattern_validation() {
        for ok in ["a", "*", ">", "a.*", "a.>", "*.b.>", "a.*.c"] {
            assert!(Pattern::parse(ok).is_ok(), "{ok:?} rejected");
        }
        for bad in ["", "a.>.b", ">.a", "a.**", "a.b*", "a..b", "a.>x"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn matching() {
        assert!(m("prices.*", "prices.BTC"));
        assert!(!m("prices.*", "prices"));
        assert!(!m("prices.*", "prices.BTC.x"));
        assert!(m("prices.>", "prices.BTC"));
        assert!(m("prices.>", "prices.BTC.x.y"));
        assert!(!m("prices.>", "prices"));
        assert!(m(">", "a"));
        assert!(m("*.b", "a.b"));
        assert!(!m("*.b", "a.c"));
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
    }

    #[test]
    fn exact_patterns() {
        assert_eq!(Pattern::parse("a.b").unwrap().as_exact().unwrap().as_str(), "a.b");
        assert!(Pattern::parse("a.*").unwrap().as_exact().is_none());
    }
}
