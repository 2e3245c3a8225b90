//! Topic names and subscription patterns: validation, matching and covering, NATS semantics.
//!
//! A topic is 1–256 bytes of dot-separated, non-empty tokens of `[A-Za-z0-9_:-]`. A pattern may
//! also use `*` (exactly one token) and `>` (last token only, one or more tokens), with NATS
//! semantics. Validation happens once at the edge; past it, code holds [`Topic`] or [`Pattern`]
//! and never re-checks.
//!
//! The server hashes, compares and clones a [`Topic`] for every publication, so its
//! representation (one `Arc<str>`) and the `#[inline]`s on the small methods are deliberate: they
//! keep these calls as cheap across the crate boundary as they were inside the server. The `Arc`
//! is triomphe's, which has no weak count: a node may hold a million names, and 8 bytes less per
//! allocation puts a name of up to 16 bytes in a 32-byte chunk instead of a 48-byte one.

use std::fmt;
use triomphe::Arc;

use serde::{Serialize, Serializer};
use thiserror::Error;

/// Why a topic name or pattern was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TopicError {
    /// Empty, or longer than [`MAX_TOPIC_BYTES`]: the length it has.
    #[error("topic must be 1 to {MAX_TOPIC_BYTES} bytes, got {0}")]
    Length(usize),
    /// A token that is empty or has a character outside `[A-Za-z0-9_:-]`.
    #[error("token {0:?} is empty or has characters outside [A-Za-z0-9_:-]")]
    Token(String),
    /// A wildcard in a topic name (publications name concrete topics).
    #[error("wildcards (* and >) are only allowed in subscriptions")]
    Wildcard,
    /// A `>` that is not the last token.
    #[error("'>' is only allowed as the last token")]
    TailWildcard,
}

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

/// Whether every token of `s` is non-empty and made of token characters only: a valid topic,
/// in one pass over the bytes. The token-by-token checks below say what is wrong otherwise;
/// this is the common case without them (callgrind: ~790 instructions a parse for a name of
/// four tokens, most of it the split, on every name of a reconnecting client's `since`).
fn plain_tokens(s: &str) -> bool {
    let mut token = 0;
    for &b in s.as_bytes() {
        if b == b'.' {
            if token == 0 {
                return false;
            }
            token = 0;
        } else if is_token_char(b) {
            token += 1;
        } else {
            return false;
        }
    }
    token > 0
}

impl Topic {
    /// Validates a concrete topic name.
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        check_length(s)?;
        if plain_tokens(s) {
            return Ok(Topic(s.into()));
        }
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

    /// The name.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Pattern {
    /// Validates a subscription: a concrete topic or a pattern with `*` / `>`.
    pub fn parse(s: &str) -> Result<Pattern, TopicError> {
        check_length(s)?;
        if plain_tokens(s) {
            return Ok(Pattern(s.into()));
        }
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

    /// The subscription as written.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The concrete topic this subscription names, when it has no wildcard.
    pub fn as_exact(&self) -> Option<Topic> {
        self.is_exact().then(|| Topic(self.0.clone()))
    }

    /// Whether the subscription has no wildcard (names one topic).
    ///
    /// A byte test, not a walk over the tokens: `*` and `>` are not token characters, so in a
    /// validated pattern they only ever stand as whole tokens. On the hub's paths for every
    /// (topic, subscription) a subscribe or unsubscribe touches (callgrind: ~380 instructions
    /// a call by tokens, for a name of four).
    #[inline]
    pub fn is_exact(&self) -> bool {
        !self.0.bytes().any(|b| b == b'*' || b == b'>')
    }

    /// Whether every topic `other` can match is also matched by `self`: the test an ACL pattern
    /// passes when it allows a subscription. Decided token by token, so it is exact for one
    /// pattern against one pattern (a literal never covers `*`: tokens are unbounded).
    pub fn covers(&self, other: &Pattern) -> bool {
        let mut mine = self.0.split('.');
        let mut theirs = other.0.split('.');
        loop {
            match (mine.next(), theirs.next()) {
                // `>` takes one or more tokens, and `other` still needs at least one here.
                (Some(">"), Some(_)) => return true,
                // `other` can end here, or go on with any number of tokens: only `>` covers that.
                (Some(_), Some(">")) => return false,
                (Some("*"), Some(_)) => {}
                // A literal covers only the same literal, never `*`.
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                // Different literals, or one side longer than the other.
                _ => return false,
            }
        }
    }

    /// Whether some topic matches both `self` and `other` (symmetric). `>` takes one or more
    /// tokens, `*` exactly one, so two patterns overlap when they agree token by token up to
    /// the first `>` of either, or to their common end.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let mut mine = self.0.split('.');
        let mut theirs = other.0.split('.');
        loop {
            match (mine.next(), theirs.next()) {
                (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
                (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// Whether this subscription matches the concrete `topic`.
    #[inline]
    pub fn matches(&self, topic: &Topic) -> bool {
        pattern_matches(&self.0, topic.as_str())
    }
}

/// Whether the subscription `pattern` matches the concrete `topic`, on names not (necessarily)
/// validated: what [`Pattern::matches`] decides, for code that keeps plain strings (a client
/// routing its deliveries to its subscriptions).
///
/// Tokens are separated by `.`; `*` matches exactly one token and `>` (last token only) one or
/// more. A pattern without wildcards matches only the identical topic.
///
/// ```
/// use tickwire_proto::pattern_matches;
/// assert!(pattern_matches("prices.*", "prices.BTC-USD"));
/// assert!(!pattern_matches("prices.*", "prices.BTC-USD.bid"));
/// assert!(pattern_matches("prices.>", "prices.BTC-USD.bid"));
/// ```
#[inline]
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    let mut topic_tokens = topic.split('.');
    for p in pattern.split('.') {
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

// Serialized as the plain name. No `Deserialize`: a name from the wire must go through `parse`.
impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::parse(p).unwrap().matches(&Topic::parse(t).unwrap())
    }

    #[test]
    fn overlapping_patterns_share_a_topic() {
        let p = |s: &str| Pattern::parse(s).unwrap();
        for (a, b) in [
            ("chat.>", "chat.*"),
            ("chat.>", "*.lobby"),
            ("chat.*", "*.lobby"),
            ("chat.lobby", "chat.lobby"),
            ("*.*", "a.b"),
            (">", "a.b.c"),
            ("a.*.c", "a.b.>"),
        ] {
            assert!(p(a).overlaps(&p(b)) && p(b).overlaps(&p(a)), "{a} {b}");
        }
        for (a, b) in [
            ("chat.>", "prices.*"),
            ("chat.>", "chat"),
            ("chat.*", "chat.a.b"),
            ("a.b", "a.c"),
            ("*.*", "a"),
            ("a.*.c", "a.b.d"),
        ] {
            assert!(!p(a).overlaps(&p(b)) && !p(b).overlaps(&p(a)), "{a} {b}");
        }
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

    /// The one-pass check agrees with the token-by-token rules on every short string over the
    /// characters that matter, topics and patterns alike, errors included.
    #[test]
    fn the_fast_check_agrees_with_the_token_rules() {
        fn by_tokens(s: &str, wildcards: bool) -> Result<(), TopicError> {
            check_length(s)?;
            let tokens: Vec<&str> = s.split('.').collect();
            for (i, token) in tokens.iter().enumerate() {
                match *token {
                    "*" if wildcards => {}
                    ">" if wildcards && i + 1 == tokens.len() => {}
                    ">" if wildcards => return Err(TopicError::TailWildcard),
                    "*" | ">" => return Err(TopicError::Wildcard),
                    t if !t.is_empty() && t.bytes().all(is_token_char) => {}
                    t => return Err(TopicError::Token(t.to_string())),
                }
            }
            Ok(())
        }
        let alphabet = ['a', 'Z', '9', '-', '_', ':', '.', '*', '>', ' ', 'é'];
        let mut strings = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = (strings.iter())
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            strings.extend(longer);
        }
        strings.sort();
        strings.dedup();
        for s in &strings {
            let topic = Topic::parse(s).map(|t| t.as_str().to_owned());
            assert_eq!(topic.map(|_| ()), by_tokens(s, false), "topic {s:?}");
            let pattern = Pattern::parse(s).map(|p| p.as_str().to_owned());
            assert_eq!(pattern.map(|_| ()), by_tokens(s, true), "pattern {s:?}");
        }
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

    fn c(a: &str, b: &str) -> bool {
        Pattern::parse(a).unwrap().covers(&Pattern::parse(b).unwrap())
    }

    #[test]
    fn covering() {
        for (allowed, requested) in [
            ("prices.>", "prices.*"),
            ("prices.>", "prices.BTC-USD"),
            ("prices.>", "prices.>"),
            ("prices.>", "prices.*.book"),
            ("prices.>", "prices.BTC.>"),
            ("prices.*", "prices.BTC"),
            ("prices.*", "prices.*"),
            (">", ">"),
            (">", "*"),
            (">", "a.b.c"),
            (">", "*.>"),
            ("*.>", "*.*"),
            ("*.>", "a.>"),
            ("*", "a"),
            ("*.b", "a.b"),
            ("a.b", "a.b"),
            ("a.*.c", "a.b.c"),
        ] {
            assert!(c(allowed, requested), "{allowed} should cover {requested}");
        }
        for (allowed, requested) in [
            // Nothing but `>` covers `>`.
            ("prices.>", ">"),
            ("*", ">"),
            ("*.>", ">"),
            ("a", ">"),
            // A literal does not cover a wildcard.
            ("prices.BTC", "prices.*"),
            ("prices.BTC", "prices.>"),
            ("prices.*", "prices.>"),
            ("prices.*", "*.BTC"),
            ("a.b", "*.b"),
            // Lengths must agree unless `>` absorbs the rest.
            ("prices.*", "prices.BTC.x"),
            ("prices.*", "prices"),
            ("prices.>", "prices"),
            ("a.b", "a"),
            ("a", "a.b"),
            ("*.>", "a"),
            // Different literals.
            ("prices.>", "pricesx.a"),
            ("chat.*", "chatx.a"),
            ("a.*.c", "a.b.d"),
        ] {
            assert!(!c(allowed, requested), "{allowed} must not cover {requested}");
        }
    }

    /// Every pattern of up to three tokens over `x`, `y`, `*`, `>`: checked against the
    /// definition (every topic the requested pattern matches is matched by the allowed one) on
    /// topics over `x`, `y` and a token no pattern names, up to two tokens longer than any
    /// pattern. That set is enough: a counterexample topic stays one when its other tokens are
    /// renamed to the fresh token, and when a `>` tail is cut to one token past the longest
    /// pattern.
    #[test]
    fn covering_agrees_with_matching() {
        let mut patterns = Vec::new();
        let mut prefixes = vec![String::new()];
        for _ in 0..3 {
            let mut longer = Vec::new();
            for prefix in &prefixes {
                for token in ["x", "y", "*", ">"] {
                    let p = if prefix.is_empty() {
                        token.to_string()
                    } else {
                        format!("{prefix}.{token}")
                    };
                    patterns.push(Pattern::parse(&p).unwrap());
                    if token != ">" {
                        longer.push(p);
                    }
                }
            }
            prefixes = longer;
        }
        let mut topics = Vec::new();
        let mut level = vec![String::new()];
        for _ in 0..5 {
            level = (level.iter())
                .flat_map(|prefix| {
                    ["x", "y", "z"].map(|t| {
                        if prefix.is_empty() {
                            t.to_string()
                        } else {
                            format!("{prefix}.{t}")
                        }
                    })
                })
                .collect();
            topics.extend(level.iter().map(|t| Topic::parse(t).unwrap()));
        }
        for a in &patterns {
            for b in &patterns {
                let by_definition = (topics.iter()).filter(|t| b.matches(t)).all(|t| a.matches(t));
                assert_eq!(a.covers(b), by_definition, "{a} covers {b}");
            }
        }
    }

    #[test]
    fn exact_patterns() {
        assert_eq!(Pattern::parse("a.b").unwrap().as_exact().unwrap().as_str(), "a.b");
        assert!(Pattern::parse("a.*").unwrap().as_exact().is_none());
        // The byte test agrees with the tokens: wildcards only as whole tokens, anywhere.
        for (p, exact) in [
            ("a", true),
            ("a-b:c_d.e", true),
            ("*", false),
            (">", false),
            ("a.*.c", false),
            ("*.b", false),
            ("a.b.>", false),
        ] {
            let pattern = Pattern::parse(p).unwrap();
            let by_tokens = !p.split('.').any(|t| t == "*" || t == ">");
            assert_eq!((pattern.is_exact(), by_tokens), (exact, exact), "{p}");
        }
    }
}
