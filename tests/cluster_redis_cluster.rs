//! tickwire nodes on a real Redis Cluster (`broker.kind = "redis-cluster"`): three primaries
//! and three replicas started by the test on free loopback ports. Publications cross nodes and
//! shards, a pattern subscription learns of topics created after it, the seq stays global under
//! concurrent publishers, a client recovers on another node, an HTTP batch spans slots, and a
//! primary killed mid-stream fails over to its replica with publishing resumed and no silent
//! gap for subscribers, and a topic whose slot moves to another shard keeps its subscribers.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::redis::RedisCluster;
use common::*;
use serde_json::{json, Value};

/// Names from `candidates` whose topics live on `n` different shards (their primaries' ports).
fn on_different_shards(rc: &RedisCluster, prefix: &str, stem: &str, n: usize) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = Vec::new();
    for i in 0..200 {
        let topic = format!("{stem}{i}");
        let port = rc.primary_of(&format!("{prefix}:{{{topic}}}:m")).port;
        if out.iter().all(|(_, p)| *p != port) {
            out.push((topic, port));
        }
        if out.len() == n {
            return out;
        }
    }
    panic!("no {n} topics on different shards among 200 names");
}

/// Reads messages until `n` data messages (update or snapshot) arrived.
async fn recv_data(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = recv_json_within(ws, Duration::from_secs(10)).await;
        if v["type"] == "update" || v["type"] == "snapshot" {
            out.push(v);
        }
    }
    out
}

fn by_topic(messages: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for v in messages {
        let topic = v["topic"].as_str().unwrap().to_string();
        out.entry(topic).or_default().push(v["seq"].as_u64().unwrap());
    }
    out
}

/// Two tickwire nodes on `config`, both ready.
async fn two_nodes(config: &str) -> (TestServer, TestServer) {
    let (a, b) = (start(config).await, start(config).await);
    wait_ready(a.addr).await;
    wait_ready(b.addr).await;
    (a, b)
}

/// Two nodes on a fresh cluster and a client of the second subscribed to `topic`, which got
/// seqs 1 to 5 published through the first; returns the nodes, the client and what it got.
async fn five_published(
    rc: &RedisCluster,
    prefix: &str,
    topic: &str,
) -> (TestServer, TestServer, Ws, Vec<Value>) {
    let (a, b) = two_nodes(&rc.broker_toml(prefix)).await;
    let mut ws = connect(b.addr).await;
    subscribe(&mut ws, 1, &[topic]).await;
    for i in 1..=5 {
        assert_eq!(publish(a.addr, topic, json!(i)).await, i);
    }
    let got = recv_data(&mut ws, 5).await;
    (a, b, ws, got)
}

#[tokio::test]
async fn nodes_share_topics_across_shards() {
    let rc = RedisCluster::start();
    let config = rc.broker_toml("rc");
    let (a, b) = two_nodes(&config).await;

    // Three topics, one per shard (asserted through the cluster's own slot map).
    let spread = on_different_shards(&rc, "rc", "s.", 3);
    let ports: HashSet<u16> = spread.iter().map(|(_, p)| *p).collect();
    assert_eq!(ports.len(), 3, "the topics live on three shards: {spread:?}");
    let topics: Vec<&str> = spread.iter().map(|(t, _)| t.as_str()).collect();

    let mut ws = connect(b.addr).await;
    let mut wanted = topics.clone();
    wanted.push("px.*");
    subscribe(&mut ws, 1, &wanted).await;

    for t in &topics {
        assert_eq!(publish(a.addr, t, json!(format!("{t} 1"))).await, 1);
    }
    // One HTTP batch spanning the three slots, a topic twice: per-topic order kept.
    let seqs = publish_batch(
        a.addr,
        &[
            (topics[0], json!(2)),
            (topics[1], json!(2)),
            (topics[2], json!(2)),
            (topics[0], json!(3)),
        ],
    )
    .await;
    assert_eq!(seqs, vec![2, 2, 2, 3]);
    let got = recv_data(&mut ws, 7).await;
    let seen = by_topic(&got);
    assert_eq!(seen[topics[0]], vec![1, 2, 3], "{got:?}");
    assert_eq!(seen[topics[1]], vec![1, 2], "{got:?}");
    assert_eq!(seen[topics[2]], vec![1, 2], "{got:?}");
    assert!(got.iter().all(|v| v["type"] == "update"), "{got:?}");
    // The stored state really is on the shard the slot map names.
    let owner = rc.nodes.iter().find(|n| n.port == spread[0].1).unwrap();
    assert_eq!(
        owner
            .cli(&["HGET", &format!("rc:{{{}}}:m", topics[0]), "s"])
            .trim(),
        "3"
    );

    // Topics created after the pattern subscription, on two shards, reach it from seq 1.
    let fresh = on_different_shards(&rc, "rc", "px.n", 2);
    for (t, _) in &fresh {
        assert_eq!(publish(a.addr, t, json!("first")).await, 1);
        assert_eq!(publish(a.addr, t, json!("second")).await, 2);
    }
    let got = recv_data(&mut ws, 4).await;
    let seen = by_topic(&got);
    for (t, _) in &fresh {
        assert_eq!(seen.get(t.as_str()), Some(&vec![1, 2]), "{t}: {got:?}");
    }
    expect_silence(&mut ws, Duration::from_millis(300)).await;

    // Concurrent publishers on both nodes: one global seq, no duplicate, no gap.
    let hot = topics[1];
    let publishers = [a.addr, b.addr].map(|addr| {
        let hot = hot.to_string();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                seqs.push(publish(addr, &hot, json!(i)).await);
            }
            seqs
        })
    });
    let mut all = Vec::new();
    for p in publishers {
        all.extend(p.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (3..=102).collect::<Vec<u64>>(), "acknowledged seqs");
    let got = recv_data(&mut ws, 100).await;
    assert_eq!(
        by_topic(&got)[hot],
        (3..=102).collect::<Vec<u64>>(),
        "delivered in seq order"
    );

    // A client moving to the other node recovers from its position without a gap.
    let mut first = connect(a.addr).await;
    let reply = request(
        &mut first,
        json!({"op": "subscribe", "id": 1, "topics": [topics[2]]}),
    )
    .await;
    let (seq, epoch) = position(&reply, topics[2]);
    assert_eq!(seq, 2);
    drop(first);
    for i in 3..=5 {
        publish(b.addr, topics[2], json!(i)).await;
    }
    let mut moved = connect(b.addr).await;
    let reply = subscribe_since(&mut moved, 2, &[topics[2]], json!({ topics[2]: pos(2, &epoch) })).await;
    assert_eq!(reply["recovered"][topics[2]], true, "{reply}");
    let got = recv_data(&mut moved, 3).await;
    assert!(got.iter().all(|v| v["type"] == "update"), "{got:?}");
    assert_eq!(by_topic(&got)[topics[2]], vec![3, 4, 5]);

    // A node receiving everything (`subscribe = "all"`: every topic's sharded channel, and new
    // topics as they are announced) serves an existing topic and one created after it started.
    let c = start(&format!("{config}subscribe = \"all\"\n")).await;
    wait_ready(c.addr).await;
    let mut everything = connect(c.addr).await;
    subscribe(&mut everything, 1, &[topics[0], "late.topic"]).await;
    publish(a.addr, topics[0], json!("to all")).await;
    publish(b.addr, "late.topic", json!("new")).await;
    let got = recv_data(&mut everything, 3).await;
    let seen = by_topic(&got);
    assert_eq!(
        seen[topics[0]],
        vec![3, 4],
        "the snapshot, then the update: {got:?}"
    );
    assert_eq!(seen["late.topic"], vec![1], "{got:?}");
    c.stop().await.unwrap();

    // A keyed batch spanning two shards, retried on the other node: replayed, not republished
    // (each slot's group keeps its own `Idempotency-Key` record).
    let keyed = on_different_shards(&rc, "rc", "idem.", 2);
    let body = json!({"messages": [
        {"topic": keyed[0].0, "data": "x"},
        {"topic": keyed[1].0, "data": "y"},
    ]})
    .to_string();
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "batch-1"),
    ];
    let first = http_request(a.addr, "POST", "/api/v1/publish", &headers, Some(body.as_bytes())).await;
    let again = http_request(b.addr, "POST", "/api/v1/publish", &headers, Some(body.as_bytes())).await;
    assert_eq!((first.status, again.status), (200, 200), "{:?}", first.json());
    assert_eq!(first.header("Idempotent-Replayed"), None);
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(first.json()["results"], again.json()["results"]);
    for (t, _) in &keyed {
        let stored = get_topic(a.addr, t).await.expect("the topic exists");
        assert_eq!(stored["seq"], 1, "published once: {stored}");
    }

    // The topic listing covers every shard's topics.
    let (status, page) = get_json(a.addr, "/api/v1/topics?limit=100").await;
    assert_eq!(status, 200, "{page}");
    let listed = page.to_string();
    for t in topics
        .iter()
        .copied()
        .chain(fresh.iter().map(|(t, _)| t.as_str()))
    {
        assert!(listed.contains(&format!("\"{t}\"")), "{t} listed: {page}");
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_primary_failover_resumes_publishing_without_a_silent_gap() {
    let rc = RedisCluster::start();
    let topic = "fo.prices";
    let (a, b, mut ws, mut got) = five_published(&rc, "fo", topic).await;
    let key = format!("fo:{{{topic}}}:m");
    let primary = rc.primary_of(&key);
    let replica = rc.replica_of(primary);
    let (primary_port, replica_port) = (primary.port, replica.port);
    rc.wait_replicated(primary_port, replica_port);

    let mut rc = rc;
    let killed = Instant::now();
    rc.nodes
        .iter_mut()
        .find(|n| n.port == primary_port)
        .unwrap()
        .kill();
    // Publishing resumes once the replica is promoted; until then a publish fails (503).
    let mut next = 6;
    while next <= 8 {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "publishing did not resume within 20 s"
        );
        let (status, body) =
            post_json(a.addr, "/api/v1/publish", &json!({"topic": topic, "data": next})).await;
        if status == 200 {
            let seq = body["seq"].as_u64().unwrap();
            assert!(
                seq == next || seq == 1,
                "seq {seq} after the failover: continues, or a new epoch"
            );
            next += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let resumed = killed.elapsed();
    eprintln!("primary killed -> publishing resumed in {resumed:?}");
    assert_eq!(rc.primary_of(&key).port, replica_port, "the replica was promoted");
    wait_readyz(b.addr, 200, Duration::from_secs(20)).await;

    got.extend(recv_data(&mut ws, 3).await);
    // Either every seq once in order, or an explicit reset (a snapshot in a new epoch).
    let seqs: Vec<(String, u64)> = (got.iter())
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_string(),
                v["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let updates: Vec<(String, u64)> = (1..=8).map(|i| ("update".to_string(), i)).collect();
    assert!(
        seqs == updates || seqs.iter().any(|(kind, _)| kind == "snapshot"),
        "no silent gap across the failover: {seqs:?}"
    );
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn publications_lost_in_a_failover_reset_subscribers_explicitly() {
    let rc = RedisCluster::start();
    let topic = "lost.prices";
    let (a, b, mut ws, mut got) = five_published(&rc, "lost", topic).await;
    let key = format!("lost:{{{topic}}}:m");
    let primary_port = rc.primary_of(&key).port;
    let replica_port = rc.replica_of(rc.primary_of(&key)).port;
    let mut rc = rc;
    rc.wait_replicated(primary_port, replica_port);
    // The replica misses 6 and 7, which the primary acknowledges and publishes before it dies:
    // asynchronous replication loses them (stopped, the replica cannot reconnect meanwhile).
    rc.node(replica_port).signal("STOP");
    rc.node(primary_port).cli(&["CLIENT", "KILL", "TYPE", "replica"]);
    publish(a.addr, topic, json!(6)).await;
    publish(a.addr, topic, json!(7)).await;
    got.extend(recv_data(&mut ws, 2).await);
    assert_eq!(
        got.iter().map(|v| v["seq"].as_u64().unwrap()).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>(),
        "6 and 7 were delivered before the failover"
    );
    rc.node(primary_port).kill();
    rc.node(replica_port).signal("CONT");

    // The subscriber is told: a snapshot of what the promoted replica holds, in a new epoch.
    recv_reset(&mut ws, Duration::from_secs(25), 5, &json!(5)).await;
    assert_eq!(rc.primary_of(&key).port, replica_port, "the replica was promoted");
    // New publications continue the new epoch; nothing is taken for the lost 6 and 7.
    wait_readyz(a.addr, 200, Duration::from_secs(20)).await;
    assert_eq!(publish(a.addr, topic, json!("six again")).await, 6);
    let next = recv_json_within(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(
        (&next["type"], &next["seq"], &next["data"]),
        (&json!("update"), &json!(6), &json!("six again"))
    );
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A topic's slot moved to another shard (as `redis-cli --cluster reshard` moves slots): Redis
/// unsubscribes the node from the topic's sharded channel, and the node subscribes again where
/// the slot went, catching up what was published in between; its client sees every seq.
#[tokio::test]
async fn a_topic_whose_slot_moves_keeps_its_subscribers() {
    let rc = RedisCluster::start();
    let (prefix, topic) = ("rs", "reshard.t");
    let (a, _b, mut ws, got) = five_published(&rc, prefix, topic).await;
    assert_eq!(by_topic(&got)[topic], vec![1, 2, 3, 4, 5]);

    let key = format!("{prefix}:{{{topic}}}:m");
    let src = rc.primary_of(&key);
    let slot = src.cli(&["CLUSTER", "KEYSLOT", &key]).trim().to_string();
    let dst = (rc.live())
        .find(|n| n.port != src.port && n.cli(&["ROLE"]).lines().next() == Some("master"))
        .expect("another primary");
    let id = |n: &common::redis::RedisServer| n.cli(&["CLUSTER", "MYID"]).trim().to_string();
    let (src_id, dst_id) = (id(src), id(dst));
    dst.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]);
    src.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]);
    let keys = src.cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
    let keys: Vec<&str> = keys.lines().map(str::trim).filter(|k| !k.is_empty()).collect();
    assert!(keys.len() >= 2, "the topic's keys are in its slot: {keys:?}");
    let port = dst.port.to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().copied());
    let moved = src.cli(&migrate);
    assert!(moved.contains("OK"), "MIGRATE: {moved}");
    for node in [dst, src] {
        node.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
    }
    for node in rc
        .live()
        .filter(|n| n.cli(&["ROLE"]).lines().next() == Some("master"))
    {
        node.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
    }
    assert_eq!(rc.primary_of(&key).port, dst.port, "the slot moved");

    for i in 6..=8 {
        assert_eq!(publish(a.addr, topic, json!(i)).await, i);
    }
    let got = recv_data(&mut ws, 3).await;
    assert_eq!(by_topic(&got)[topic], vec![6, 7, 8], "{got:?}");
}
