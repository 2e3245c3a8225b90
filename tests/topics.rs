//! Bounded topics (issue 14, item 3): `limits.max_topics` refuses new topics over HTTP and
//! WebSocket with `too_many_topics` (HTTP 503), idle topics are dropped after `topics.idle_ttl`
//! (gauge, counter, 404, room freed, a new epoch on re-creation, never while subscribed), and the
//! topic listing pages with `limit` / `after`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[track_caller]
fn assert_too_many_topics(status: u16, body: &Value) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "too_many_topics", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

async fn batch(addr: SocketAddr, topics: &[&str]) -> (u16, Value) {
    let messages: Vec<Value> = topics.iter().map(|t| json!({"topic": t, "data": 1})).collect();
    post_json(addr, "/api/v1/publish", &json!({ "messages": messages })).await
}

/// Waits until `GET /api/v1/topics/{topic}` is a 404.
async fn wait_gone(addr: SocketAddr, topic: &str) {
    let what = format!("{topic} evicted");
    eventually(&what, RECV_TIMEOUT, || async move {
        get_topic(addr, topic).await.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_topics_refuses_new_topics_over_http_and_websocket() {
    let server = start("[limits]\nmax_topics = 3\n").await;
    let addr = server.addr;

    assert_eq!(
        publish_batch(addr, &[("t.a", json!(1)), ("t.b", json!(1))]).await,
        [1, 1]
    );
    // Two new topics where one fits: the whole batch is refused, nothing of it is published.
    let (status, body) = batch(addr, &["t.a", "t.c", "t.d"]).await;
    assert_too_many_topics(status, &body);
    assert_eq!(get_topic(addr, "t.a").await.unwrap()["seq"], 1, "all or none");
    assert!(get_topic(addr, "t.c").await.is_none());
    assert_eq!(metric_value(addr, "tickwire_topics").await, 2.0);
    // Single publish: the third topic fits, a fourth does not; existing topics still publish.
    assert_eq!(publish(addr, "t.c", json!(1)).await, 1);
    let (status, body) = post_json(addr, "/api/v1/publish", &json!({"topic": "t.d", "data": 1})).await;
    assert_too_many_topics(status, &body);
    assert_eq!(publish(addr, "t.a", json!(2)).await, 2);

    // WebSocket publish (anonymous clients may publish to chat.>) gets the same code.
    let mut ws = connect(addr).await;
    let reply = request(
        &mut ws,
        json!({"op": "publish", "id": 1, "topic": "chat.flood", "data": 1}),
    )
    .await;
    assert_error(&reply, "too_many_topics", Some(1));
    // An exact subscription to a missing topic would create it: refused whole, as a request
    // error, and the connection holds none of it.
    let reply = request(
        &mut ws,
        json!({"op": "subscribe", "id": 2, "topics": ["t.a", "t.nope"]}),
    )
    .await;
    assert_error(&reply, "too_many_topics", Some(2));
    assert_eq!(metric_value(addr, "tickwire_subscriptions").await, 0.0);
    // Existing topics and patterns create nothing: allowed.
    subscribe(&mut ws, 3, &["t.a", "t.*"]).await;
    let snapshots = recv_until_silence(&mut ws, Duration::from_millis(200)).await;
    assert_eq!(snapshots.len(), 3, "one snapshot per topic: {snapshots:?}");
    assert_eq!(metric_value(addr, "tickwire_topics").await, 3.0);
    let listed: Vec<Value> = get_json(addr, "/api/v1/topics").await.1["topics"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(listed.len(), 3, "{listed:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_topics_are_evicted_unless_subscribed() {
    let server = start("[limits]\nmax_topics = 3\n[topics]\nidle_ttl = \"400ms\"\n").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    publish_batch(
        addr,
        &[
            ("i.gone", json!(1)),
            ("i.kept", json!(1)),
            ("j.pattern", json!(1)),
        ],
    )
    .await;
    // An exact subscriber and a pattern subscriber keep their topics.
    subscribe(&mut ws, 1, &["i.kept", "j.*"]).await;
    assert_eq!(
        recv_until_silence(&mut ws, Duration::from_millis(200))
            .await
            .len(),
        2,
        "snapshots"
    );
    let (status, _) = post_json(addr, "/api/v1/publish", &json!({"topic": "i.new", "data": 1})).await;
    assert_eq!(status, 503, "full");

    wait_gone(addr, "i.gone").await;
    assert_eq!(metric_value(addr, "tickwire_topics").await, 2.0);
    assert_eq!(metric_value(addr, "tickwire_topics_evicted_total").await, 1.0);
    let (status, _) = get_json(addr, "/api/v1/topics/i.gone/history").await;
    assert_eq!(status, 404, "history left with the topic");
    // Well past the TTL, the subscribed topics are still there, with their values.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(get_topic(addr, "i.kept").await.unwrap()["seq"], 1);
    assert_eq!(get_topic(addr, "j.pattern").await.unwrap()["seq"], 1);
    // Eviction made room.
    assert_eq!(publish(addr, "i.new", json!(1)).await, 1);
    // Once unsubscribed, a topic goes the same way.
    unsubscribe(&mut ws, 2, &["i.kept"]).await;
    wait_gone(addr, "i.kept").await;
    assert!(get_topic(addr, "j.pattern").await.is_some());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_again_after_eviction_starts_a_new_epoch() {
    let server = start("[topics]\nidle_ttl = \"300ms\"\n").await;
    let addr = server.addr;
    publish_batch(addr, &[("e.t", json!(1)), ("e.t", json!(2)), ("e.t", json!(3))]).await;
    let (_, page) = get_json(addr, "/api/v1/topics/e.t/history").await;
    let old_epoch = page["epoch"].as_str().unwrap().to_string();
    assert_eq!(page["seq"], 3);

    wait_gone(addr, "e.t").await;
    assert_eq!(publish(addr, "e.t", json!("new")).await, 1, "a new stream");

    let mut ws = connect(addr).await;
    let reply = subscribe_since(&mut ws, 1, &["e.t"], json!({"e.t": pos(3, &old_epoch)})).await;
    assert_eq!(reply["recovered"]["e.t"], false, "{reply}");
    let (seq, epoch) = position(&reply, "e.t");
    assert_eq!(seq, 1);
    assert_ne!(epoch, old_epoch, "{reply}");
    assert_snapshot(&recv_json(&mut ws).await, "e.t", 1, &json!("new"));
    server.stop().await.unwrap();
}

/// Walks the listing with `after`, returning every row's name and the number of pages.
async fn walk(addr: SocketAddr, limit: usize) -> (Vec<String>, usize) {
    let (mut names, mut pages, mut after) = (Vec::new(), 0, None::<String>);
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/topics?limit={limit}&after={a}"),
            None => format!("/api/v1/topics?limit={limit}"),
        };
        let (status, body) = get_json(addr, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let rows = body["topics"].as_array().unwrap();
        assert!(rows.len() <= limit, "{path}: {} rows", rows.len());
        names.extend(rows.iter().map(|r| r["topic"].as_str().unwrap().to_string()));
        pages += 1;
        match body["next"].as_str() {
            Some(next) => {
                assert_eq!(
                    rows.last().unwrap()["topic"],
                    next,
                    "next is the page's last topic"
                );
                after = Some(next.to_string());
            }
            None => {
                assert!(body["next"].is_null(), "{body}");
                return (names, pages);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_walk_every_topic_exactly_once() {
    let server = start("").await;
    let addr = server.addr;
    let all: Vec<String> = (0..250).map(|i| format!("p.t{:03}", (i * 7) % 250)).collect();
    let messages: Vec<(&str, Value)> = all.iter().map(|t| (t.as_str(), json!(1))).collect();
    publish_batch(addr, &messages).await;

    let (names, pages) = walk(addr, 70).await;
    let expected: Vec<String> = all.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    assert_eq!(names, expected, "every topic once, in name order");
    assert_eq!(pages, 4);
    // Exactly a page's worth left: the last full page says there is no more.
    let (names, pages) = walk(addr, 125).await;
    assert_eq!((names.len(), pages), (250, 2));

    // Default page: 100 rows.
    let (_, body) = get_json(addr, "/api/v1/topics").await;
    assert_eq!(body["topics"].as_array().unwrap().len(), 100);
    assert_eq!(body["next"], "p.t099");
    assert_eq!(
        body["topics"][0],
        json!({"topic": "p.t000", "seq": 1, "subscribers": 0})
    );
    // `after` need not name an existing topic.
    let (_, body) = get_json(addr, "/api/v1/topics?after=p.t2&limit=1").await;
    assert_eq!(body["topics"][0]["topic"], "p.t200");
    let (_, body) = get_json(addr, "/api/v1/topics?after=z").await;
    assert_eq!(body, json!({"topics": [], "next": null}));

    for (query, code) in [
        ("limit=0", "bad_request"),
        ("limit=1001", "bad_request"),
        ("limit=x", "bad_request"),
        ("offset=5", "bad_request"),
        ("after=a..b", "invalid_topic"),
    ] {
        let (status, body) = get_json(addr, &format!("/api/v1/topics?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
    }
    let (status, body) = get_json(addr, "/api/v1/topics?limit=1000").await;
    assert_eq!(status, 200);
    assert_eq!(body["topics"].as_array().unwrap().len(), 250);
    server.stop().await.unwrap();
}
