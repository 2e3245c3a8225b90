//! Everything a connection is owed counts against its bound: a client that never reads and
//! subscribes and unsubscribes in a loop cannot grow the server's memory through the replies
//! and snapshots of its subscriptions, on `conflate` or on `queue` topics, and is closed as a
//! slow consumer (4008).
//!
//! Its own test binary with a single test, so that no other test's allocations show up in the
//! RSS measurement.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Topics matched by the pattern, and the size of each one's last value.
const TOPICS: usize = 100;
const VALUE: usize = 50_000;
const CYCLES: usize = 120;

/// Subscribes to `topics` and unsubscribes again, `CYCLES` times, without ever reading, until
/// the server stops taking requests; returns the cycles sent.
async fn churn(ws: &mut Ws, topics: &[&str]) -> usize {
    for cycle in 0..CYCLES {
        let id = 2 * cycle as i64;
        for req in [
            json!({"op": "subscribe", "id": id, "topics": topics}),
            json!({"op": "unsubscribe", "id": id + 1, "topics": topics}),
        ] {
            let sent = tokio::time::timeout(Duration::from_secs(2), async {
                use futures_util::SinkExt;
                ws.send(tokio_tungstenite::tungstenite::Message::text(req.to_string()))
                    .await
            });
            match sent.await {
                Ok(Ok(())) => {}
                // The server stopped reading (backpressure) or closed us: both end the churn.
                _ => return cycle,
            }
        }
    }
    CYCLES
}

async fn slow_consumers(addr: std::net::SocketAddr) -> f64 {
    metric_value(addr, "tickwire_disconnects_total{reason=\"slow_consumer\"}").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_snapshots_and_replies_stay_within_the_queue_bound() {
    // queue.max_bytes stays at its default (1 MiB); a short idle timeout makes a client that
    // reads nothing a slow consumer after half of it.
    let server = start(
        "[server]\nping_interval = \"500ms\"\nidle_timeout = \"3s\"\n\
         [http]\nmax_body_bytes = 8388608\n",
    )
    .await;
    let addr = server.addr;
    let value = json!("v".repeat(VALUE - 2));
    let big: Vec<(String, serde_json::Value)> = (0..TOPICS)
        .map(|i| (format!("big.t{i:03}"), value.clone()))
        .collect();
    let batch: Vec<(&str, serde_json::Value)> = big.iter().map(|(t, v)| (t.as_str(), v.clone())).collect();
    publish_batch(addr, &batch).await;
    publish(addr, "chat.big", value.clone()).await;

    // Warm up what every connection and request allocates once, then measure.
    let mut warm = connect(addr).await;
    subscribe(&mut warm, 1, &["big.>", "chat.big"]).await;
    recv_until_silence(&mut warm, Duration::from_millis(300)).await;
    drop(warm);
    let before = rss_bytes() as f64;

    for (n, topics) in [["big.>"], ["chat.big"]].iter().enumerate() {
        let mut slow = connect_small_rcvbuf(addr, 4096).await;
        let cycles = churn(&mut slow, topics).await;
        // The server closes it as a slow consumer within half the idle timeout.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while slow_consumers(addr).await < (n + 1) as f64 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{topics:?}: a client that never reads was not closed as a slow consumer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let grown = (rss_bytes() as f64 - before) / MIB;
        eprintln!("{topics:?}: {cycles} cycles sent, RSS grew {grown:.1} MiB");
        // Unbounded, each cycle queued ~5 MB (100 snapshots of 50 KB) on `big.>`, ~50 KB on
        // `chat.big`: hundreds of MiB in all.
        assert!(grown < 20.0, "{topics:?}: RSS grew {grown:.1} MiB");
        drop(slow);
    }
    server.stop().await.unwrap();
}
