//! Subscription pattern matching, the same as the server's (NATS semantics).

/// Whether the subscription `pattern` matches the concrete `topic`.
///
/// Tokens are separated by `.`; `*` matches exactly one token and `>` (last token only) one or
/// more. A pattern without wildcards matches only the identical topic.
///
/// ```
/// use tickwire_client::pattern_matches;
/// assert!(pattern_matches("prices.*", "prices.BTC-USD"));
/// assert!(!pattern_matches("prices.*", "prices.BTC-USD.bid"));
/// assert!(pattern_matches("prices.>", "prices.BTC-USD.bid"));
/// ```
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

#[cfg(test)]
mod tests {
    use super::pattern_matches as m;

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
}
