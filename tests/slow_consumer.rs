//! A client that falls behind on a `queue`-policy topic is disconnected with 4008.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PAD: usize = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_closes_4008_slow_consumer() {
    // Default policies map chat.> to "queue"; keep the bound small.
    let server = start("[queue]\nmax_bytes = 262144\n").await;
    let addr = server.addr;

    // A client that stops reading, with a tiny TCP receive window.
    let mut slow = connect_small_rcvbuf(addr, 4096).await;
    subscribe(&mut slow, 1, &["chat.slow"]).await;

    // A healthy client on the same topic that reads everything after each batch.
    let mut fast = connect(addr).await;
    subscribe(&mut fast, 1, &["chat.slow"]).await;

    // Publish batches of ~80 KiB (well under the 256 KiB bound, so the healthy client never
    // overflows) until the slow client is dropped from the topic, or a cap far beyond what
    // kernel buffers plus the bound can absorb.
    let pad = "q".repeat(PAD);
    let mut published = 0u64;
    let mut dropped = false;
    for _batch in 0..400 {
        let msgs: Vec<(&str, Value)> = (0..20)
            .map(|k| ("chat.slow", json!({"i": published + k + 1, "pad": pad})))
            .collect();
        let seqs = publish_batch(addr, &msgs).await;
        assert_eq!(*seqs.last().unwrap(), published + 20);
        for seq in published + 1..=published + 20 {
            let u = recv_json(&mut fast).await;
            assert_eq!(
                assert_update(&u, "chat.slow"),
                seq,
                "healthy client: every message in order"
            );
            assert_eq!(u["data"]["i"], seq);
        }
        published += 20;
        let entry = topic_listing(addr, "chat.slow").await.expect("listed");
        if entry["subscribers"] == 1 {
            dropped = true;
            break;
        }
    }

    // The slow client reads again: every message it gets is in order and gap-free, then the
    // close frame 4008 "slow consumer".
    let (msgs, (code, reason)) = recv_close_within(&mut slow, Duration::from_secs(20)).await;
    eprintln!(
        "published {published}, slow client dropped from the topic: {dropped}, it read {} before the close",
        msgs.len()
    );
    assert_eq!(
        code, 4008,
        "slow queue consumer must be closed with 4008 (got reason {reason:?})"
    );
    assert_eq!(reason, "slow consumer");
    for (k, m) in msgs.iter().enumerate() {
        let seq = assert_update(m, "chat.slow");
        assert_eq!(seq, k as u64 + 1, "queue policy: no gaps before the close");
        assert_eq!(m["data"]["i"], seq);
    }
    assert!(
        (msgs.len() as u64) < published,
        "the slow client received all {published} messages, yet was closed"
    );

    // Once disconnected it is no longer a subscriber.
    if !dropped {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        while topic_listing(addr, "chat.slow").await.unwrap()["subscribers"] != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "slow client still subscribed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // The healthy client was not affected.
    assert_usable(&mut fast, 99).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_policy_from_config_applies_to_other_patterns() {
    // Make `orders.>` a queue topic; chat.> is no longer listed so it conflates.
    let server =
        start("[server]\nmax_message_bytes = 32768\n[queue]\nmax_bytes = 65536\npolicies = [{ pattern = \"orders.>\", policy = \"queue\" }]\n")
            .await;
    let addr = server.addr;
    let mut slow = connect_small_rcvbuf(addr, 4096).await;
    subscribe(&mut slow, 1, &["orders.x"]).await;

    let pad = "o".repeat(PAD);
    let mut published = 0u64;
    for _ in 0..40 {
        let msgs: Vec<(&str, Value)> = (0..100)
            .map(|k| ("orders.x", json!({"i": published + k + 1, "pad": pad})))
            .collect();
        publish_batch(addr, &msgs).await;
        published += 100;
        if topic_listing(addr, "orders.x").await.unwrap()["subscribers"] == 0 {
            break;
        }
    }
    let (msgs, (code, reason)) = recv_close_within(&mut slow, Duration::from_secs(20)).await;
    assert_eq!((code, reason.as_str()), (4008, "slow consumer"));
    for (k, m) in msgs.iter().enumerate() {
        assert_eq!(assert_update(m, "orders.x"), k as u64 + 1);
    }
}
