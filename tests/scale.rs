//! Pattern subscriptions against many topics cost what they match, and never stall the rest of
//! the server: with 200,000 topics, four clients each send the largest subscribe request
//! allowed (1,024 patterns) four times, while a prober keeps asking `/healthz` and publishing, to a
//! topic that exists and to new ones. Every probe must answer within 100 ms.
//!
//! Before the topic trie, each pattern tested every topic while holding the pattern index's
//! write lock: 1,024 patterns × 200,000 topics per request, minutes in a debug build, with
//! every topic creation waiting behind it.
//!
//! Its own test binary with a single test, against a server process of its own, so that
//! nothing else competes for the server's runtime.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Topics `t.q{Q}.s{S}.v{V}`: Q × S × V of them.
const Q: usize = 1000;
const S: usize = 100;
const V: usize = 2;
const BATCH: usize = 5_000;
/// The most subscriptions one connection may hold (`server.max_subscriptions_per_connection`).
const PATTERNS: usize = 1024;
const CLIENTS: usize = 4;
const ROUNDS: usize = 4;
const BOUND: Duration = Duration::from_millis(100);

async fn create_topics(addr: SocketAddr) {
    let names: Vec<String> = (0..Q * S * V)
        .map(|i| format!("t.q{}.s{}.v{}", i / (S * V), i / V % S, i % V))
        .collect();
    for chunk in names.chunks(BATCH) {
        let messages: Vec<String> = (chunk.iter())
            .map(|t| format!(r#"{{"topic":"{t}","data":1}}"#))
            .collect();
        let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
        let r = http_post(addr, "/api/v1/publish", body.as_bytes()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}

/// Client `c`'s patterns in round `round`: three in four match `V` topics each, the others
/// none (one token too many), all distinct across clients and rounds. Few matches each, so that
/// what is measured is the cost of the topics a pattern does not match (the old scan).
fn patterns(c: usize, round: usize) -> Vec<String> {
    (0..PATTERNS)
        .map(|i| {
            let n = (round * CLIENTS + c) * PATTERNS + i;
            let (q, s) = (n / S % Q, n % S);
            match i % 4 {
                3 => format!("t.q{q}.s{s}.v1.*"),
                _ => format!("t.q{q}.s{s}.*"),
            }
        })
        .collect()
}

/// The next reply (a message with an `id`), skipping the snapshots that follow a subscribe.
async fn reply(ws: &mut Ws, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("no reply in time")
            .expect("connection ended")
            .expect("read failed");
        if let Message::Text(text) = msg {
            let v: Value = serde_json::from_str(&text).unwrap();
            if v.get("id").is_some() {
                return v;
            }
        }
    }
}

async fn client(addr: SocketAddr, c: usize) -> Duration {
    let mut ws = connect(addr).await;
    let mut busiest = Duration::ZERO;
    for round in 0..ROUNDS {
        let topics = patterns(c, round);
        let started = Instant::now();
        send_json(&mut ws, json!({"op": "subscribe", "id": 1, "topics": topics})).await;
        let r = reply(&mut ws, Duration::from_secs(60)).await;
        assert_eq!(r["type"], "subscribed", "{r}");
        let positions = r["positions"].as_object().unwrap().len();
        assert_eq!(
            positions,
            PATTERNS / 4 * 3 * V,
            "every matching topic, and no other"
        );
        busiest = busiest.max(started.elapsed());
        send_json(&mut ws, json!({"op": "unsubscribe", "id": 2, "topics": topics})).await;
        let r = reply(&mut ws, Duration::from_secs(60)).await;
        assert_eq!(r["type"], "unsubscribed", "{r}");
    }
    busiest
}

/// Latencies of `/healthz`, a publish to an existing topic and one to a new topic, until `done`.
async fn probe(addr: SocketAddr, done: Arc<AtomicBool>) -> Vec<(&'static str, Duration)> {
    let mut seen = Vec::new();
    let mut n = 0;
    while !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        let r = http_get(addr, "/healthz").await;
        assert_eq!(r.status, 200);
        seen.push(("healthz", started.elapsed()));
        for (what, topic) in [
            ("publish", "t.q0.s0.v0".to_string()),
            ("new topic", format!("new.n{n}")),
        ] {
            let body = json!({"topic": topic, "data": n}).to_string();
            let started = Instant::now();
            let r = http_post(addr, "/api/v1/publish", body.as_bytes()).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            seen.push((what, started.elapsed()));
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_requests_against_many_topics_stall_nothing() {
    let server = ServerProcess::start(&[
        ("TICKWIRE__HTTP__MAX_BODY_BYTES", "16777216"),
        ("TICKWIRE__QUEUE__MAX_BYTES", "16777216"),
        ("TICKWIRE__LOG__LEVEL", "warn"),
    ])
    .await;
    let addr = server.addr;
    let started = Instant::now();
    create_topics(addr).await;
    println!("{} topics created in {:?}", Q * S * V, started.elapsed());

    let done = Arc::new(AtomicBool::new(false));
    // On a thread and runtime of its own, so that the clients' work in this process does not
    // delay the probes: what is measured is the server.
    let flag = done.clone();
    let prober = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(probe(addr, flag))
    });
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS).map(|c| tokio::spawn(client(addr, c))).collect();
    let mut busiest = Duration::ZERO;
    for c in clients {
        busiest = busiest.max(c.await.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    let probes = prober.join().unwrap();
    println!(
        "{} requests of {PATTERNS} patterns in {:?} (slowest subscribe {busiest:?}), {} probes",
        CLIENTS * ROUNDS * 2,
        started.elapsed(),
        probes.len()
    );
    for what in ["healthz", "publish", "new topic"] {
        let mut times: Vec<Duration> = (probes.iter())
            .filter(|(w, _)| *w == what)
            .map(|(_, t)| *t)
            .collect();
        times.sort();
        assert!(times.len() >= 3, "too few {what} probes: {}", times.len());
        let (median, max) = (times[times.len() / 2], times[times.len() - 1]);
        println!("{what}: {} probes, median {median:?}, max {max:?}", times.len());
        assert!(max < BOUND, "a {what} took {max:?} while the subscribes ran");
    }
}
