//! Conflation for a client that stops reading. Alone in its own test binary so that the process
//! RSS measurement is not disturbed by other tests running in parallel.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const TOTAL: u64 = 10_000;
const BATCH: u64 = 500;
const PAD: usize = 2048;

fn batch(topic: &'static str, first: u64, pad: &str) -> Vec<(&'static str, Value)> {
    (first..first + BATCH)
        .map(|i| (topic, json!({"i": i, "pad": pad})))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_gets_conflated_latest_value_without_memory_growth() {
    let server = start("[http]\nmax_body_bytes = 4194304\n").await;
    let addr = server.addr;
    let pad = "c".repeat(PAD);

    // Warm up the allocator with the same kind of traffic, so the RSS baseline is fair.
    let mut warm = connect(addr).await;
    subscribe(&mut warm, 1, &["warm.up"]).await;
    for round in 0..2 {
        let seqs = publish_batch(addr, &batch("warm.up", round * BATCH + 1, &pad)).await;
        let last = *seqs.last().unwrap();
        // Not read while publishing, so it may be conflated: read up to the last one.
        while assert_update(&recv_json(&mut warm).await, "warm.up") < last {}
    }
    drop(warm);

    // The stalled client: tiny TCP receive window, subscribes, then stops reading.
    let mut slow = connect_small_rcvbuf(addr, 4096).await;
    subscribe(&mut slow, 1, &["prices.SLOW"]).await;

    let rss_before = rss_bytes();
    let mut published = 0;
    while published < TOTAL {
        let seqs = publish_batch(addr, &batch("prices.SLOW", published + 1, &pad)).await;
        assert_eq!(seqs.first(), Some(&(published + 1)));
        published += BATCH;
        assert_eq!(seqs.last(), Some(&published));
    }
    let rss_after = rss_bytes();
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!("RSS growth while publishing: {} KiB", growth >> 10);
    // The backlog is ~20 MiB (10,000 x 2 KiB); a conflated outbox holds one update per topic.
    assert!(
        growth < 10 << 20,
        "RSS grew by {} KiB while a stalled client was sent ~20 MiB ({} -> {} KiB)",
        growth >> 10,
        rss_before >> 10,
        rss_after >> 10
    );

    // Read again: strictly increasing seqs, ending with the latest value.
    let mut seqs = vec![];
    loop {
        let u = recv_json_within(&mut slow, Duration::from_secs(10)).await;
        let seq = assert_update(&u, "prices.SLOW");
        assert_eq!(
            u["data"]["i"], seq,
            "data does not belong to its seq: {}",
            u["seq"]
        );
        if let Some(&prev) = seqs.last() {
            assert!(seq > prev, "seq went from {prev} to {seq}");
        }
        seqs.push(seq);
        if seq == TOTAL {
            assert_eq!(u["data"], json!({"i": TOTAL, "pad": pad}), "final data");
            break;
        }
    }
    eprintln!("stalled client received {} of {TOTAL} updates", seqs.len());
    assert!(
        seqs.len() < (TOTAL / 2) as usize,
        "a stalled client received {} of {TOTAL} updates: not conflated",
        seqs.len()
    );
    expect_silence(&mut slow, SILENCE).await;

    // It is live again and no longer behind: the next publication arrives as is.
    assert_eq!(publish(addr, "prices.SLOW", json!("after")).await, TOTAL + 1);
    let u = recv_json(&mut slow).await;
    assert_eq!(assert_update(&u, "prices.SLOW"), TOTAL + 1);
    assert_eq!(u["data"], "after");
}
