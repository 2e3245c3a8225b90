//! `GET /sse`: Server-Sent Events, read through a real HTTP client (hyper's) and an SSE parser
//! no one here wrote (`eventsource-stream`). Snapshot then updates, recovery with
//! `Last-Event-ID` (also under a fast publisher), a corrupted id, JWT auth and ACL, the close
//! events (token expiry, slow consumer, drain), pings, CORS, connection limits, and 1,000
//! streams at once.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpSocket;

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<hyper::Error>>> + Send>>;

/// A `GET` over a fresh connection from `from` (127.0.0.1 when `None`), with `headers`.
async fn get_from(
    addr: SocketAddr,
    from: Option<Ipv4Addr>,
    target: &str,
    headers: &[(&str, &str)],
) -> hyper::Response<Incoming> {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(ip) = from {
        socket
            .bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .expect("bind a loopback source address");
    }
    let stream = tokio::time::timeout(RECV_TIMEOUT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let mut req = Request::get(target).header("host", addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Empty::<Bytes>::new()).expect("request");
    tokio::time::timeout(RECV_TIMEOUT, sender.send_request(req))
        .await
        .expect("response head timed out")
        .expect("response")
}

async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> hyper::Response<Incoming> {
    get_from(addr, None, target, headers).await
}

/// The events of a response that must be a stream.
#[track_caller]
fn events(resp: hyper::Response<Incoming>) -> Events {
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    Box::pin(resp.into_body().into_data_stream().eventsource())
}

/// Opens `/sse?{query}` and returns its events.
async fn open(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Events {
    events(get(addr, &format!("/sse?{query}"), headers).await)
}

/// The next event; panics when the stream ends or nothing comes within `RECV_TIMEOUT`.
async fn next(events: &mut Events) -> Event {
    match tokio::time::timeout(RECV_TIMEOUT, events.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("stream failed: {e}"),
        Ok(None) => panic!("stream ended"),
        Err(_) => panic!("no event within {RECV_TIMEOUT:?}"),
    }
}

/// The event's data, parsed.
fn data(event: &Event) -> Value {
    serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("data of {event:?}: {e}"))
}

/// Reads the `subscribed` event, checks it, and returns its data.
async fn subscribed(events: &mut Events) -> Value {
    let event = next(events).await;
    assert_eq!(event.event, "subscribed", "{event:?}");
    assert_eq!(event.id, "", "no id on subscribed: {event:?}");
    let v = data(&event);
    assert_eq!(v["type"], "subscribed");
    v
}

/// Reads an `update` or `snapshot` event of `topic`: its seq, data and id.
#[track_caller]
fn delivery(event: &Event, kind: &str, topic: &str) -> (u64, Value, String) {
    assert_eq!(event.event, kind, "{event:?}");
    assert!(!event.id.is_empty(), "every {kind} carries an id: {event:?}");
    let v = data(event);
    assert_eq!(v["type"], kind, "data is the WebSocket frame: {v}");
    assert_eq!(v["topic"], topic, "{v}");
    assert!(v["ts"].is_u64(), "{v}");
    (
        v["seq"].as_u64().expect("seq"),
        v["data"].clone(),
        event.id.clone(),
    )
}

/// Reads events to the end of the stream (at most `RECV_TIMEOUT` between two).
async fn until_end(events: &mut Events) -> Vec<Event> {
    let mut all = Vec::new();
    loop {
        match tokio::time::timeout(RECV_TIMEOUT, events.next()).await {
            Ok(Some(Ok(event))) => all.push(event),
            Ok(Some(Err(e))) => panic!("stream failed after {} events: {e}", all.len()),
            Ok(None) => return all,
            Err(_) => panic!("the stream did not end; {} events read", all.len()),
        }
    }
}

/// The `close` event's `{code, reason}`.
#[track_caller]
fn close_of(event: &Event) -> (u64, String) {
    assert_eq!(event.event, "close", "{event:?}");
    let v = data(event);
    (v["code"].as_u64().unwrap(), v["reason"].as_str().unwrap().into())
}

async fn body_json(resp: hyper::Response<Incoming>) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn snapshot_then_updates_with_ids() {
    let server = start("").await;
    let addr = server.addr;
    for i in 1..=3 {
        publish(addr, "prices.BTC-USD", json!({"p": i})).await;
    }
    let resp = get(addr, "/sse?topics=prices.BTC-USD", &[]).await;
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    let mut ev = events(resp);
    let reply = subscribed(&mut ev).await;
    assert_eq!(reply["topics"], json!(["prices.BTC-USD"]));
    assert_eq!(reply["positions"]["prices.BTC-USD"]["seq"], 3);
    assert!(reply.get("recovered").is_none(), "a new stream: {reply}");
    let (seq, value, first_id) = delivery(&next(&mut ev).await, "snapshot", "prices.BTC-USD");
    assert_eq!((seq, value), (3, json!({"p": 3})));
    assert!(
        first_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "URL-safe: {first_id}"
    );
    publish(addr, "prices.BTC-USD", json!({"p": 4})).await;
    publish(addr, "prices.BTC-USD", json!({"p": 5})).await;
    let mut ids = vec![first_id];
    for want in 4..=5 {
        let (seq, value, id) = delivery(&next(&mut ev).await, "update", "prices.BTC-USD");
        assert_eq!((seq, value), (want, json!({"p": want})));
        ids.push(id);
    }
    assert!(
        ids.windows(2).all(|w| w[0] != w[1]),
        "each id says where the stream is: {ids:?}"
    );
    assert!(ids.iter().all(|id| id.len() < 40), "compact: {ids:?}");

    // Patterns too, and a topic they match that appears later gets an id of its own.
    let mut ev = open(addr, "topics=chat.%3E", &[]).await;
    subscribed(&mut ev).await;
    publish(addr, "chat.room1", json!({"text": "hi"})).await;
    let (seq, value, _) = delivery(&next(&mut ev).await, "update", "chat.room1");
    assert_eq!((seq, value), (1, json!({"text": "hi"})));
}

/// Publishes `count` messages `{"i": n}` to `topic` in one batch; returns their seqs.
async fn publish_n(addr: SocketAddr, topic: &str, from: u64, count: u64) -> Vec<u64> {
    let msgs: Vec<(&str, Value)> = (from..from + count).map(|i| (topic, json!({"i": i}))).collect();
    publish_batch(addr, &msgs).await
}

#[tokio::test]
async fn reconnect_with_last_event_id_gets_exactly_what_was_missed() {
    let server = start("").await;
    let addr = server.addr;
    publish_n(addr, "orders.1", 1, 5).await;
    let mut ev = open(addr, "topics=orders.1,orders.2", &[]).await;
    subscribed(&mut ev).await;
    let (seq, _, _) = delivery(&next(&mut ev).await, "snapshot", "orders.1");
    assert_eq!(seq, 5);
    publish_n(addr, "orders.1", 6, 2).await;
    let mut last = String::new();
    for want in 6..=7 {
        let (seq, _, id) = delivery(&next(&mut ev).await, "update", "orders.1");
        assert_eq!(seq, want);
        last = id;
    }
    drop(ev);

    // 50 publications while away.
    assert_eq!(
        publish_n(addr, "orders.1", 8, 50).await,
        (8..58).collect::<Vec<_>>()
    );
    let mut ev = open(addr, "topics=orders.1,orders.2", &[("last-event-id", &last)]).await;
    let reply = subscribed(&mut ev).await;
    assert_eq!(reply["recovered"]["orders.1"], true, "{reply}");
    assert_eq!(
        reply["recovered"]["orders.2"], false,
        "a topic the id does not carry starts again: {reply}"
    );
    for want in 8..58 {
        let (seq, value, id) = delivery(&next(&mut ev).await, "update", "orders.1");
        assert_eq!((seq, value), (want, json!({"i": want})));
        last = id;
    }
    publish_n(addr, "orders.1", 58, 1).await;
    let (seq, _, id) = delivery(&next(&mut ev).await, "update", "orders.1");
    assert_eq!(seq, 58, "then live, no gap, no duplicate");
    drop(ev);

    // `?last_event_id=` for clients that cannot send the header (curl); the header wins.
    publish_n(addr, "orders.1", 59, 2).await;
    let mut ev = open(addr, &format!("topics=orders.1&last_event_id={id}"), &[]).await;
    let reply = subscribed(&mut ev).await;
    assert_eq!(reply["recovered"]["orders.1"], true, "{reply}");
    for want in 59..=60 {
        assert_eq!(delivery(&next(&mut ev).await, "update", "orders.1").0, want);
    }
    let stale = format!("topics=orders.1&last_event_id={last}");
    let mut ev = open(addr, &stale, &[("last-event-id", &id)]).await;
    subscribed(&mut ev).await;
    assert_eq!(delivery(&next(&mut ev).await, "update", "orders.1").0, 59);
}

#[tokio::test]
async fn a_corrupted_or_foreign_id_starts_the_stream_as_new() {
    let server = start("").await;
    let addr = server.addr;
    publish_n(addr, "orders.1", 1, 3).await;
    let mut ev = open(addr, "topics=orders.1", &[]).await;
    subscribed(&mut ev).await;
    let (_, _, id) = delivery(&next(&mut ev).await, "snapshot", "orders.1");
    drop(ev);
    let mut corrupted = id.clone().into_bytes();
    let i = corrupted.len() / 2;
    corrupted[i] = if corrupted[i] == b'A' { b'B' } else { b'A' };
    let corrupted = String::from_utf8(corrupted).unwrap();
    let long = "A".repeat(5000);
    for bad in [
        &corrupted[..],
        "42",
        "not an id at all",
        &id[..id.len() - 2],
        &long,
    ] {
        let mut ev = open(addr, "topics=orders.1", &[("last-event-id", bad)]).await;
        let reply = subscribed(&mut ev).await;
        assert_eq!(reply["recovered"], json!({"orders.1": false}), "{bad:?}: {reply}");
        let (seq, value, _) = delivery(&next(&mut ev).await, "snapshot", "orders.1");
        assert_eq!((seq, value), (3, json!({"i": 3})), "{bad:?}");
    }
}

const RACE_TOPIC: &str = "race.t";
const RACE_RECONNECTS: usize = 100;
const RACE_RATE: f64 = 6_250.0;
const RACE_BATCH: u64 = 50;
const RACE_PERIOD: Duration = Duration::from_millis(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnects_under_a_fast_publisher_have_no_gap_and_no_duplicate() {
    let server = start("[history]\nsize = 10000\n").await;
    let addr = server.addr;
    assert_eq!(publish(addr, RACE_TOPIC, json!({"i": 1})).await, 1);
    // Publisher: {"i": n} on seq n, batches every RACE_PERIOD at RACE_RATE on average.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let stop = stop.clone();
        async move {
            let started = tokio::time::Instant::now();
            let mut next = 2u64;
            let mut batches = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * RACE_RATE) as u64;
                let count = due.saturating_sub(next - 2).clamp(RACE_BATCH, 20 * RACE_BATCH);
                assert_eq!(
                    publish_n(addr, RACE_TOPIC, next, count).await,
                    (next..next + count).collect::<Vec<_>>()
                );
                next += count;
                batches += 1;
                tokio::time::sleep_until(started + RACE_PERIOD * batches).await;
            }
            (next - 2, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut all: Vec<u64> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut recovered = 0;
    for n in 0..RACE_RECONNECTS {
        let headers: Vec<(&str, &str)> = last_id.iter().map(|id| ("last-event-id", id.as_str())).collect();
        let mut ev = open(addr, &format!("topics={RACE_TOPIC}"), &headers).await;
        let reply = subscribed(&mut ev).await;
        let position = reply["positions"][RACE_TOPIC]["seq"].as_u64().unwrap();
        let was_recovered = reply["recovered"][RACE_TOPIC].as_bool();
        if last_id.is_some() {
            assert_eq!(was_recovered, Some(true), "connection {n}: {reply}");
            recovered += 1;
        }
        // Past the position into live updates, then on for 0–10 ms, ending on a timer.
        let mut until: Option<Instant> = None;
        loop {
            let wait = until.map_or(RECV_TIMEOUT, |t| t.saturating_duration_since(Instant::now()));
            let event = match tokio::time::timeout(wait, ev.next()).await {
                Ok(Some(Ok(event))) => event,
                Err(_) if until.is_some() => break,
                other => panic!("connection {n}: {other:?}"),
            };
            let kind = if all.is_empty() { "snapshot" } else { "update" };
            let (seq, value, id) = delivery(&event, kind, RACE_TOPIC);
            assert_eq!(value, json!({"i": seq}));
            if let Some(prev) = all.last() {
                assert_eq!(seq, prev + 1, "connection {n}: a gap or a duplicate");
            }
            all.push(seq);
            last_id = Some(id);
            if until.is_none() && seq > position {
                until = Some(Instant::now() + Duration::from_micros((n as u64 * 7_919) % 10_000));
            }
        }
        drop(ev); // abrupt, unread events discarded
    }
    stop.store(true, Ordering::Relaxed);
    let (published, elapsed) = publisher.await.expect("publisher");
    let rate = published as f64 / elapsed.as_secs_f64();
    println!(
        "sse reconnects: {recovered} recovered, {} events ({}..={}), publisher {rate:.0} msg/s",
        all.len(),
        all[0],
        all[all.len() - 1]
    );
    assert_eq!(recovered, RACE_RECONNECTS - 1);
    assert!(rate >= 5000.0, "publisher reached only {rate:.0} msg/s");
}

#[tokio::test]
async fn jwt_streams_need_a_valid_token_and_a_covering_acl() {
    let server = start(JWT_TOML).await;
    let addr = server.addr;
    let valid = token(&claims("ann", &["prices.>"], &[], 60));
    let token = valid.as_str();
    // ?token= (EventSource cannot send headers), or the Authorization header.
    let mut ev = open(addr, &format!("topics=prices.BTC-USD&token={token}"), &[]).await;
    subscribed(&mut ev).await;
    let bearer = format!("Bearer {token}");
    let mut ev = open(addr, "topics=prices.*", &[("authorization", &bearer)]).await;
    subscribed(&mut ev).await;

    let (status, body) = body_json(
        get(
            addr,
            &format!("/sse?topics=prices.BTC-USD,chat.x&token={token}"),
            &[],
        )
        .await,
    )
    .await;
    assert_http_error(status, &body, 403, Some("forbidden"));
    for bad in [
        "/sse?topics=prices.BTC-USD",
        "/sse?topics=prices.BTC-USD&token=a.b.c",
    ] {
        let (status, body) = body_json(get(addr, bad, &[]).await).await;
        assert_http_error(status, &body, 401, Some("unauthorized"));
    }
    let expired = common::jwt::token(&claims("ann", &["prices.>"], &[], -10));
    let (status, body) =
        body_json(get(addr, &format!("/sse?topics=prices.BTC-USD&token={expired}"), &[]).await).await;
    assert_http_error(status, &body, 401, Some("unauthorized"));
    let m = scrape(addr).await;
    assert_eq!(
        m.value("tickwire_connections_accepted_total", &[("transport", "sse")]),
        2.0
    );
}

#[tokio::test]
async fn bad_parameters_are_refused_before_any_event() {
    let server = start("[server]\nmax_subscriptions_per_connection = 2\n").await;
    let addr = server.addr;
    for (target, code) in [
        ("/sse", "bad_request"),
        ("/sse?topics=", "bad_request"),
        ("/sse?topics=a..b", "invalid_topic"),
        ("/sse?topics=a,b,c", "too_many_subscriptions"),
        ("/sse?topics=a&max_rate=0", "bad_request"),
        ("/sse?topics=chat.x&max_rate=2", "bad_request"),
        ("/sse?topics=a&delta=xdelta", "bad_request"),
    ] {
        let (status, body) = body_json(get(addr, target, &[]).await).await;
        assert_http_error(status, &body, 400, Some(code));
    }
    let m = scrape(addr).await;
    assert_eq!(m.value("tickwire_connections", &[("transport", "sse")]), 0.0);
}

#[tokio::test]
async fn an_expired_token_ends_the_stream_with_4003() {
    let server = start(JWT_TOML).await;
    let addr = server.addr;
    let token = token(&claims("ann", &["prices.>"], &[], 2));
    let mut ev = open(addr, &format!("topics=prices.BTC-USD&token={token}"), &[]).await;
    subscribed(&mut ev).await;
    let started = Instant::now();
    let rest = until_end(&mut ev).await;
    let (code, reason) = close_of(rest.last().expect("a close event"));
    assert_eq!((code, reason.as_str()), (4003, "token expired"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    wait_metric(
        addr,
        "tickwire_disconnects_total",
        &[("reason", "token_expired")],
        "1",
        |v| v == 1.0,
    )
    .await;
}

#[tokio::test]
async fn a_slow_consumer_of_a_queue_topic_gets_4008() {
    let server = start(
        "[server]\nmax_message_bytes = 32768\n[queue]\nmax_bytes = 65536\n\
         policies = [{ pattern = \"orders.>\", policy = \"queue\" }]\n",
    )
    .await;
    let addr = server.addr;
    let mut ev = open(addr, "topics=orders.%3E", &[]).await;
    subscribed(&mut ev).await;
    // The client stops reading; publications pile up in the socket buffers, hyper's, then the
    // stream's queue, which overflows. One at a time: a burst larger than the queue would
    // overflow it before the first write.
    let blob = "x".repeat(20_000);
    let mut published = 0;
    while metric_value(addr, "tickwire_disconnects_total{reason=\"slow_consumer\"}").await == 0.0 {
        publish(addr, "orders.1", json!({"blob": blob})).await;
        published += 1;
        assert!(
            published < 5_000,
            "never a slow consumer after {published} publications"
        );
    }
    let rest = until_end(&mut ev).await;
    let (last, updates) = rest.split_last().expect("events");
    assert_eq!(close_of(last), (4008, "slow consumer".into()));
    let seqs: Vec<u64> = updates
        .iter()
        .map(|e| delivery(e, "update", "orders.1").0)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1) && seqs.first() == Some(&1),
        "what was handed over arrives in order, without gaps: {seqs:?}"
    );
    assert!((seqs.len() as u64) < published, "{} of {published}", seqs.len());
}

#[tokio::test]
async fn drain_flushes_then_closes_with_1001() {
    let server = start("[server]\nshutdown_timeout = \"5s\"\n").await;
    let addr = server.addr;
    let mut ev = open(addr, "topics=prices.BTC-USD", &[]).await;
    subscribed(&mut ev).await;
    publish_n(addr, "prices.BTC-USD", 1, 3).await;
    let started = Instant::now();
    let done = server.begin_shutdown();
    let rest = until_end(&mut ev).await;
    let (last, updates) = rest.split_last().expect("events");
    assert_eq!(close_of(last), (1001, "server shutting down".into()));
    let seqs: Vec<u64> = updates
        .iter()
        .map(|e| delivery(e, "update", "prices.BTC-USD").0)
        .collect();
    assert_eq!(seqs, [1, 2, 3], "pending events first");
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("the drain ends within shutdown_timeout")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn pings_are_comments_every_ping_interval() {
    let server = start("[server]\nping_interval = \"100ms\"\nidle_timeout = \"200ms\"\n").await;
    let resp = get(server.addr, "/sse?topics=prices.BTC-USD", &[]).await;
    let mut body = resp.into_body();
    let mut text = String::new();
    let started = Instant::now();
    while text.matches(": ping\n\n").count() < 3 {
        let frame = tokio::time::timeout(RECV_TIMEOUT, body.frame())
            .await
            .expect("a ping within RECV_TIMEOUT")
            .expect("stream open")
            .expect("frame");
        text.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
    }
    // Three pings; and no idle timeout, although the client sent nothing for longer.
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(!text.contains("event: close"), "{text}");
    assert!(text.starts_with("event: subscribed\n"), "{text}");
}

#[tokio::test]
async fn cors_headers_for_allowed_origins_and_refusal_for_others() {
    let server = start("[server]\nallowed_origins = [\"https://app.example\"]\n").await;
    let addr = server.addr;
    let resp = get(addr, "/sse?topics=a", &[("origin", "https://app.example")]).await;
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(header("vary").as_deref(), Some("Origin"));
    let mut ev = events(resp);
    subscribed(&mut ev).await;

    let resp = get(addr, "/sse?topics=a", &[("origin", "https://evil.example")]).await;
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let (status, body) = body_json(resp).await;
    assert_http_error(status, &body, 403, Some("forbidden"));
    // Without Origin (curl): no CORS headers, the stream as usual.
    let resp = get(addr, "/sse?topics=a", &[]).await;
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    subscribed(&mut events(resp)).await;
}

#[tokio::test]
async fn streams_count_against_the_connection_limits() {
    let server = start("[limits]\nmax_connections_per_ip = 3\n").await;
    let addr = server.addr;
    let mut a = open(addr, "topics=a", &[]).await;
    subscribed(&mut a).await;
    let mut b = open(addr, "topics=b", &[]).await;
    subscribed(&mut b).await;
    let ws = connect(addr).await;
    let (status, body) = body_json(get(addr, "/sse?topics=c", &[]).await).await;
    assert_http_error(status, &body, 429, Some("too_many_connections"));
    let m = scrape(addr).await;
    assert_eq!(m.value("tickwire_connections", &[("transport", "sse")]), 2.0);
    assert_eq!(m.value("tickwire_connections", &[("transport", "ws")]), 1.0);
    assert_eq!(m.value("tickwire_connections", &[]), 3.0);
    assert_eq!(
        m.value("tickwire_connections_accepted_total", &[("transport", "sse")]),
        2.0
    );
    // A stream that ends gives its place back.
    drop(a);
    wait_metric(addr, "tickwire_connections", &[("transport", "sse")], "1", |v| {
        v == 1.0
    })
    .await;
    let mut c = open(addr, "topics=c", &[]).await;
    subscribed(&mut c).await;
    drop((b, ws));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_each_receive_a_publication() {
    const STREAMS: usize = 1000;
    let _ = tickwire::server::raise_fd_limit();
    let server = start("").await;
    let addr = server.addr;
    // Spread over four source addresses: limits.max_connections_per_ip is 1,000 by default.
    let mut opened = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        let from = Ipv4Addr::new(127, 0, 0, 2 + (i % 4) as u8);
        opened.push(tokio::spawn(async move {
            let mut ev = events(get_from(addr, Some(from), "/sse?topics=fan.out", &[]).await);
            subscribed(&mut ev).await;
            ev
        }));
    }
    let mut streams = Vec::with_capacity(STREAMS);
    for task in opened {
        streams.push(task.await.expect("stream opened"));
    }
    let m = scrape(addr).await;
    assert_eq!(
        m.value("tickwire_connections", &[("transport", "sse")]),
        STREAMS as f64
    );
    let started = Instant::now();
    publish(addr, "fan.out", json!({"to": "everyone"})).await;
    let received: Vec<_> = streams
        .into_iter()
        .map(|mut ev| {
            tokio::spawn(async move {
                let (seq, value, _) = delivery(&next(&mut ev).await, "update", "fan.out");
                (seq, value)
            })
        })
        .collect();
    for task in received {
        assert_eq!(task.await.expect("delivery"), (1, json!({"to": "everyone"})));
    }
    println!(
        "{STREAMS} streams received the publication in {:?}",
        started.elapsed()
    );
}
