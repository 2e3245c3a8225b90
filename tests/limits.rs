//! `server.max_connections` and the 4029 close of a client abusing the rate limit.
//! (`max_subscriptions_per_connection` is covered in errors.rs.)

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn try_upgrade(addr: std::net::SocketAddr) -> HttpResponse {
    http_request(
        addr,
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_with_503_then_frees_the_place() {
    let server = start("[server]\nmax_connections = 3\n").await;
    let addr = server.addr;
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut ws = connect(addr).await;
        assert_usable(&mut ws, i).await;
        clients.push(ws);
    }

    // The 4th upgrade (twice): 503 with the error shape; no session starts.
    for attempt in 1..=2 {
        let r = try_upgrade(addr).await;
        assert_eq!(
            r.status,
            503,
            "upgrade beyond max_connections: {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let body = r.json();
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        let m = scrape(addr).await;
        assert_eq!(
            m.value("tickwire_connections_rejected_total", &[("reason", "limit")]),
            attempt as f64
        );
        assert_eq!(m.value("tickwire_connections", &[]), 3.0);
        assert_eq!(m.value("tickwire_connections_accepted_total", &[]), 3.0);
    }
    // HTTP routes are not connections: still served at the limit.
    assert_eq!(http_get(addr, "/healthz").await.status, 200);
    assert_eq!(publish(addr, "lim.x", json!(1)).await, 1);

    // The existing clients are unaffected.
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_usable(ws, 10 + i as i64).await;
    }

    // One client leaves; its place is given to the next one.
    close_gracefully(clients.pop().unwrap()).await;
    wait_metric(addr, "tickwire_connections", &[], "2", |v| v == 2.0).await;
    let mut ws = connect(addr).await;
    assert_usable(&mut ws, 20).await;
    let m = scrape(addr).await;
    assert_eq!(m.value("tickwire_connections", &[]), 3.0);
    assert_eq!(m.value("tickwire_connections_accepted_total", &[]), 4.0);
    // ...and the limit still holds.
    assert_eq!(try_upgrade(addr).await.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_abuse_is_closed_4029() {
    let server = start("[server]\nrequests_per_second = 1.0\nrequest_burst = 2\n").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    // A well-behaved neighbour, to show the close is per connection.
    let mut other = connect(addr).await;

    // 2 within the burst, then 10 × burst = 20 refusals are tolerated; the 21st refusal in a
    // row closes. Send a few more than that, all at once (pipelined).
    const SENT: i64 = 30;
    for id in 1..=SENT {
        send_json(&mut ws, json!({"op": "ping", "id": id})).await;
    }
    let (msgs, (code, reason)) = recv_close_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(
        (code, reason.as_str()),
        (4029, "rate limit exceeded"),
        "after {} replies",
        msgs.len()
    );
    let pongs = msgs.iter().filter(|m| m["type"] == "pong").count();
    let limited: Vec<_> = msgs.iter().filter(|m| m["code"] == "rate_limited").collect();
    assert_eq!(
        pongs + limited.len(),
        msgs.len(),
        "only pongs and rate_limited errors expected: {msgs:?}"
    );
    assert!(pongs >= 2, "the burst of 2 is served: {pongs} pongs");
    assert!(
        limited.len() >= 20,
        "20 refusals are answered before the close, got {}",
        limited.len()
    );
    assert!(
        (msgs.len() as i64) < SENT,
        "all {SENT} requests were answered, yet the connection was closed for abuse"
    );
    eprintln!("{pongs} pongs, {} rate_limited, then 4029", limited.len());
    drop(ws);
    wait_metric(
        addr,
        "tickwire_disconnects_total",
        &[("reason", "rate_limit")],
        "1",
        |v| v == 1.0,
    )
    .await;
    assert_usable(&mut other, 1).await;
    let m = scrape(addr).await;
    assert_eq!(m.value("tickwire_connections", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_client_that_backs_off_is_not_closed() {
    // 15 refusals in a row (< 10 × burst = 20), a pause to earn a token, repeat: the refused
    // streak resets each time, so the connection stays open.
    let server = start("[server]\nrequests_per_second = 20.0\nrequest_burst = 2\n").await;
    let mut ws = connect(server.addr).await;
    let mut id = 0;
    for _round in 0..3 {
        for _ in 0..17 {
            id += 1;
            send_json(&mut ws, json!({"op": "ping", "id": id})).await;
        }
        for _ in 0..17 {
            recv_json(&mut ws).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_usable(&mut ws, 1000).await;
    assert_eq!(
        scrape(server.addr)
            .await
            .value("tickwire_disconnects_total", &[("reason", "rate_limit")]),
        0.0
    );
}
