//! Memory held by topics is given back: rounds of 50,000 new topics each (the issue's flood of
//! `chat.rN_M` topics), each round evicted after `topics.idle_ttl`, leave the process's resident
//! memory where the first round left it instead of growing by a round's worth every time.
//!
//! Its own test binary with a single test, so that no other test's allocations show up in the
//! RSS measurement.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const TOPICS: usize = 50_000;
const ROUNDS: usize = 4;
/// Messages per HTTP batch.
const BATCH: usize = 5_000;

/// Publishes one message to each of `TOPICS` topics new to the server.
async fn flood(addr: SocketAddr, round: usize) {
    for start in (0..TOPICS).step_by(BATCH) {
        let messages: Vec<String> = (start..start + BATCH)
            .map(|i| format!(r#"{{"topic":"chat.r{round}_{i}","data":"hello"}}"#))
            .collect();
        let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
        let r = http_post(addr, "/api/v1/publish", body.as_bytes()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}

/// Waits until the hub holds no topic (the sweep runs every half idle_ttl).
async fn wait_evicted(addr: SocketAddr) {
    eventually("every topic evicted", Duration::from_secs(30), || async move {
        metric_value(addr, "tickwire_topics").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_topics_give_their_memory_back() {
    let config = "[http]\nmax_body_bytes = 16777216\n[topics]\nidle_ttl = \"2s\"\n";
    let server = start(config).await;
    let addr = server.addr;
    let rss_start = rss_bytes() as f64;
    let mut after_round = Vec::new();
    for round in 0..ROUNDS {
        let started = Instant::now();
        flood(addr, round).await;
        let full = rss_bytes() as f64;
        let flooded = started.elapsed();
        // The first of them may already be going (a debug build floods slowly).
        assert!(metric_value(addr, "tickwire_topics").await <= TOPICS as f64);
        wait_evicted(addr).await;
        let (status, body) = get_json(addr, &format!("/api/v1/topics/chat.r{round}_42")).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(metric_value(addr, "tickwire_history_messages").await, 0.0);
        let evicted = rss_bytes() as f64;
        println!(
            "round {round}: {TOPICS} topics in {flooded:?}, evicted after {:?}; RSS {:.1} MiB \
             full, {:.1} MiB after eviction",
            started.elapsed(),
            full / MIB,
            evicted / MIB
        );
        after_round.push(full);
    }
    let evicted_total = metric_value(addr, "tickwire_topics_evicted_total").await;
    assert_eq!(evicted_total, (TOPICS * ROUNDS) as f64);
    // What one round of topics costs, and what the later rounds added on top of it: without
    // eviction every round adds as much as the first (the issue measured ~550 B per topic).
    let first = after_round[0] - rss_start;
    let later = after_round[ROUNDS - 1] - after_round[0];
    println!(
        "RSS growth: first round {:.1} MiB, the {} rounds after it {:.1} MiB more",
        first / MIB,
        ROUNDS - 1,
        later / MIB
    );
    assert!(
        later <= 0.5 * first + 8.0 * MIB,
        "RSS kept growing: {:.1} MiB over {} more rounds (first round: {:.1} MiB)",
        later / MIB,
        ROUNDS - 1,
        first / MIB
    );
    server.stop().await.expect("server stops");
}
