//! 10,000 members in one presence room (issue 20): what a member costs the server, and how long
//! a presence query takes. Against a server process of its own (its resident memory read from
//! /proc), with 10,000 real WebSocket connections from this process.
//!
//! The cost of a member is measured as a difference, so that nothing else is counted: every
//! connection first subscribes to one plain topic, then to a second plain topic (what a
//! subscription costs), then to the room (a subscription plus a seat); the room's growth less
//! the second topic's is the member. Printed with `--nocapture`; the numbers in
//! docs/presence.md come from `cargo test --release --test presence_scale -- --nocapture`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use serde_json::json;

const MEMBERS: usize = 10_000;
const CHUNK: usize = 500;

/// The server's resident memory, in bytes.
fn server_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the server's status");
    let kb: u64 = (status.lines())
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Every client subscribes to `topic`, `CHUNK` at a time; returns the server's RSS after it
/// settled.
async fn subscribe_all(clients: &mut [Ws], topic: &str, pid: u32) -> u64 {
    let topics = [topic];
    for chunk in clients.chunks_mut(CHUNK) {
        join_all(chunk.iter_mut().map(|ws| subscribe(ws, 1, &topics))).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    server_rss(pid)
}

async fn connect_all(addr: SocketAddr) -> Vec<Ws> {
    let mut clients = Vec::with_capacity(MEMBERS);
    for _ in 0..MEMBERS / CHUNK {
        clients.extend(join_all((0..CHUNK).map(|_| connect(addr))).await);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_members_in_one_room() {
    let server = ServerProcess::start(&[
        ("TICKWIRE__PRESENCE__PATTERNS", "room.>"),
        ("TICKWIRE__PRESENCE__MAX_MEMBERS", "10000"),
        // The whole room in one reply (545 KiB) must fit in half of a connection's queue.
        ("TICKWIRE__QUEUE__MAX_BYTES", "4194304"),
        ("TICKWIRE__LIMITS__MAX_CONNECTIONS_PER_IP", "20000"),
        ("TICKWIRE__SERVER__REQUESTS_PER_SECOND", "1000"),
    ])
    .await;
    let (addr, pid) = (server.addr, server.pid());
    let mut clients = connect_all(addr).await;
    let first = subscribe_all(&mut clients, "plain.a", pid).await;
    let plain = subscribe_all(&mut clients, "plain.b", pid).await;
    let room = subscribe_all(&mut clients, "room.lobby", pid).await;
    let per_subscription = plain.saturating_sub(first) as f64 / MEMBERS as f64;
    let per_member = room.saturating_sub(plain) as f64 / MEMBERS as f64 - per_subscription;
    println!(
        "RSS: {:.1} MiB with {MEMBERS} connections on one topic; a subscription {per_subscription:.0} B; \
         a room membership {:.0} B (so a member {per_member:.0} B)",
        first as f64 / MIB,
        per_subscription + per_member,
    );
    assert!(per_member < 1024.0, "a member costs {per_member:.0} B");

    // The presence query: the whole room listed, over WebSocket and HTTP.
    let mut times = Vec::new();
    for (i, ws) in clients.iter_mut().take(20).enumerate() {
        let started = Instant::now();
        let reply = request(ws, json!({"op": "presence", "id": i, "topic": "room.lobby"})).await;
        times.push(started.elapsed());
        assert_eq!(reply["count"], MEMBERS, "{}", reply["count"]);
        assert_eq!(reply["members"].as_array().map(Vec::len), Some(MEMBERS));
    }
    times.sort();
    let started = Instant::now();
    let (status, body) = get_json(addr, "/api/v1/topics/room.lobby/presence").await;
    let http = started.elapsed();
    assert_eq!((status, body["count"].clone()), (200, json!(MEMBERS)));
    let bytes = body.to_string().len();
    println!(
        "presence of {MEMBERS} members ({} KiB): WebSocket median {:?}, max {:?}; HTTP {http:?}",
        bytes / 1024,
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(times[times.len() / 2] < Duration::from_secs(1));

    // Leaving empties the room again, and the members' memory is given back to the allocator.
    for chunk in clients.chunks_mut(CHUNK) {
        join_all(chunk.iter_mut().map(|ws| unsubscribe(ws, 2, &["room.lobby"]))).await;
    }
    let (_, body) = get_json(addr, "/api/v1/topics/room.lobby/presence").await;
    assert_eq!(body["count"], 0);
    assert_eq!(metric_value(addr, "tickwire_presence_members").await, 0.0);
}
