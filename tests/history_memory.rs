//! Memory held by topic histories: the gauges account for it exactly and the process's resident
//! memory stays within a small multiple of what they report.
//!
//! Its own test binary with a single test, so that no other test's allocations show up in the
//! RSS measurement.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::*;

const TOPICS: usize = 10_000;
const PUBLICATIONS: usize = 20;
/// Raw JSON text length of every payload (a string literal, quotes included).
const PAYLOAD: usize = 100;
/// Messages per HTTP batch.
const BATCH: usize = 4_000;

fn payload(topic: usize, round: usize) -> String {
    let s = format!("t{topic}r{round}-");
    format!("\"{s}{}\"", "x".repeat(PAYLOAD - 2 - s.len()))
}

/// Publishes `rounds` publications to each of `TOPICS` topics in HTTP batches of raw JSON.
async fn fill(addr: SocketAddr, rounds: usize) {
    let mut pending: Vec<String> = Vec::with_capacity(BATCH);
    for round in 0..rounds {
        for topic in 0..TOPICS {
            let data = payload(topic, round);
            assert_eq!(data.len(), PAYLOAD);
            pending.push(format!(r#"{{"topic":"mem.t{topic:05}","data":{data}}}"#));
            if pending.len() == BATCH || (round + 1 == rounds && topic + 1 == TOPICS) {
                let body = format!(r#"{{"messages":[{}]}}"#, pending.join(","));
                pending.clear();
                let r = http_post(addr, "/api/v1/publish", body.as_bytes()).await;
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                // Each message's result carries the seq it got in its topic: the round number.
                let want = format!(r#""seq":{}}}"#, round + 1);
                let text = String::from_utf8_lossy(&r.body);
                assert!(text.ends_with(&format!("{want}]}}")), "{text:.200}");
            }
        }
    }
}

async fn gauges(addr: SocketAddr) -> (f64, f64) {
    (
        metric_value(addr, "tickwire_history_messages").await,
        metric_value(addr, "tickwire_history_bytes").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_memory_is_accounted_and_bounded() {
    let config = "[http]\nmax_body_bytes = 16777216\n";
    let total = (TOPICS * PUBLICATIONS) as f64;
    let entry = (PAYLOAD + 64) as f64;

    // Default history.size = 100 ≥ 20: every publication is kept.
    let server = start(config).await;
    let addr = server.addr;
    assert_eq!(gauges(addr).await, (0.0, 0.0));
    let rss_before = rss_bytes() as f64;
    let started = Instant::now();
    fill(addr, PUBLICATIONS).await;
    let fill_time = started.elapsed();
    let rss_after = rss_bytes() as f64;
    let (messages, bytes) = gauges(addr).await;
    let growth = rss_after - rss_before;
    let bound = 3.0 * bytes + 10.0 * MIB;
    println!(
        "history memory, size 100: {TOPICS} topics x {PUBLICATIONS} publications of {PAYLOAD} B \
         published in {fill_time:?}; history_messages {messages}, history_bytes {bytes} \
         ({:.1} MiB); RSS {:.1} -> {:.1} MiB, growth {:.1} MiB = {:.2}x the bytes gauge \
         (bound {:.1} MiB)",
        bytes / MIB,
        rss_before / MIB,
        rss_after / MIB,
        growth / MIB,
        growth / bytes,
        bound / MIB,
    );
    assert_eq!(messages, total, "10,000 x min(20, 100)");
    assert!(
        bytes <= total * entry,
        "bytes gauge {bytes} over {}",
        total * entry
    );
    assert_eq!(bytes, total * entry, "payload + 64 per entry, exactly");
    assert!(
        growth <= bound,
        "RSS grew {:.1} MiB, over 3 x history_bytes + 10 MiB = {:.1} MiB",
        growth / MIB,
        bound / MIB
    );
    server.stop().await.expect("server stops");

    // history.size = 5: eviction keeps the gauges at 5 per topic (8 rounds are enough to evict).
    let rounds = 8;
    let server = start(&format!("{config}[history]\nsize = 5\n")).await;
    let addr = server.addr;
    fill(addr, rounds).await;
    let (messages, bytes) = gauges(addr).await;
    println!("history memory, size 5: history_messages {messages}, history_bytes {bytes}");
    assert_eq!(messages, (TOPICS * 5) as f64, "10,000 x min(20, 5)");
    assert_eq!(bytes, (TOPICS * 5) as f64 * entry);
    // Spot check: what is kept is the last 5 of each topic.
    let (status, page) = get_json(addr, "/api/v1/topics/mem.t04242/history").await;
    assert_eq!(status, 200, "{page}");
    let seqs = history_seqs(&page);
    assert_eq!(seqs, vec![4, 5, 6, 7, 8], "{page}");
    assert_eq!(
        page["publications"][4]["data"],
        payload(4242, 7).trim_matches('"')
    );
    assert_eq!(page["complete"], false);
    server.stop().await.expect("server stops");
}
