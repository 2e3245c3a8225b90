//! Subscribe / snapshot / update / unsubscribe semantics, wildcards, seq numbering, request ids.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_gets_snapshot_then_updates() {
    let server = start("").await;
    let addr = server.addr;

    // Two publications before anyone subscribes: the snapshot must carry the latest one.
    assert_eq!(publish(addr, "prices.BTC-USD", json!({"last": 1.5})).await, 1);
    assert_eq!(
        publish(addr, "prices.BTC-USD", json!({"last": 2.5, "n": [1, 2]})).await,
        2
    );
    // A topic that matches none of the subscriptions below.
    assert_eq!(publish(addr, "other.BTC-USD", json!({"x": 1})).await, 1);

    let mut ws = connect(addr).await;
    // Two overlapping subscriptions and one for a topic that has no value yet.
    subscribe(&mut ws, 1, &["prices.BTC-USD", "prices.*", "prices.ETH-USD"]).await;

    let snap = recv_json(&mut ws).await;
    assert_eq!(snap["type"], "snapshot", "expected a snapshot, got {snap}");
    assert_eq!(snap["topic"], "prices.BTC-USD");
    assert_eq!(snap["seq"], 2);
    assert_eq!(snap["data"], json!({"last": 2.5, "n": [1, 2]}));
    assert_recent_ts(&snap);
    // One snapshot per topic, even though two subscriptions match it; none for other topics.
    expect_silence(&mut ws, SILENCE).await;

    // The snapshot agrees with the HTTP view of the topic.
    let current = get_topic(addr, "prices.BTC-USD").await.expect("topic exists");
    assert_eq!(current["topic"], "prices.BTC-USD");
    assert_eq!(current["seq"], 2);
    assert_eq!(current["ts"], snap["ts"]);
    assert_eq!(current["data"], snap["data"]);

    // A live update after an HTTP publish, data passed through unchanged.
    let data = json!({"bid": 1.25, "ask": 1.5, "nested": {"a": [true, null, "s"]}, "big": 12345678901234u64});
    assert_eq!(publish(addr, "prices.BTC-USD", data.clone()).await, 3);
    let upd = recv_json(&mut ws).await;
    assert_eq!(assert_update(&upd, "prices.BTC-USD"), 3);
    assert_eq!(upd["data"], data);
    assert_recent_ts(&upd);

    // A topic first published after subscribing arrives as an update with seq 1.
    publish(addr, "prices.ETH-USD", json!(7)).await;
    let upd = recv_json(&mut ws).await;
    assert_eq!(assert_update(&upd, "prices.ETH-USD"), 1);
    assert_eq!(upd["data"], json!(7));
    expect_silence(&mut ws, SILENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_only_for_new_subscriptions_matching_topics() {
    let server = start("").await;
    let addr = server.addr;
    publish(addr, "a.one", json!(1)).await;
    publish(addr, "a.two", json!(2)).await;
    publish(addr, "a.two.deep", json!(3)).await;
    publish(addr, "b.one", json!(4)).await;

    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["a.*"]).await;
    let mut got = vec![];
    for _ in 0..2 {
        let s = recv_json(&mut ws).await;
        assert_eq!(s["type"], "snapshot", "{s}");
        assert_eq!(s["seq"], 1, "{s}");
        got.push((s["topic"].as_str().unwrap().to_string(), s["data"].clone()));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![("a.one".to_string(), json!(1)), ("a.two".to_string(), json!(2))]
    );
    expect_silence(&mut ws, SILENCE).await;

    // `>` picks up the deeper topic too, and `b.one` via an exact subscription.
    subscribe(&mut ws, 2, &["a.two.>", "b.one"]).await;
    let mut got = vec![];
    for _ in 0..2 {
        let s = recv_json(&mut ws).await;
        assert_eq!(s["type"], "snapshot", "{s}");
        got.push(s["topic"].as_str().unwrap().to_string());
    }
    got.sort();
    assert_eq!(got, vec!["a.two.deep", "b.one"]);
    expect_silence(&mut ws, SILENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_matches_exactly_one_token() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["prices.*"]).await;

    // Non-matches: too few tokens, too many tokens, another prefix.
    publish(addr, "prices", json!("no")).await;
    publish(addr, "prices.BTC-USD.extra", json!("no")).await;
    publish(addr, "other.BTC-USD", json!("no")).await;
    publish(addr, "pricesX.BTC", json!("no")).await;
    // Matches.
    publish(addr, "prices.BTC-USD", json!("yes1")).await;
    publish(addr, "prices.a_b:c", json!("yes2")).await;

    let mut got = vec![];
    for _ in 0..2 {
        let u = recv_json(&mut ws).await;
        assert_eq!(u["type"], "update", "{u}");
        got.push((u["topic"].clone(), u["data"].clone()));
    }
    got.sort_by_key(|(t, _)| t.to_string());
    assert_eq!(
        got,
        vec![
            (json!("prices.BTC-USD"), json!("yes1")),
            (json!("prices.a_b:c"), json!("yes2"))
        ]
    );
    expect_silence(&mut ws, SILENCE).await;

    // `*` in the middle.
    subscribe(&mut ws, 2, &["*.mid.end"]).await;
    publish(addr, "x.mid.end", json!(1)).await;
    publish(addr, "x.y.mid.end", json!(2)).await;
    publish(addr, "mid.end", json!(3)).await;
    let u = recv_json(&mut ws).await;
    assert_eq!(assert_update(&u, "x.mid.end"), 1);
    expect_silence(&mut ws, SILENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_wildcard_matches_one_or_more_tokens() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["chat.>"]).await;

    // Non-matches: the prefix alone, another prefix.
    publish(addr, "chat", json!("no")).await;
    publish(addr, "chatroom.a", json!("no")).await;
    publish(addr, "x.chat.a", json!("no")).await;
    // Matches at depth 1, 2 and 4.
    publish(addr, "chat.a", json!(1)).await;
    publish(addr, "chat.a.b", json!(2)).await;
    publish(addr, "chat.a.b.c.d", json!(3)).await;

    let mut got = vec![];
    for _ in 0..3 {
        let u = recv_json(&mut ws).await;
        assert_eq!(u["type"], "update", "{u}");
        assert_eq!(u["seq"], 1, "{u}");
        got.push(u["topic"].as_str().unwrap().to_string());
    }
    got.sort();
    assert_eq!(got, vec!["chat.a", "chat.a.b", "chat.a.b.c.d"]);
    expect_silence(&mut ws, SILENCE).await;

    // A lone `>` matches everything.
    let mut all = connect(addr).await;
    subscribe(&mut all, 1, &[">"]).await;
    // Snapshots for all 6 existing topics.
    let mut snaps = vec![];
    for _ in 0..6 {
        let s = recv_json(&mut all).await;
        assert_eq!(s["type"], "snapshot", "{s}");
        snaps.push(s["topic"].as_str().unwrap().to_string());
    }
    snaps.sort();
    assert_eq!(
        snaps,
        vec![
            "chat",
            "chat.a",
            "chat.a.b",
            "chat.a.b.c.d",
            "chatroom.a",
            "x.chat.a"
        ]
    );
    expect_silence(&mut all, SILENCE).await;
    publish(addr, "z", json!(0)).await;
    assert_eq!(assert_update(&recv_json(&mut all).await, "z"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_deliver_once() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(
        &mut ws,
        1,
        &["prices.BTC-USD", "prices.*", "prices.>", "*.BTC-USD", "*.*", ">"],
    )
    .await;

    for i in 1..=3u64 {
        assert_eq!(publish(addr, "prices.BTC-USD", json!({"i": i})).await, i);
        let u = recv_json(&mut ws).await;
        assert_eq!(assert_update(&u, "prices.BTC-USD"), i);
        assert_eq!(u["data"], json!({"i": i}));
        expect_silence(&mut ws, SILENCE).await;
    }

    // The same for a snapshot on a second connection.
    let mut ws2 = connect(addr).await;
    subscribe(&mut ws2, 5, &["prices.BTC-USD", "prices.*", ">"]).await;
    let s = recv_json(&mut ws2).await;
    assert_eq!(s["type"], "snapshot");
    assert_eq!(s["seq"], 3);
    expect_silence(&mut ws2, SILENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["prices.*", "prices.BTC-USD"]).await;

    publish(addr, "prices.ETH-USD", json!(1)).await;
    assert_update(&recv_json(&mut ws).await, "prices.ETH-USD");

    unsubscribe(&mut ws, 2, &["prices.*"]).await;
    publish(addr, "prices.ETH-USD", json!(2)).await;
    expect_silence(&mut ws, SILENCE).await;

    // The exact subscription is still in place.
    publish(addr, "prices.BTC-USD", json!(3)).await;
    let u = recv_json(&mut ws).await;
    assert_update(&u, "prices.BTC-USD");
    assert_eq!(u["data"], json!(3));
    expect_silence(&mut ws, SILENCE).await;

    unsubscribe(&mut ws, 3, &["prices.BTC-USD"]).await;
    publish(addr, "prices.BTC-USD", json!(4)).await;
    publish(addr, "prices.ETH-USD", json!(5)).await;
    expect_silence(&mut ws, SILENCE).await;

    // The listing no longer counts this connection.
    let entry = topic_listing(addr, "prices.BTC-USD").await.expect("listed");
    assert_eq!(entry["subscribers"], 0, "{entry}");
    // Still usable, and resubscribing works again (with a snapshot of the latest value).
    assert_usable(&mut ws, 9).await;
    subscribe(&mut ws, 4, &["prices.BTC-USD"]).await;
    let s = recv_json(&mut ws).await;
    assert_eq!(s["type"], "snapshot");
    // prices.BTC-USD was published twice: data 3 (seq 1) and data 4 (seq 2).
    assert_eq!(s["seq"], 2);
    assert_eq!(s["data"], json!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_twice_is_idempotent() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["news.x"]).await;
    subscribe(&mut ws, 2, &["news.x"]).await;
    subscribe(&mut ws, 3, &["news.x", "news.x"]).await;

    publish(addr, "news.x", json!("once")).await;
    let u = recv_json(&mut ws).await;
    assert_eq!(assert_update(&u, "news.x"), 1);
    expect_silence(&mut ws, SILENCE).await;

    let entry = topic_listing(addr, "news.x").await.expect("listed");
    assert_eq!(entry["seq"], 1);
    assert_eq!(entry["subscribers"], 1, "{entry}");

    // A single unsubscribe removes it.
    unsubscribe(&mut ws, 4, &["news.x"]).await;
    publish(addr, "news.x", json!("none")).await;
    expect_silence(&mut ws, SILENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_increments_by_one_per_topic() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["s.>"]).await;

    for i in 1..=20u64 {
        assert_eq!(publish(addr, "s.a", json!(i)).await, i, "HTTP seq for s.a");
        if i % 4 == 0 {
            // Another topic has its own counter.
            assert_eq!(publish(addr, "s.b", json!(i)).await, i / 4, "HTTP seq for s.b");
        }
    }
    let (mut next_a, mut next_b) = (1u64, 1u64);
    for _ in 0..25 {
        let u = recv_json(&mut ws).await;
        match u["topic"].as_str() {
            Some("s.a") => {
                assert_eq!(u["seq"], next_a, "{u}");
                assert_eq!(u["data"], json!(next_a));
                next_a += 1;
            }
            Some("s.b") => {
                assert_eq!(u["seq"], next_b, "{u}");
                assert_eq!(u["data"], json!(next_b * 4));
                next_b += 1;
            }
            _ => panic!("unexpected {u}"),
        }
    }
    assert_eq!((next_a, next_b), (21, 6));
    expect_silence(&mut ws, SILENCE).await;

    let entry = topic_listing(addr, "s.a").await.expect("listed");
    assert_eq!(entry["seq"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_publish_in_order() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["b.*"]).await;

    let seqs = publish_batch(
        addr,
        &[
            ("b.x", json!({"n": 1})),
            ("b.y", json!({"n": 2})),
            ("b.x", json!({"n": 3})),
            ("b.x", json!({"n": 4})),
            ("b.y", json!({"n": 5})),
        ],
    )
    .await;
    assert_eq!(seqs, vec![1, 1, 2, 3, 2]);

    let mut got = vec![];
    for _ in 0..5 {
        let u = recv_json(&mut ws).await;
        assert_eq!(u["type"], "update", "{u}");
        got.push((
            u["topic"].as_str().unwrap().to_string(),
            u["seq"].as_u64().unwrap(),
            u["data"]["n"].as_u64().unwrap(),
        ));
    }
    // Per topic, updates arrive in publication order.
    let xs: Vec<_> = got.iter().filter(|g| g.0 == "b.x").map(|g| (g.1, g.2)).collect();
    let ys: Vec<_> = got.iter().filter(|g| g.0 == "b.y").map(|g| (g.1, g.2)).collect();
    assert_eq!(xs, vec![(1, 1), (2, 3), (3, 4)]);
    assert_eq!(ys, vec![(1, 2), (2, 5)]);
    expect_silence(&mut ws, SILENCE).await;

    assert_eq!(get_topic(addr, "b.x").await.unwrap()["data"], json!({"n": 4}));
    assert_eq!(get_topic(addr, "b.y").await.unwrap()["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_publish_reaches_subscribers() {
    let server = start("").await;
    let addr = server.addr;
    let mut sub = connect(addr).await;
    subscribe(&mut sub, 1, &["chat.lobby"]).await;
    let mut publisher = connect(addr).await;

    let reply = request(
        &mut publisher,
        json!({"op": "publish", "id": 3, "topic": "chat.lobby", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"type": "published", "id": 3, "topic": "chat.lobby", "seq": 1})
    );
    let u = recv_json(&mut sub).await;
    assert_eq!(assert_update(&u, "chat.lobby"), 1);
    assert_eq!(u["data"], json!({"text": "hi"}));

    // Deeper chat topic, and the seq continues after an HTTP publish.
    assert_eq!(publish(addr, "chat.lobby", json!(2)).await, 2);
    let reply = request(
        &mut publisher,
        json!({"op": "publish", "id": 4, "topic": "chat.lobby", "data": [3]}),
    )
    .await;
    assert_eq!(reply["seq"], 3, "{reply}");
    assert_eq!(reply["type"], "published");
    assert_eq!(assert_update(&recv_json(&mut sub).await, "chat.lobby"), 2);
    let u = recv_json(&mut sub).await;
    assert_eq!(assert_update(&u, "chat.lobby"), 3);
    assert_eq!(u["data"], json!([3]));

    let reply = request(
        &mut publisher,
        json!({"op": "publish", "id": 5, "topic": "chat.room.deep", "data": null}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"type": "published", "id": 5, "topic": "chat.room.deep", "seq": 1})
    );
    assert_eq!(get_topic(addr, "chat.lobby").await.unwrap()["data"], json!([3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_absent_without_id() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;

    assert_eq!(
        request(&mut ws, json!({"op": "ping", "id": 4})).await,
        json!({"type": "pong", "id": 4})
    );
    assert_eq!(
        request(&mut ws, json!({"op": "ping", "id": 123456789012i64})).await,
        json!({"type": "pong", "id": 123456789012i64})
    );
    assert_eq!(
        request(&mut ws, json!({"op": "ping", "id": 0})).await,
        json!({"type": "pong", "id": 0})
    );
    assert_eq!(
        request(&mut ws, json!({"op": "ping"})).await,
        json!({"type": "pong"})
    );
    assert_eq!(
        without_positions(request(&mut ws, json!({"op": "subscribe", "topics": ["a.b"]})).await),
        json!({"type": "subscribed", "topics": ["a.b"]})
    );
    assert_eq!(
        request(&mut ws, json!({"op": "unsubscribe", "topics": ["a.b"]})).await,
        json!({"type": "unsubscribed", "topics": ["a.b"]})
    );
    assert_eq!(
        request(&mut ws, json!({"op": "publish", "topic": "chat.x", "data": 1})).await,
        json!({"type": "published", "topic": "chat.x", "seq": 1})
    );
    // Pipelined requests are answered in order.
    for id in 10..20 {
        send_json(&mut ws, json!({"op": "ping", "id": id})).await;
    }
    for id in 10..20 {
        assert_eq!(recv_json(&mut ws).await, json!({"type": "pong", "id": id}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_500_to_one_topic_all_delivered_to_reading_client() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["prices.BURST"]).await;

    let msgs: Vec<(&str, serde_json::Value)> = (1..=500u64)
        .map(|i| ("prices.BURST", json!({"i": i, "pad": "x".repeat(100)})))
        .collect();

    // Read concurrently with the publish, as a fast client would.
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(500);
        while got.len() < 500 {
            let u = recv_json(&mut ws).await;
            let seq = assert_update(&u, "prices.BURST");
            assert_eq!(u["data"]["i"], seq, "data does not belong to seq: {u}");
            got.push(seq);
        }
        expect_silence(&mut ws, SILENCE).await;
        got
    });
    let seqs = publish_batch(addr, &msgs).await;
    assert_eq!(seqs, (1..=500).collect::<Vec<u64>>());
    let got = reader.await.expect("reader");
    assert_eq!(got, (1..=500).collect::<Vec<u64>>(), "every update, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_clients_receive_one_publish() {
    let _ = rlimit::increase_nofile_limit(16_384);
    let server = start("").await;
    let addr = server.addr;
    const N: usize = 1000;

    // Connect and subscribe in waves so as not to overflow the accept backlog.
    let mut clients = Vec::with_capacity(N);
    for wave in 0..(N / 100) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..100 {
            let id = (wave * 100 + i) as i64;
            set.spawn(async move {
                let mut ws = connect(addr).await;
                subscribe(&mut ws, id, &["fanout.all"]).await;
                ws
            });
        }
        while let Some(ws) = set.join_next().await {
            clients.push(ws.expect("client task"));
        }
    }
    assert_eq!(clients.len(), N);
    let entry = topic_listing(addr, "fanout.all").await;
    if let Some(entry) = entry {
        assert_eq!(entry["subscribers"], N as u64, "{entry}");
    }

    let seq = publish(addr, "fanout.all", json!({"hello": "everyone"})).await;
    assert_eq!(seq, 1);

    let mut set = tokio::task::JoinSet::new();
    for mut ws in clients {
        set.spawn(async move {
            let u = recv_json_within(&mut ws, std::time::Duration::from_secs(15)).await;
            assert_eq!(assert_update(&u, "fanout.all"), 1);
            assert_eq!(u["data"], json!({"hello": "everyone"}));
            ws
        });
    }
    let mut received = 0;
    let mut keep = vec![];
    while let Some(r) = set.join_next().await {
        keep.push(r.expect("a client did not receive the publication"));
        received += 1;
    }
    assert_eq!(received, N);
    let entry = topic_listing(addr, "fanout.all").await.expect("listed");
    assert_eq!(entry["subscribers"], N as u64, "{entry}");
}

/// A pattern named twice in one request counts once (one subscription, one snapshot, one
/// delivery per update) while the reply echoes the request as sent; unsubscribing it twice in
/// one request ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_pattern_is_one_subscription() {
    let server = start("").await;
    let addr = server.addr;
    publish(addr, "dup.a", json!(1)).await;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["dup.*", "dup.a", "dup.*"]).await;
    let snapshot = recv_json(&mut ws).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    publish(addr, "dup.a", json!(2)).await;
    assert_eq!(assert_update(&recv_json(&mut ws).await, "dup.a"), 2);
    expect_silence(&mut ws, std::time::Duration::from_millis(200)).await;
    assert_eq!(metric_value(addr, "tickwire_subscriptions").await, 2.0);
    unsubscribe(&mut ws, 2, &["dup.*", "dup.a", "dup.*"]).await;
    assert_eq!(metric_value(addr, "tickwire_subscriptions").await, 0.0);
    publish(addr, "dup.a", json!(3)).await;
    expect_silence(&mut ws, std::time::Duration::from_millis(200)).await;
}

/// A pattern over more topics than `limits.max_catch_up_topics` subscribes to all of them, but
/// the reply brings only that many up to date (position and snapshot) and says `truncated`;
/// topics named in `since` are caught up beyond the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_catches_up_at_most_max_catch_up_topics() {
    let server = start("[limits]\nmax_catch_up_topics = 3\n").await;
    let addr = server.addr;
    for i in 1..=5 {
        publish(addr, &format!("wide.t{i}"), json!(i)).await;
    }
    let mut ws = connect(addr).await;
    let reply = request(&mut ws, json!({"op":"subscribe","id":1,"topics":["wide.*"]})).await;
    assert_eq!(reply["truncated"], true, "{reply}");
    let positions = reply["positions"].as_object().expect("positions").clone();
    assert_eq!(positions.len(), 3, "{reply}");
    for _ in 0..3 {
        let snapshot = recv_json(&mut ws).await;
        assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
        let topic = snapshot["topic"].as_str().unwrap();
        assert!(
            positions.contains_key(topic),
            "a snapshot for a topic without position: {snapshot}"
        );
    }
    expect_silence(&mut ws, std::time::Duration::from_millis(200)).await;
    // Every matching topic is subscribed to, with or without its catch-up.
    for i in 1..=5 {
        publish(addr, &format!("wide.t{i}"), json!(i * 10)).await;
        let update = recv_json(&mut ws).await;
        assert_eq!(update["topic"], format!("wide.t{i}"), "{update}");
        assert_eq!(assert_update(&update, &format!("wide.t{i}")), 2);
    }
    // Within the cap nothing is said.
    let reply = request(&mut ws, json!({"op":"subscribe","id":2,"topics":["wide.t1"]})).await;
    assert!(reply.get("truncated").is_none(), "{reply}");
    // A recovery is always answered, even past the cap.
    let mut other = connect(addr).await;
    let epoch = positions.values().next().unwrap()["epoch"].clone();
    let since: serde_json::Map<String, serde_json::Value> = (1..=5)
        .map(|i| (format!("wide.t{i}"), json!({"seq": 1, "epoch": epoch})))
        .collect();
    let reply = request(
        &mut other,
        json!({"op":"subscribe","id":3,"topics":["wide.*"],"since":since}),
    )
    .await;
    assert_eq!(reply["positions"].as_object().unwrap().len(), 5, "{reply}");
    assert_eq!(reply["recovered"].as_object().unwrap().len(), 5, "{reply}");
}

/// `limits.max_topics_per_connection` bounds the topics one connection receives, exact names
/// and pattern matches together: a subscribe that would go past it is refused whole (nothing
/// registered), one that fits works, and a topic created later that would take a connection
/// past it closes that connection with 4009 instead of leaving it without the topic's updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_per_connection_are_bounded() {
    let server = start("[limits]\nmax_topics_per_connection = 4\n").await;
    let addr = server.addr;
    for i in 1..=5 {
        publish(addr, &format!("many.t{i}"), json!(i)).await;
    }
    let mut ws = connect(addr).await;
    // Five topics match: refused, and nothing of it stays behind.
    let reply = request(&mut ws, json!({"op":"subscribe","id":1,"topics":["many.*"]})).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "too_many_subscriptions", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("max_topics_per_connection"),
        "{reply}"
    );
    publish(addr, "many.t1", json!(10)).await;
    expect_silence(&mut ws, std::time::Duration::from_millis(200)).await;
    // Exact names count too: three plus a pattern over two more is five.
    let reply = request(
        &mut ws,
        json!({"op":"subscribe","id":2,"topics":["many.t1","many.t2","many.t3"]}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    for _ in 0..3 {
        assert_eq!(recv_json(&mut ws).await["type"], "snapshot");
    }
    let reply = request(
        &mut ws,
        json!({"op":"subscribe","id":3,"topics":["other.>", "many.t4", "many.t5"]}),
    )
    .await;
    assert_eq!(reply["code"], "too_many_subscriptions", "{reply}");
    // A pattern over nothing yet fits; the fourth topic it brings fits; the fifth does not.
    let reply = request(&mut ws, json!({"op":"subscribe","id":4,"topics":["other.>"]})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    publish(addr, "other.a", json!(1)).await;
    assert_eq!(recv_json(&mut ws).await["topic"], "other.a");
    publish(addr, "other.b", json!(2)).await;
    let (_, (code, reason)) = recv_close_within(&mut ws, std::time::Duration::from_secs(5)).await;
    assert_eq!((code, reason.as_str()), (4009, "too many topics"));
    // Counted once the connection's task has ended, just after the close frame went out.
    let label = "tickwire_disconnects_total{reason=\"too_many_topics\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while metric_value(addr, label).await != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "not counted as too_many_topics"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The closed connection's records are gone: a new one may hold four topics again.
    let mut again = connect(addr).await;
    let reply = request(
        &mut again,
        json!({"op":"subscribe","id":1,"topics":["many.t1","many.t2","many.t3","other.a"]}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

/// Clients that vanish (their TCP connection closed without a close frame, as when a network
/// drops them all at once) are torn down off the connection tasks, by the reaper: they leave
/// every topic (exact and pattern), their places are given back at once, and the server keeps
/// delivering to the clients that stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_leave_their_topics() {
    let server = start("").await;
    let addr = server.addr;
    publish(addr, "gone.a", json!(1)).await;
    let mut stays = connect(addr).await;
    subscribe(&mut stays, 1, &["gone.a"]).await;
    let _ = recv_until_silence(&mut stays, Duration::from_millis(100)).await;
    let mut vanishing = Vec::new();
    for i in 0..40 {
        let mut ws = connect(addr).await;
        subscribe(&mut ws, 1, &[if i % 2 == 0 { "gone.a" } else { "gone.*" }]).await;
        vanishing.push(ws);
    }
    let (_, topic) = get_json(addr, "/api/v1/topics/gone.a").await;
    assert_eq!(
        (topic["subscribers"].clone(), topic["pattern_subscribers"].clone()),
        (json!(41), json!(20))
    );
    // Dropped without a close frame: the socket just closes.
    drop(vanishing);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, topic) = get_json(addr, "/api/v1/topics/gone.a").await;
        let connections = metric_value(addr, r#"tickwire_connections{transport="ws"}"#).await;
        if topic["subscribers"] == json!(1) && connections == 1.0 {
            assert_eq!(topic["pattern_subscribers"], json!(0), "{topic}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {topic} and {connections} connections 10 s after the clients vanished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric_value(addr, "tickwire_subscriptions").await, 1.0);
    publish(addr, "gone.a", json!(2)).await;
    let update = recv_json(&mut stays).await;
    assert_eq!(assert_update(&update, "gone.a"), 2);
}
