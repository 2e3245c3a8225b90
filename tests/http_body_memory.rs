//! Memory held by stalled request bodies: many connections each sending most of a large body and
//! then stalling hold at most `http.max_inflight_body_bytes`; the others get 503 at once, the
//! holders 408 at `http.body_timeout`.
//!
//! Its own test binary with a single test, so that no other test's allocations show up in the
//! RSS measurement.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 64;
const BODY: usize = 1_048_576;
/// What each client sends of its body before it stalls.
const SENT: usize = 1_048_000;
const BUDGET: usize = 4 * BODY;

/// Sends the head and `SENT` bytes of the body, signals `sent`, then waits for the response
/// and returns its status (None when the connection was reset before one could be read).
async fn stalled_client(
    addr: std::net::SocketAddr,
    body: Arc<Vec<u8>>,
    sent: tokio::sync::mpsc::Sender<()>,
) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!("POST /api/v1/publish HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n");
    let wrote = async {
        s.write_all(head.as_bytes()).await?;
        s.write_all(&body[..SENT]).await
    }
    .await;
    let _ = sent.send(()).await;
    // A refused client may find its connection closed while it writes: it reads what it can.
    let _ = wrote;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_hold_at_most_the_budget() {
    let config = format!(
        "[http]\nmax_body_bytes = {BODY}\nmax_inflight_body_bytes = {BUDGET}\nbody_timeout = \"3s\"\n\
         [queue]\nmax_bytes = {}\n",
        2 * BODY // room for a message as large as the body (tests/queue_bound.rs covers the limit)
    );
    let server = start(&config).await;
    let addr = server.addr;
    // One body for every client, allocated before the first measurement.
    let body = Arc::new(vec![b' '; BODY]);
    assert_eq!(publish_count(addr, "200").await, 0.0);
    let rss_before = rss_bytes() as f64;

    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel(CLIENTS);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(stalled_client(addr, body.clone(), sent_tx.clone())))
        .collect();
    for _ in 0..CLIENTS {
        tokio::time::timeout(Duration::from_secs(20), sent_rx.recv())
            .await
            .expect("every client sends its bytes (or is refused) within 20 s");
    }
    // Let the server take in what is on the wire.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_stalled = rss_bytes() as f64;
    let growth = rss_stalled - rss_before;
    let refused = publish_count(addr, "503").await;
    println!(
        "{CLIENTS} clients x {SENT} B of a {BODY} B body, stalled, budget {:.0} MiB: {refused} refused \
         with 503; RSS {:.1} -> {:.1} MiB, growth {:.1} MiB",
        BUDGET as f64 / MIB,
        rss_before / MIB,
        rss_stalled / MIB,
        growth / MIB,
    );
    let bound = 2.0 * BUDGET as f64 + 8.0 * MIB;
    assert!(
        growth <= bound,
        "RSS grew {:.1} MiB with {CLIENTS} stalled bodies, over 2 x budget + 8 MiB = {:.1} MiB",
        growth / MIB,
        bound / MIB
    );
    let held = (BUDGET / BODY) as f64;
    assert_eq!(refused, CLIENTS as f64 - held, "all but {held} bodies refused");

    let mut statuses = Vec::new();
    for c in clients {
        statuses.push(c.await.expect("client task"));
    }
    let count = |s: u16| statuses.iter().filter(|&&x| x == Some(s)).count();
    assert_eq!(count(408), held as usize, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| matches!(s, None | Some(408 | 503))),
        "{statuses:?}"
    );
    assert_eq!(publish_count(addr, "408").await, held);
    assert_eq!(publish_count(addr, "503").await, CLIENTS as f64 - held);
    // Everything was given back: a full-size body publishes.
    let mut full = br#"{"topic":"m.x","data":""}"#.to_vec();
    full.splice(23..23, std::iter::repeat_n(b'p', BODY - full.len()));
    let r = http_post(addr, "/api/v1/publish", &full).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
}

async fn publish_count(addr: std::net::SocketAddr, status: &str) -> f64 {
    scrape(addr)
        .await
        .get(
            "tickwire_http_requests_total",
            &[("route", "publish"), ("status", status)],
        )
        .unwrap_or(0.0)
}
