//! Presence and occupancy across a real 3-node cluster on a real `redis-server` (started by each
//! test on a free port), issue 20: join/leave across nodes, the presence query the same on every
//! node within 1 s, cluster-wide subscriber counts and occupied topics, `occupied`/`vacated` and
//! every webhook exactly once in the cluster (with the vacate delay), and the members of a
//! killed node leaving within `presence.ttl`, announced once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::redis::RedisServer;
use common::webhook::Receiver;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "cluster-hooks";

/// Three nodes on one Redis, each with presence on `chat.>`, the vacate delay, and every event
/// going to `receiver`.
async fn cluster(redis: &RedisServer, prefix: &str, receiver: &Receiver, delay: &str) -> Vec<TestServer> {
    let toml = format!(
        "{}[presence]\npatterns = [\"chat.>\"]\nttl = \"3s\"\n[occupancy]\nvacate_delay = \"{delay}\"\n\
         [[webhooks]]\nurl = \"{}\"\nevents = [\"occupied\", \"vacated\", \"join\", \"leave\"]\nsecret = \"{SECRET}\"\n",
        redis.broker_toml(prefix),
        receiver.url("/hooks")
    );
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start(&toml).await);
    }
    for node in &nodes {
        wait_ready(node.addr).await;
    }
    nodes
}

/// The events the receiver got, counted by (event, topic, member user).
fn tally(receiver: &Receiver) -> BTreeMap<(String, String, String), usize> {
    let mut out = BTreeMap::new();
    for hook in receiver.hooks() {
        assert!(hook.signed_with(SECRET), "signature: {hook:?}");
        let v = hook.json();
        let user = v["member"]["user"].as_str().unwrap_or("").to_string();
        let key = (
            v["event"].as_str().unwrap().to_string(),
            v["topic"].as_str().unwrap().to_string(),
            user,
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

fn event(kind: &str, topic: &str, user: &str) -> (String, String, String) {
    (kind.to_string(), topic.to_string(), user.to_string())
}

/// Waits until every node answers `count` members for `topic`.
async fn room_everywhere(nodes: &[TestServer], topic: &str, count: u64, within: Duration) {
    for (i, node) in nodes.iter().enumerate() {
        let what = format!("node {i}: {count} members in {topic}");
        eventually(&what, within, || async {
            let (status, body) = get_json(node.addr, &format!("/api/v1/topics/{topic}/presence")).await;
            status == 200
                && body["count"] == count
                && body["members"].as_array().map(Vec::len) == Some(count as usize)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_across_nodes_and_events_come_once() {
    let redis = RedisServer::start(false);
    let receiver = Receiver::start(&[]).await;
    let nodes = cluster(&redis, "pres", &receiver, "500ms").await;
    // Published once, so that the topic exists in Redis and a pattern finds it.
    publish(nodes[2].addr, "chat.room", json!("hello")).await;

    let mut watcher = connect(nodes[0].addr).await;
    let reply = request(
        &mut watcher,
        json!({"op": "subscribe", "id": 1, "topics": ["chat.room"], "presence_events": true}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(recv_json(&mut watcher).await["type"], "snapshot");
    assert_eq!(recv_json(&mut watcher).await["type"], "join", "its own join");
    room_everywhere(&nodes, "chat.room", 1, Duration::from_secs(1)).await;

    // A member on another node: the watcher sees it join, every node lists it within 1 s.
    let mut other = connect(nodes[1].addr).await;
    subscribe(&mut other, 1, &["chat.room"]).await;
    assert_eq!(recv_json(&mut other).await["type"], "snapshot");
    let joined = recv_json_within(&mut watcher, Duration::from_secs(2)).await;
    assert_eq!(
        (joined["type"].clone(), joined["topic"].clone()),
        (json!("join"), json!("chat.room")),
        "{joined}"
    );
    room_everywhere(&nodes, "chat.room", 2, Duration::from_secs(1)).await;
    let (_, body) = get_json(nodes[2].addr, "/api/v1/topics/chat.room/presence").await;
    let clients: Vec<&Value> = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["client"])
        .collect();
    assert!(clients.contains(&&joined["member"]["client"]), "{body}");

    // Subscriber counts and the occupied listing are the cluster's, on any node.
    let mut wide = connect(nodes[2].addr).await;
    subscribe(&mut wide, 1, &["chat.*"]).await;
    assert_eq!(recv_json(&mut wide).await["type"], "snapshot");
    eventually(
        "3 subscribers seen from node 2",
        Duration::from_secs(2),
        || async {
            get_topic(nodes[2].addr, "chat.room")
                .await
                .is_some_and(|t| t["subscribers"] == 3 && t["pattern_subscribers"] == 1)
        },
    )
    .await;
    let (_, page) = get_json(nodes[1].addr, "/api/v1/topics?occupied=true").await;
    assert_eq!(page, json!({"topics": ["chat.room"], "next": null}));
    unsubscribe(&mut wide, 2, &["chat.*"]).await;

    // It leaves: the watcher sees it, every node's room shrinks.
    unsubscribe(&mut other, 2, &["chat.room"]).await;
    let left = recv_json_within(&mut watcher, Duration::from_secs(2)).await;
    assert_eq!(
        (left["type"].clone(), left["member"].clone()),
        (json!("leave"), joined["member"].clone())
    );
    room_everywhere(&nodes, "chat.room", 1, Duration::from_secs(1)).await;

    // The last one goes: vacated after the delay. Every event reached the receiver once, not
    // once per node.
    close_gracefully(watcher).await;
    eventually("vacated", Duration::from_secs(5), || async {
        tally(&receiver).contains_key(&event("vacated", "chat.room", ""))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let expected = BTreeMap::from([
        (event("occupied", "chat.room", ""), 1),
        (event("vacated", "chat.room", ""), 1),
        (event("join", "chat.room", "anonymous"), 2),
        (event("leave", "chat.room", "anonymous"), 2),
    ]);
    assert_eq!(tally(&receiver), expected);
    let state = get_topic(nodes[0].addr, "chat.room").await.unwrap();
    assert_eq!(
        (state["subscribers"].clone(), state["seq"].clone()),
        (json!(0), json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_moving_to_another_node_within_the_delay_vacates_nothing() {
    let redis = RedisServer::start(false);
    let receiver = Receiver::start(&[]).await;
    let nodes = cluster(&redis, "flap", &receiver, "800ms").await;
    let mut a = connect(nodes[0].addr).await;
    subscribe(&mut a, 1, &["prices.X"]).await;
    eventually("occupied", Duration::from_secs(3), || async {
        !receiver.hooks().is_empty()
    })
    .await;
    // Gone from node 0, back on node 1 a moment later; then on node 2 too.
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = connect(nodes[1].addr).await;
    subscribe(&mut b, 1, &["prices.X"]).await;
    let mut c = connect(nodes[2].addr).await;
    subscribe(&mut c, 1, &["prices.X"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        tally(&receiver),
        BTreeMap::from([(event("occupied", "prices.X", ""), 1)])
    );
    for node in &nodes {
        assert_eq!(get_topic(node.addr, "prices.X").await.unwrap()["subscribers"], 2);
    }
    drop((b, c));
    eventually("vacated once", Duration::from_secs(5), || async {
        tally(&receiver).contains_key(&event("vacated", "prices.X", ""))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        tally(&receiver),
        BTreeMap::from([
            (event("occupied", "prices.X", ""), 1),
            (event("vacated", "prices.X", ""), 1)
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_leave_within_the_ttl_once() {
    let redis = RedisServer::start(false);
    let receiver = Receiver::start(&[]).await;
    let nodes = cluster(&redis, "kill", &receiver, "0s").await;
    // The node that dies is a real process, killed with SIGKILL: nothing of it says goodbye.
    let url = redis.url();
    let mut doomed = ServerProcess::start(&[
        ("TICKWIRE__BROKER__KIND", "redis"),
        ("TICKWIRE__BROKER__REDIS_URL", url.as_str()),
        ("TICKWIRE__BROKER__PREFIX", "kill"),
        ("TICKWIRE__PRESENCE__PATTERNS", "chat.>"),
        ("TICKWIRE__PRESENCE__TTL", "3s"),
    ])
    .await;
    wait_ready(doomed.addr).await;
    let mut watcher = connect(nodes[0].addr).await;
    let reply = request(
        &mut watcher,
        json!({"op": "subscribe", "id": 1, "topics": ["chat.k"], "presence_events": true}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(recv_json(&mut watcher).await["type"], "join");
    let mut doomed_clients = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(doomed.addr).await;
        subscribe(&mut ws, 1, &["chat.k"]).await;
        doomed_clients.push(ws);
    }
    for _ in 0..3 {
        assert_eq!(
            recv_json_within(&mut watcher, Duration::from_secs(2)).await["type"],
            "join"
        );
    }
    room_everywhere(&nodes, "chat.k", 4, Duration::from_secs(1)).await;

    doomed.child.kill().expect("SIGKILL the node");
    let killed = tokio::time::Instant::now();
    let _ = doomed.wait_exit(Duration::from_secs(5)).await;
    for _ in 0..3 {
        let left = recv_json_within(&mut watcher, Duration::from_secs(5)).await;
        assert_eq!(left["type"], "leave", "{left}");
    }
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_millis(3300),
        "leaves {took:?} after the kill, ttl 3s"
    );
    room_everywhere(&nodes, "chat.k", 1, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tally = tally(&receiver);
    assert_eq!(
        tally.get(&event("leave", "chat.k", "anonymous")),
        Some(&3),
        "{tally:?}"
    );
    assert_eq!(tally.get(&event("occupied", "chat.k", "")), Some(&1), "{tally:?}");
    assert_eq!(
        tally.get(&event("vacated", "chat.k", "")),
        None,
        "the watcher stays: {tally:?}"
    );
    drop(doomed_clients);
}
