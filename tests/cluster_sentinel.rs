//! A cluster on Redis Sentinel (`broker.sentinel`), all real processes on loopback: a primary,
//! one replica and three sentinels. The nodes find the primary through the sentinels; when the
//! primary is killed the sentinels promote the replica and the nodes follow it: not ready while
//! there is no primary, then ready again, publishing resumes and subscribers see no silent gap.

mod common;

use std::time::{Duration, Instant};

use common::redis::SentinelSet;
use common::*;
use serde_json::{json, Value};

fn seqs_of(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|v| v["seq"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn nodes_follow_a_sentinel_failover_without_a_silent_gap() {
    let set = SentinelSet::start();
    let config = set.broker_toml("sentinel");
    let (a, b) = (start(&config).await, start(&config).await);
    wait_ready(a.addr).await;
    wait_ready(b.addr).await;
    let mut ws = connect(b.addr).await;
    subscribe(&mut ws, 1, &["ha.prices"]).await;
    for i in 1..=5 {
        assert_eq!(publish(a.addr, "ha.prices", json!(i)).await, i);
    }
    let mut got: Vec<Value> = Vec::new();
    for _ in 1..=5 {
        got.push(recv_json(&mut ws).await);
    }
    // The replica holds all five before the primary dies: this test is about following the
    // failover, not about writes lost to asynchronous replication.
    let deadline = Instant::now() + Duration::from_secs(10);
    while set.replica.cli(&["HGET", "sentinel:{ha.prices}:m", "s"]).trim() != "5" {
        assert!(
            Instant::now() < deadline,
            "the replica did not get seq 5 within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let old = set.primary.port;
    let killed = Instant::now();
    let mut set = set;
    set.primary.kill();
    wait_readyz(a.addr, 503, Duration::from_secs(5)).await;
    wait_readyz(a.addr, 200, Duration::from_secs(25)).await;
    wait_readyz(b.addr, 200, Duration::from_secs(25)).await;
    let failover = killed.elapsed();
    assert_eq!(
        set.primary_port(),
        Some(set.replica.port),
        "the sentinels promoted the replica"
    );
    assert_ne!(set.primary_port(), Some(old));
    eprintln!("primary killed -> both nodes ready on the new primary in {failover:?}");

    for i in 6..=8 {
        assert_eq!(
            publish(a.addr, "ha.prices", json!(i)).await,
            i,
            "the global seq continues"
        );
    }
    assert_eq!(publish(b.addr, "ha.prices", json!(9)).await, 9);
    while got.iter().filter(|v| v["type"] == "update").count() < 9 {
        got.push(recv_json_within(&mut ws, Duration::from_secs(10)).await);
    }
    let seqs: Vec<(String, u64, Value)> = (got.iter())
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_string(),
                v["seq"].as_u64().unwrap(),
                v["data"].clone(),
            )
        })
        .collect();
    let expected: Vec<(String, u64, Value)> = (1..=9).map(|i| ("update".to_string(), i, json!(i))).collect();
    assert_eq!(
        seqs, expected,
        "every publication once, in order, across the failover"
    );
    expect_silence(&mut ws, Duration::from_millis(300)).await;

    // A client that recovers on the other node after the failover gets nothing twice.
    let mut late = connect(a.addr).await;
    let (_, epoch) = {
        let reply = request(
            &mut late,
            json!({"op": "subscribe", "id": 1, "topics": ["ha.prices"]}),
        )
        .await;
        let p = &reply["positions"]["ha.prices"];
        (
            p["seq"].as_u64().unwrap(),
            p["epoch"].as_str().unwrap().to_string(),
        )
    };
    let snapshot = recv_json(&mut late).await;
    assert_eq!(
        (&snapshot["type"], &snapshot["seq"]),
        (&json!("snapshot"), &json!(9))
    );
    assert!(!epoch.is_empty());
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn publications_lost_in_a_failover_reset_subscribers_explicitly() {
    let set = SentinelSet::start();
    let config = set.broker_toml("lost");
    let (a, b) = (start(&config).await, start(&config).await);
    wait_ready(a.addr).await;
    wait_ready(b.addr).await;
    let mut ws = connect(b.addr).await;
    subscribe(&mut ws, 1, &["ha.lost"]).await;
    for i in 1..=5 {
        publish(a.addr, "ha.lost", json!(i)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while set.replica.cli(&["HGET", "lost:{ha.lost}:m", "s"]).trim() != "5" {
        assert!(
            Instant::now() < deadline,
            "the replica did not get seq 5 within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The replica misses 6 and 7, which the primary acknowledges and publishes before it dies:
    // asynchronous replication loses them. (Stopped, the replica cannot reconnect to the
    // primary between the killed link and the primary's death.)
    set.replica.signal("STOP");
    set.primary.cli(&["CLIENT", "KILL", "TYPE", "replica"]);
    publish(a.addr, "ha.lost", json!(6)).await;
    publish(a.addr, "ha.lost", json!(7)).await;
    let mut got: Vec<Value> = Vec::new();
    while got.len() < 7 {
        got.push(recv_json(&mut ws).await);
    }
    let mut set = set;
    set.primary.kill();
    set.replica.signal("CONT");
    wait_readyz(a.addr, 503, Duration::from_secs(5)).await;
    wait_readyz(a.addr, 200, Duration::from_secs(25)).await;
    wait_readyz(b.addr, 200, Duration::from_secs(25)).await;
    assert_eq!(set.primary_port(), Some(set.replica.port));

    // The subscriber is told: a snapshot of what the new primary holds, in a new epoch.
    let epoch = recv_reset(&mut ws, Duration::from_secs(10), 5, &json!(5)).await;
    // New publications continue the new epoch; nothing is taken for the lost 6 and 7.
    assert_eq!(publish(a.addr, "ha.lost", json!("six again")).await, 6);
    let next = recv_json(&mut ws).await;
    assert_eq!(
        (&next["type"], &next["seq"], &next["data"]),
        (&json!("update"), &json!(6), &json!("six again"))
    );
    assert!(!epoch.is_empty());
    assert_eq!(
        seqs_of(&got),
        (1..=7).collect::<Vec<_>>(),
        "6 and 7 were delivered before the failover"
    );
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
