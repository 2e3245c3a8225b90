//! Every WebSocket error code; after each error the connection keeps serving requests.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_for_malformed_messages() {
    let server = start("").await;
    let mut ws = connect(server.addr).await;
    let mut ping_id = 1000;

    // Not JSON / not an object: no id can be known.
    for text in [
        "hello",
        "{",
        "",
        "[1,2]",
        "42",
        "null",
        "\"ping\"",
        "[{\"op\":\"ping\",\"id\":1}]",
    ] {
        send_text(&mut ws, text).await;
        let e = recv_json(&mut ws).await;
        assert_error(&e, "bad_request", None);
        ping_id += 1;
        assert_usable(&mut ws, ping_id).await;
    }

    // Missing / mistyped fields, with the id echoed.
    let cases = [
        json!({"id": 1}),
        json!({"op": 5, "id": 2}),
        json!({"op": null, "id": 3}),
        json!({"op": "subscribe", "id": 4}),
        json!({"op": "subscribe", "id": 5, "topics": "a.b"}),
        json!({"op": "subscribe", "id": 6, "topics": [1, 2]}),
        json!({"op": "unsubscribe", "id": 7}),
        json!({"op": "unsubscribe", "id": 8, "topics": {"a": 1}}),
        json!({"op": "publish", "id": 9, "data": 1}),
        json!({"op": "publish", "id": 10, "topic": 5, "data": 1}),
        json!({"op": "publish", "id": 11, "topic": "chat.x"}),
        json!({"op": "publish", "id": 12, "topic": ["chat.x"], "data": 1}),
    ];
    for case in cases {
        let id = case["id"].as_i64().unwrap();
        let e = request(&mut ws, case.clone()).await;
        assert_eq!(e["code"], "bad_request", "request {case} gave {e}");
        assert_error(&e, "bad_request", Some(id));
        ping_id += 1;
        assert_usable(&mut ws, ping_id).await;
    }

    // Without an id the error has none.
    let e = request(&mut ws, json!({"op": "subscribe"})).await;
    assert_error(&e, "bad_request", None);
    assert_usable(&mut ws, 1).await;

    // Nothing was published by the malformed publish requests.
    assert!(get_topic(server.addr, "chat.x").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_op() {
    let server = start("").await;
    let mut ws = connect(server.addr).await;

    let e = request(&mut ws, json!({"op": "frobnicate", "id": 8})).await;
    assert_error(&e, "unknown_op", Some(8));
    assert_usable(&mut ws, 1).await;

    let e = request(&mut ws, json!({"op": "PING", "id": 9})).await;
    assert_error(&e, "unknown_op", Some(9));
    assert_usable(&mut ws, 2).await;

    let e = request(&mut ws, json!({"op": "subscribez"})).await;
    assert_error(&e, "unknown_op", None);
    assert_usable(&mut ws, 3).await;
}

const BAD_PATTERNS: &[&str] = &[
    "", ".", "a.", ".a", "a..b", "a b", "a.>.b", ">.a", "a.b*", "a.**", "a.>x", "é", "a/b", "a.b#",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_in_subscribe() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;

    for (i, bad) in BAD_PATTERNS.iter().enumerate() {
        let id = i as i64 + 1;
        let e = request(&mut ws, json!({"op": "subscribe", "id": id, "topics": [bad]})).await;
        assert_eq!(e["code"], "invalid_topic", "subscribe to {bad:?} gave {e}");
        assert_error(&e, "invalid_topic", Some(id));
        assert_usable(&mut ws, 100 + id).await;
    }
    let too_long = "x".repeat(257);
    let e = request(
        &mut ws,
        json!({"op": "subscribe", "id": 50, "topics": [too_long]}),
    )
    .await;
    assert_error(&e, "invalid_topic", Some(50));
    assert_usable(&mut ws, 51).await;

    // Boundary: 256 bytes is fine, in several tokens too.
    let max = "x".repeat(256);
    subscribe(&mut ws, 52, &[&max]).await;
    let dotted = format!("{}.{}", "a".repeat(127), "b".repeat(128));
    assert_eq!(dotted.len(), 256);
    subscribe(&mut ws, 53, &[&dotted]).await;
    publish(addr, &max, json!(1)).await;
    let u = recv_json(&mut ws).await;
    assert_update(&u, &max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_in_unsubscribe() {
    let server = start("").await;
    let mut ws = connect(server.addr).await;
    let e = request(&mut ws, json!({"op": "unsubscribe", "id": 3, "topics": ["a..b"]})).await;
    assert_error(&e, "invalid_topic", Some(3));
    assert_usable(&mut ws, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_in_publish() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    let mut id = 0;

    // Patterns are not publishable, even where the prefix is allowed.
    for bad in ["chat.*", "chat.>", "chat.*.x", ">", "*"] {
        id += 1;
        let e = request(
            &mut ws,
            json!({"op": "publish", "id": id, "topic": bad, "data": 1}),
        )
        .await;
        assert_eq!(e["code"], "invalid_topic", "publish to {bad:?} gave {e}");
        assert_error(&e, "invalid_topic", Some(id));
        assert_usable(&mut ws, 100 + id).await;
    }
    for bad in ["", "chat..x", "chat.", "chat.a b", "chat.é"] {
        id += 1;
        let e = request(
            &mut ws,
            json!({"op": "publish", "id": id, "topic": bad, "data": 1}),
        )
        .await;
        assert_eq!(e["code"], "invalid_topic", "publish to {bad:?} gave {e}");
        assert_error(&e, "invalid_topic", Some(id));
        assert_usable(&mut ws, 100 + id).await;
    }
    let long = format!("chat.{}", "x".repeat(252));
    assert_eq!(long.len(), 257);
    let e = request(&mut ws, json!({"op": "publish", "topic": long, "data": 1})).await;
    assert_error(&e, "invalid_topic", None);
    assert_usable(&mut ws, 999).await;

    let (status, body) = get_json(addr, "/api/v1/topics").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["topics"],
        json!([]),
        "nothing may have been published: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publish_forbidden_outside_the_anonymous_acl() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;

    // Allowed by the default `chat.>`.
    let ok = request(
        &mut ws,
        json!({"op": "publish", "id": 1, "topic": "chat.x", "data": {"m": 1}}),
    )
    .await;
    assert_eq!(
        ok,
        json!({"type": "published", "id": 1, "topic": "chat.x", "seq": 1})
    );

    for (id, topic) in [
        (2, "prices.BTC-USD"),
        (3, "chat"),
        (4, "chatx.y"),
        (5, "x.chat.y"),
    ] {
        let e = request(
            &mut ws,
            json!({"op": "publish", "id": id, "topic": topic, "data": 1}),
        )
        .await;
        assert_eq!(e["code"], "forbidden", "publish to {topic} gave {e}");
        assert_error(&e, "forbidden", Some(id));
        assert_usable(&mut ws, 100 + id).await;
        assert!(
            get_topic(addr, topic).await.is_none(),
            "forbidden publish to {topic} was published"
        );
    }
    let e = request(&mut ws, json!({"op": "publish", "topic": "prices.X", "data": 1})).await;
    assert_error(&e, "forbidden", None);
    assert_usable(&mut ws, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_publish_acl_follows_config() {
    let server = start("[auth.anonymous]\npublish = [\"prices.*\", \"alerts.red\"]\n").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;

    let ok = request(
        &mut ws,
        json!({"op": "publish", "id": 1, "topic": "prices.X", "data": 1}),
    )
    .await;
    assert_eq!(
        ok,
        json!({"type": "published", "id": 1, "topic": "prices.X", "seq": 1})
    );
    let ok = request(
        &mut ws,
        json!({"op": "publish", "id": 2, "topic": "alerts.red", "data": 1}),
    )
    .await;
    assert_eq!(ok["type"], "published", "{ok}");

    for (id, topic) in [(3, "chat.x"), (4, "prices.X.Y"), (5, "alerts.blue")] {
        let e = request(
            &mut ws,
            json!({"op": "publish", "id": id, "topic": topic, "data": 1}),
        )
        .await;
        assert_error(&e, "forbidden", Some(id));
        assert_usable(&mut ws, 100 + id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions_applies_nothing() {
    let server = start("[server]\nmax_subscriptions_per_connection = 3\n").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;

    subscribe(&mut ws, 1, &["t.a", "t.b"]).await;
    // Would make 4: fails whole.
    let e = request(
        &mut ws,
        json!({"op": "subscribe", "id": 2, "topics": ["t.c", "t.*"]}),
    )
    .await;
    assert_error(&e, "too_many_subscriptions", Some(2));
    assert_usable(&mut ws, 3).await;

    // Neither t.c nor t.* was applied.
    publish(addr, "t.c", json!("c")).await;
    publish(addr, "t.d", json!("d")).await;
    expect_silence(&mut ws, SILENCE).await;

    // Re-subscribing held topics does not count twice.
    subscribe(&mut ws, 4, &["t.a", "t.b"]).await;
    // Exactly the limit is fine (snapshot for t.c follows).
    subscribe(&mut ws, 5, &["t.c"]).await;
    let s = recv_json(&mut ws).await;
    assert_eq!(s["type"], "snapshot", "{s}");
    assert_eq!(s["topic"], "t.c");
    // At the limit: one more fails, without id too.
    let e = request(&mut ws, json!({"op": "subscribe", "topics": ["t.d"]})).await;
    assert_error(&e, "too_many_subscriptions", None);
    assert_usable(&mut ws, 6).await;

    // Unsubscribing frees a slot.
    unsubscribe(&mut ws, 7, &["t.a"]).await;
    subscribe(&mut ws, 8, &["t.d"]).await;
    let s = recv_json(&mut ws).await;
    assert_eq!(s["type"], "snapshot", "{s}");
    assert_eq!(s["topic"], "t.d");

    // Subscriptions held: t.b, t.c, t.d.
    publish(addr, "t.a", json!(1)).await;
    publish(addr, "t.b", json!(2)).await;
    let u = recv_json(&mut ws).await;
    assert_update(&u, "t.b");
    expect_silence(&mut ws, SILENCE).await;

    // The limit is per connection.
    let mut other = connect(addr).await;
    subscribe(&mut other, 1, &["x.1", "x.2", "x.3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_over_the_burst() {
    // 2 requests/s sustained, burst 5.
    let server = start("[server]\nrequests_per_second = 2.0\nrequest_burst = 5\n").await;
    let mut ws = connect(server.addr).await;

    const SENT: i64 = 20;
    for id in 1..=SENT {
        send_json(&mut ws, json!({"op": "ping", "id": id})).await;
    }
    // Replies come in request order, so reply k answers request k.
    let mut pongs = vec![];
    let mut limited = vec![];
    let mut ids_not_echoed = vec![];
    for id in 1..=SENT {
        let r = recv_json(&mut ws).await;
        match r["type"].as_str() {
            Some("pong") => {
                assert_eq!(r, json!({"type": "pong", "id": id}), "replies out of order");
                pongs.push(id);
            }
            Some("error") => {
                assert_eq!(r["code"], "rate_limited", "{r}");
                assert!(r["message"].is_string(), "{r}");
                if r["id"] != json!(id) {
                    ids_not_echoed.push(r.clone());
                }
                limited.push(id);
            }
            _ => panic!("unexpected reply {r}"),
        }
    }
    // The burst is served; beyond it (a couple of refilled tokens at most) requests are refused.
    assert!(
        pongs.starts_with(&[1, 2, 3, 4, 5]),
        "first 5 within burst: {pongs:?}"
    );
    assert!(
        pongs.len() <= 8,
        "burst 5 at 2/s served {} of {SENT} instant requests: {pongs:?}",
        pongs.len()
    );
    assert!(limited.len() >= 12, "limited: {limited:?}");

    // Rate-limited error without an id.
    let mut saw_no_id_error = false;
    for _ in 0..3 {
        send_json(&mut ws, json!({"op": "ping"})).await;
        let r = recv_json(&mut ws).await;
        if r["type"] == "error" {
            assert_error(&r, "rate_limited", None);
            saw_no_id_error = true;
        }
    }
    assert!(
        saw_no_id_error,
        "3 immediate pings after exhausting the bucket were all served"
    );

    // The connection survives and the bucket refills.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_usable(&mut ws, 77).await;

    // The limit is per connection: a fresh one has a full bucket.
    let mut other = connect(server.addr).await;
    for id in 1..=5 {
        assert_usable(&mut other, id).await;
    }

    // Like every error, rate_limited echoes the request's id.
    assert!(
        ids_not_echoed.is_empty(),
        "{} rate_limited errors do not echo the request id, e.g. {}",
        ids_not_echoed.len(),
        ids_not_echoed[0]
    );
}
