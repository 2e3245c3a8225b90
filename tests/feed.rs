//! The built-in simulated price feed.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const CONFIG: &str = r#"
[feed]
enabled = true
symbols = ["BTC-USD", "ETH-USD", "AAPL"]
updates_per_second = 50.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_publishes_quotes_for_configured_symbols() {
    let server = start(CONFIG).await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["prices.>"]).await;

    let symbols = ["BTC-USD", "ETH-USD", "AAPL"];
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let mut updates: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while symbols.iter().any(|s| updates.get(*s).copied().unwrap_or(0) < 5) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "feed at 50/s per symbol: fewer than 5 updates per symbol in 10 s: {updates:?}"
        );
        let m = recv_json(&mut ws).await;
        let kind = m["type"].as_str().unwrap_or_default();
        assert!(kind == "update" || kind == "snapshot", "unexpected {m}");
        let topic = m["topic"].as_str().expect("topic").to_string();
        let symbol = topic
            .strip_prefix("prices.")
            .unwrap_or_else(|| panic!("feed topic {topic} outside prices."));
        assert!(symbols.contains(&symbol), "unconfigured symbol {symbol}");

        let d = &m["data"];
        assert_eq!(d["symbol"], symbol, "{m}");
        for field in ["bid", "ask", "last", "volume"] {
            assert!(d[field].is_number(), "{field} is not a number: {m}");
        }
        let bid = d["bid"].as_f64().unwrap();
        let ask = d["ask"].as_f64().unwrap();
        assert!(bid > 0.0 && bid.is_finite(), "bid {bid}: {m}");
        assert!(bid < ask, "bid {bid} must be below ask {ask}: {m}");
        assert!(d["last"].as_f64().unwrap() > 0.0, "{m}");
        assert!(d["volume"].as_f64().unwrap() >= 0.0, "{m}");
        assert!(d["ts"].is_number(), "data.ts missing: {m}");
        assert_recent_ts(&m);

        let seq = m["seq"].as_u64().expect("seq");
        if let Some(prev) = last_seq.insert(topic.clone(), seq) {
            assert!(seq > prev, "{topic}: seq {seq} after {prev}");
        }
        if kind == "update" {
            *updates.entry(symbol.to_string()).or_default() += 1;
        }
    }

    // The HTTP view agrees: one topic per symbol with a current value.
    for s in symbols {
        let t = get_topic(addr, &format!("prices.{s}"))
            .await
            .unwrap_or_else(|| panic!("prices.{s} has no value"));
        assert_eq!(t["data"]["symbol"], s);
        assert!(t["seq"].as_u64().unwrap() >= last_seq[&format!("prices.{s}")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_disabled_publishes_nothing() {
    let server = start("[feed]\nenabled = false\nupdates_per_second = 50.0\n").await;
    let mut ws = connect(server.addr).await;
    subscribe(&mut ws, 1, &["prices.>"]).await;
    expect_silence(&mut ws, Duration::from_millis(500)).await;
    let (status, body) = get_json(server.addr, "/api/v1/topics").await;
    assert_eq!(status, 200);
    assert_eq!(body["topics"], serde_json::json!([]));
}
