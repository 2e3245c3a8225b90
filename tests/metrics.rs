//! `GET /metrics`: the Prometheus exposition follows what the server actually did.
//!
//! Every test has its own server, hence its own registry: gauges are asserted as absolute
//! values, counters as deltas between two scrapes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_is_well_formed_and_every_series_exists_from_start() {
    let server = start("").await;
    let m = scrape(server.addr).await;
    // Counters and gauges that must exist (at 0) before anything happens, so that rate() and
    // alerts work from the first scrape.
    for (name, labels) in [
        ("tickwire_connections", vec![("transport", "ws")]),
        ("tickwire_connections", vec![("transport", "sse")]),
        ("tickwire_connections_accepted_total", vec![("transport", "ws")]),
        ("tickwire_connections_accepted_total", vec![("transport", "sse")]),
        ("tickwire_subscriptions", vec![]),
        ("tickwire_topics", vec![]),
        ("tickwire_topics_evicted_total", vec![]),
        ("tickwire_messages_delivered_total", vec![]),
        ("tickwire_messages_conflated_total", vec![]),
        ("tickwire_bytes_sent_total", vec![]),
        ("tickwire_bytes_received_total", vec![]),
        ("tickwire_delivery_latency_seconds_count", vec![]),
        ("tickwire_outbound_queue_bytes_count", vec![]),
        ("tickwire_messages_published_total", vec![("source", "http")]),
        ("tickwire_messages_published_total", vec![("source", "client")]),
        ("tickwire_messages_published_total", vec![("source", "feed")]),
        ("tickwire_connections_rejected_total", vec![("reason", "limit")]),
        (
            "tickwire_connections_rejected_total",
            vec![("reason", "handshake_timeout")],
        ),
        (
            "tickwire_connections_rejected_total",
            vec![("reason", "bad_handshake")],
        ),
        ("tickwire_connections_rejected_total", vec![("reason", "auth")]),
        ("tickwire_connections_rejected_total", vec![("reason", "origin")]),
        (
            "tickwire_connections_rejected_total",
            vec![("reason", "ip_limit")],
        ),
        ("tickwire_connections_rejected_total", vec![("reason", "tls")]),
        (
            "tickwire_connections_rejected_total",
            vec![("reason", "proxy_protocol")],
        ),
        ("tickwire_disconnects_total", vec![("reason", "client_close")]),
        ("tickwire_disconnects_total", vec![("reason", "slow_consumer")]),
        ("tickwire_disconnects_total", vec![("reason", "too_many_topics")]),
        ("tickwire_disconnects_total", vec![("reason", "idle_timeout")]),
        ("tickwire_disconnects_total", vec![("reason", "shutdown")]),
        ("tickwire_disconnects_total", vec![("reason", "rate_limit")]),
        ("tickwire_disconnects_total", vec![("reason", "token_expired")]),
        ("tickwire_disconnects_total", vec![("reason", "protocol_error")]),
        ("tickwire_disconnects_total", vec![("reason", "error")]),
    ] {
        assert_eq!(
            m.get(name, &labels),
            Some(0.0),
            "{name}{labels:?} must be exported as 0 on a fresh server"
        );
    }
    for (name, ty) in [
        ("tickwire_connections", "gauge"),
        ("tickwire_subscriptions", "gauge"),
        ("tickwire_topics", "gauge"),
        ("tickwire_topics_evicted_total", "counter"),
        ("tickwire_messages_delivered_total", "counter"),
        ("tickwire_delivery_latency_seconds", "histogram"),
        ("tickwire_outbound_queue_bytes", "histogram"),
    ] {
        assert_eq!(
            m.types.get(name).map(String::as_str),
            Some(ty),
            "# TYPE of {name}"
        );
    }
    // Process metrics (Linux process collector).
    let rss = m.value("process_resident_memory_bytes", &[]);
    assert!(rss > 1e6, "process_resident_memory_bytes = {rss}");
    let fds = m.value("process_open_fds", &[]);
    assert!(fds >= 3.0, "process_open_fds = {fds}");
    assert!(m.value("process_max_fds", &[]) >= fds);
    assert!(m.value("process_start_time_seconds", &[]) > 1.6e9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_gauges_follow_traffic() {
    let server = start("").await;
    let addr = server.addr;
    let m0 = scrape(addr).await;
    let delta =
        |m: &Scrape, name: &str, labels: &[(&str, &str)]| m.value(name, labels) - m0.value(name, labels);

    // Two connections: A subscribes to one exact topic, B to a pattern and an exact topic.
    let mut a = connect(addr).await;
    subscribe(&mut a, 1, &["prices.A"]).await;
    let mut b = connect(addr).await;
    subscribe(&mut b, 1, &["prices.*", "chat.x"]).await;

    let m1 = scrape(addr).await;
    assert_eq!(m1.value("tickwire_connections", &[]), 2.0, "open connections");
    let ws = [("transport", "ws")];
    assert_eq!(
        m1.value("tickwire_connections", &ws),
        2.0,
        "all of them WebSocket"
    );
    assert_eq!(delta(&m1, "tickwire_connections_accepted_total", &ws), 2.0);
    assert_eq!(
        m1.value("tickwire_subscriptions", &[]),
        3.0,
        "1 + 2 subscriptions"
    );
    // Exact subscriptions create their topic; patterns do not.
    assert_eq!(m1.value("tickwire_topics", &[]), 2.0, "prices.A and chat.x");
    assert!(
        delta(&m1, "tickwire_bytes_received_total", &[]) > 0.0,
        "subscribe requests were received"
    );
    assert_eq!(
        m1.value(
            "tickwire_http_requests_total",
            &[("route", "ws"), ("status", "101")]
        ),
        2.0,
        "WebSocket upgrades count as route=ws status=101"
    );

    // Three HTTP publications, each delivered to both A (exact) and B (pattern).
    const N: u64 = 3;
    for i in 1..=N {
        assert_eq!(publish(addr, "prices.A", json!({"i": i})).await, i);
    }
    for ws in [&mut a, &mut b] {
        for i in 1..=N {
            let u = recv_json(ws).await;
            assert_eq!(assert_update(&u, "prices.A"), i);
        }
    }
    // Deliveries are counted right after the socket write: wait for the last write's counts.
    // 2 subscribe replies + 2 × N updates (each well over 40 bytes) were written.
    let m2 = wait_scrape(addr, "the deliveries counted", |m| {
        delta(m, "tickwire_messages_delivered_total", &[]) >= (2 * N + 2) as f64
            && delta(m, "tickwire_bytes_sent_total", &[]) >= 2.0 * N as f64 * 40.0
    })
    .await;
    assert_eq!(
        delta(&m2, "tickwire_messages_published_total", &[("source", "http")]),
        N as f64,
        "published{{source=http}} grows by exactly the number published"
    );
    assert_eq!(
        delta(&m2, "tickwire_messages_published_total", &[("source", "client")]),
        0.0
    );
    assert_eq!(
        m2.value(
            "tickwire_http_requests_total",
            &[("route", "publish"), ("status", "200")]
        ),
        N as f64,
        "http_requests_total{{route=publish,status=200}}"
    );
    let sent = delta(&m2, "tickwire_bytes_sent_total", &[]);
    assert!(
        sent > delta(&m1, "tickwire_bytes_sent_total", &[]),
        "bytes_sent grew by only {sent}"
    );
    let latency = delta(&m2, "tickwire_delivery_latency_seconds_count", &[]);
    assert!(latency >= 1.0, "delivery latency observations grew by {latency}");
    assert!(m2.value("tickwire_delivery_latency_seconds_sum", &[]) >= 0.0);
    let inf = m2.value("tickwire_delivery_latency_seconds_bucket", &[("le", "+Inf")]);
    assert_eq!(
        inf,
        m2.value("tickwire_delivery_latency_seconds_count", &[]),
        "+Inf bucket == count"
    );
    assert_eq!(m2.value("tickwire_topics", &[]), 2.0);

    // A client publication counts as source=client and creates its topic.
    let r = request(
        &mut b,
        json!({"op": "publish", "id": 7, "topic": "chat.room", "data": 1}),
    )
    .await;
    assert_eq!(r["type"], "published", "{r}");
    let m3 = scrape(addr).await;
    assert_eq!(
        delta(&m3, "tickwire_messages_published_total", &[("source", "client")]),
        1.0
    );
    assert_eq!(
        delta(&m3, "tickwire_messages_published_total", &[("source", "http")]),
        N as f64
    );
    assert_eq!(m3.value("tickwire_topics", &[]), 3.0, "chat.room added");
    assert!(m3.value("tickwire_bytes_received_total", &[]) > m1.value("tickwire_bytes_received_total", &[]));

    // Unsubscribing drops the subscription, and the idle topic (no subscriber, no value).
    unsubscribe(&mut b, 2, &["chat.x"]).await;
    let m4 = scrape(addr).await;
    assert_eq!(m4.value("tickwire_subscriptions", &[]), 2.0);
    assert_eq!(m4.value("tickwire_topics", &[]), 2.0, "chat.x removed");

    // A closes: connections and subscriptions drop, client_close is counted.
    close_gracefully(a).await;
    wait_metric(addr, "tickwire_connections", &[], "1", |v| v == 1.0).await;
    wait_metric(addr, "tickwire_subscriptions", &[], "1", |v| v == 1.0).await;
    wait_metric(
        addr,
        "tickwire_disconnects_total",
        &[("reason", "client_close")],
        "1",
        |v| v == 1.0,
    )
    .await;

    // B just drops its TCP connection (no close frame): still a client-side close.
    drop(b);
    wait_metric(addr, "tickwire_connections", &[], "0", |v| v == 0.0).await;
    wait_metric(addr, "tickwire_subscriptions", &[], "0", |v| v == 0.0).await;
    wait_metric(
        addr,
        "tickwire_disconnects_total",
        &[("reason", "client_close")],
        "2",
        |v| v == 2.0,
    )
    .await;
    let m5 = scrape(addr).await;
    assert_eq!(delta(&m5, "tickwire_connections_accepted_total", &[]), 2.0);
    for reason in [
        "slow_consumer",
        "idle_timeout",
        "shutdown",
        "rate_limit",
        "protocol_error",
    ] {
        assert_eq!(
            m5.value("tickwire_disconnects_total", &[("reason", reason)]),
            0.0,
            "no {reason} disconnect happened"
        );
    }
    // prices.A and chat.room keep their last value.
    assert_eq!(m5.value("tickwire_topics", &[]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_http_requests_are_counted_by_status() {
    let server = start("").await;
    let addr = server.addr;
    let (status, _) = post_json(addr, "/api/v1/publish", &json!({"topic": "a..b", "data": 1})).await;
    assert_eq!(status, 400);
    let r = http_get(addr, "/nope").await;
    assert_eq!(r.status, 404);
    let r = http_get(addr, "/ws").await; // not an upgrade
    assert_eq!(r.status, 426);
    let m = scrape(addr).await;
    assert_eq!(
        m.value(
            "tickwire_http_requests_total",
            &[("route", "publish"), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "tickwire_http_requests_total",
            &[("route", "publish"), ("status", "200")]
        ),
        None,
        "no successful publish happened"
    );
    assert_eq!(
        m.value(
            "tickwire_http_requests_total",
            &[("route", "not_found"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "tickwire_connections_rejected_total",
            &[("reason", "bad_handshake")]
        ),
        1.0
    );
    assert_eq!(
        m.value("tickwire_messages_published_total", &[("source", "http")]),
        0.0,
        "a rejected publish is not counted"
    );
    let count = m.value(
        "tickwire_http_request_duration_seconds_count",
        &[("route", "publish")],
    );
    assert_eq!(count, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_on_conflated_topic_counts_conflations() {
    let server = start("[http]\nmax_body_bytes = 4194304\n").await;
    let addr = server.addr;
    let mut slow = connect_small_rcvbuf(addr, 4096).await;
    subscribe(&mut slow, 1, &["prices.STALL"]).await; // default policy: conflate

    let before = scrape(addr).await.value("tickwire_messages_conflated_total", &[]);
    assert_eq!(before, 0.0);
    let pad = "s".repeat(2048);
    let mut published = 0u64;
    let mut conflated = 0.0;
    // ~1 MiB per batch; kernel buffers absorb a few MiB at most before the writer stalls.
    for _ in 0..40 {
        let msgs: Vec<(&str, Value)> = (0..500)
            .map(|k| ("prices.STALL", json!({"i": published + k + 1, "pad": pad})))
            .collect();
        publish_batch(addr, &msgs).await;
        published += 500;
        conflated = scrape(addr).await.value("tickwire_messages_conflated_total", &[]);
        if conflated > 0.0 {
            break;
        }
    }
    eprintln!("conflated {conflated} after {published} publications");
    assert!(
        conflated > 0.0,
        "a client that does not read was sent {published} updates of 2 KiB on a conflated topic, \
         yet tickwire_messages_conflated_total stayed 0"
    );
    // The conflated client is still connected and ends at the latest value.
    let mut last = 0;
    while last < published {
        last = assert_update(
            &recv_json_within(&mut slow, Duration::from_secs(10)).await,
            "prices.STALL",
        );
    }
    assert_eq!(last, published);
    assert_eq!(
        scrape(addr)
            .await
            .value("tickwire_disconnects_total", &[("reason", "slow_consumer")]),
        0.0,
        "conflation never disconnects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_counts_slow_consumer_disconnect() {
    let server = start(
        "[server]\nmax_message_bytes = 32768\n[queue]\nmax_bytes = 65536\n[http]\nmax_body_bytes = 4194304\n",
    )
    .await;
    let addr = server.addr;
    let mut slow = connect_small_rcvbuf(addr, 4096).await;
    subscribe(&mut slow, 1, &["chat.slow"]).await; // default policy: queue

    let pad = "q".repeat(4096);
    let mut published = 0u64;
    for _ in 0..40 {
        let msgs: Vec<(&str, Value)> = (0..100)
            .map(|k| ("chat.slow", json!({"i": published + k + 1, "pad": pad})))
            .collect();
        publish_batch(addr, &msgs).await;
        published += 100;
        if topic_listing(addr, "chat.slow").await.unwrap()["subscribers"] == 0 {
            break;
        }
    }
    // Read what was flushed before the close, so the server's writer can finish promptly.
    let (_, (code, _)) = recv_close_within(&mut slow, Duration::from_secs(20)).await;
    assert_eq!(code, 4008);
    drop(slow);
    wait_metric(
        addr,
        "tickwire_disconnects_total",
        &[("reason", "slow_consumer")],
        "1",
        |v| v == 1.0,
    )
    .await;
    wait_metric(addr, "tickwire_connections", &[], "0", |v| v == 0.0).await;
    let m = scrape(addr).await;
    assert_eq!(m.value("tickwire_subscriptions", &[]), 0.0);
    assert_eq!(
        m.value("tickwire_disconnects_total", &[("reason", "client_close")]),
        0.0
    );
    assert!(
        m.value("tickwire_outbound_queue_bytes_count", &[]) >= 1.0,
        "queue size histogram sampled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upgrade_is_rejected_not_accepted() {
    let server = start("").await;
    let addr = server.addr;
    // Upgrade/Connection headers present (so it is an upgrade request), key missing / version
    // wrong: the handshake fails with 400.
    for extra in [
        vec![],
        vec![
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "8"),
        ],
    ] {
        let mut headers = vec![("Upgrade", "websocket"), ("Connection", "Upgrade")];
        headers.extend(extra);
        let r = http_request(addr, "GET", "/ws", &headers, None).await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(&r.body));
    }
    let m = scrape(addr).await;
    assert_eq!(
        m.value(
            "tickwire_connections_rejected_total",
            &[("reason", "bad_handshake")]
        ),
        2.0
    );
    assert_eq!(m.value("tickwire_connections", &[]), 0.0);
    assert_eq!(
        m.value("tickwire_connections_accepted_total", &[]),
        0.0,
        "no WebSocket connection was accepted"
    );
}
