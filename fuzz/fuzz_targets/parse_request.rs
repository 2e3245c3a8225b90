//! Any text a client can send: parsing must never panic, and a request it accepts must be
//! well-formed (patterns and topics valid, ids echoed only when integers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::protocol::{parse_publish, parse_request, Request};
use tickwire::topic::{Pattern, Topic};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = parse_publish(data);
        return;
    };
    let (_, request) = parse_request(text, 16);
    match request {
        Ok(Request::Subscribe { topics, since }) => {
            assert!(!topics.is_empty() && topics.len() <= 16);
            for p in &topics {
                assert_eq!(Pattern::parse(p.as_str()).as_ref(), Ok(p));
            }
            for t in since.keys() {
                assert_eq!(Topic::parse(t.as_str()).as_ref(), Ok(t));
            }
        }
        Ok(Request::Publish { topic, data }) => {
            assert_eq!(Topic::parse(topic.as_str()).as_ref(), Ok(&topic));
            assert!(serde_json::from_str::<serde_json::Value>(data.get()).is_ok());
        }
        Ok(_) | Err(_) => {}
    }
    let _ = parse_publish(data);
});
