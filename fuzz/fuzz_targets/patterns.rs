//! Pattern parsing, matching and covering: no panics, and `covers` agrees with `matches` (if
//! `a` covers `b`, every topic `b` matches, `a` matches too; a pattern covers itself).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::topic::{Pattern, Topic};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Three fields: allowed pattern, requested pattern, topic.
    let mut parts = text.splitn(3, '\n');
    let (Some(a), Some(b), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
        if let Ok(p) = Pattern::parse(text) {
            assert!(p.covers(&p));
        }
        let _ = Topic::parse(text);
        return;
    };
    let (Ok(a), Ok(b)) = (Pattern::parse(a), Pattern::parse(b)) else {
        return;
    };
    assert!(a.covers(&a) && b.covers(&b));
    if let Ok(topic) = Topic::parse(t) {
        if a.covers(&b) && b.matches(&topic) {
            assert!(a.matches(&topic), "{a} covers {b} but not {topic}");
        }
        // A topic is also a pattern: it covers exactly itself.
        let exact = Pattern::parse(topic.as_str()).expect("a topic is a valid pattern");
        assert_eq!(a.covers(&exact), a.matches(&topic), "{a} vs {topic}");
    }
});
