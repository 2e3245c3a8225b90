//! The bounded receive path of a cluster node's presence listener (`broker.receive_queue`), on a
//! real `redis-server`: while the node is stalled, the other nodes' joins past the queue are
//! dropped and counted (`tickwire_broker_receive_dropped_total`) instead of piling up in memory;
//! its watchers get what was kept, then nothing of what was dropped; its presence query stays
//! right (it reads Redis); and once caught up, the next join arrives as usual.
//!
//! The stall is the test hook `tickwire::pause_redis_links`, which is process-wide: this file
//! holds one test, so that no other test's nodes are stalled with it (which is why this is not
//! in tests/presence_cluster.rs). The other node is a real process, never paused.

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::*;
use serde_json::{json, Value};
use tickwire::pause_redis_links;

/// Messages the stalled node queues for its presence listener.
const QUEUE: usize = 8;
/// Members joining on the other node while the first is stalled.
const JOINS: usize = 60;

/// The next message, or `None` when nothing came within `wait`.
async fn recv_json_or_silence(ws: &mut Ws, wait: Duration) -> Option<Value> {
    match next_incoming(ws, wait).await {
        Incoming::Json(v) => Some(v),
        Incoming::Timeout => None,
        Incoming::Close(c) => panic!("the server closed the connection: {c:?}"),
        Incoming::Ended(e) => panic!("the connection ended: {e}"),
    }
}

async fn dropped(addr: std::net::SocketAddr) -> u64 {
    metric_value(addr, "tickwire_broker_receive_dropped_total").await as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_drops_other_nodes_joins_past_its_queue_and_queries_stay_right() {
    let redis = RedisServer::start(false);
    let toml = format!(
        "{}receive_queue = {QUEUE}\n[presence]\npatterns = [\"chat.>\"]\nttl = \"30s\"\n",
        redis.broker_toml("pres-rx")
    );
    let node = start(&toml).await;
    let (url, queue) = (redis.url(), QUEUE.to_string());
    let other = ServerProcess::start(&[
        ("TICKWIRE__BROKER__KIND", "redis"),
        ("TICKWIRE__BROKER__REDIS_URL", url.as_str()),
        ("TICKWIRE__BROKER__PREFIX", "pres-rx"),
        ("TICKWIRE__BROKER__RECEIVE_QUEUE", queue.as_str()),
        ("TICKWIRE__PRESENCE__PATTERNS", "chat.>"),
    ])
    .await;
    wait_ready(node.addr).await;
    wait_ready(other.addr).await;

    let mut watcher = connect(node.addr).await;
    let reply = request(
        &mut watcher,
        json!({"op": "subscribe", "id": 1, "topics": ["chat.room"], "presence_events": true}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(recv_json(&mut watcher).await["type"], "join", "its own join");
    // The listener works before the stall: a member of the other node is announced.
    let mut members = vec![connect(other.addr).await];
    subscribe(&mut members[0], 1, &["chat.room"]).await;
    let first = recv_json_within(&mut watcher, Duration::from_secs(5)).await;
    assert_eq!(first["type"], "join", "{first}");
    assert_eq!(dropped(node.addr).await, 0);

    // Stalled: JOINS members join on the other node. The node keeps QUEUE of their
    // notifications (one more if its listener was already waiting for one when the pause
    // began) and drops the rest.
    pause_redis_links(true);
    for _ in 0..JOINS {
        let mut ws = connect(other.addr).await;
        subscribe(&mut ws, 1, &["chat.room"]).await;
        members.push(ws);
    }
    let least = (JOINS - QUEUE - 1) as u64;
    eventually(
        "the joins past the queue dropped",
        Duration::from_secs(10),
        || async { dropped(node.addr).await >= least },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let drops = dropped(node.addr).await;
    assert!(
        drops == least || drops == least + 1,
        "dropped {drops} of {JOINS} notifications, queue {QUEUE}"
    );
    eprintln!("stalled presence listener: {JOINS} joins, queue {QUEUE}, {drops} dropped");
    // The stalled node's query reads Redis: every member is there.
    let (status, room) = get_json(node.addr, "/api/v1/topics/chat.room/presence").await;
    assert_eq!((status, room["count"].clone()), (200, json!(JOINS + 2)), "{room}");
    // Nothing reaches the watcher while stalled, but the one notification the listener may
    // already have been waiting for.
    let mut clients = Vec::new();
    while let Some(v) = recv_json_or_silence(&mut watcher, Duration::from_millis(300)).await {
        assert_eq!(v["type"], "join", "{v}");
        clients.push(v["member"]["client"].clone());
    }
    assert!(clients.len() <= 1, "{clients:?} while stalled");

    // Going again: what was kept arrives, in order, then nothing more.
    pause_redis_links(false);
    let kept = JOINS - drops as usize;
    while clients.len() < kept {
        let v = recv_json_within(&mut watcher, Duration::from_secs(5)).await;
        assert_eq!(v["type"], "join", "{v}");
        clients.push(v["member"]["client"].clone());
    }
    expect_silence(&mut watcher, Duration::from_millis(500)).await;
    clients.dedup();
    assert_eq!(clients.len(), kept, "{clients:?}");

    // Caught up: the next join comes as usual, and nothing more is dropped.
    let mut last = connect(other.addr).await;
    subscribe(&mut last, 1, &["chat.room"]).await;
    let next = recv_json_within(&mut watcher, Duration::from_secs(5)).await;
    assert_eq!(next["type"], "join", "{next}");
    assert_eq!(dropped(node.addr).await, drops);
    drop(members);
}
