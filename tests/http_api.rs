//! The HTTP API: publish (single and batch), topic listing and lookup, error responses.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_single_and_read_back() {
    let server = start("").await;
    let addr = server.addr;

    let data = json!({"bid": 100.5, "ask": 101, "tags": ["a", "b"], "deep": {"x": null}});
    let (status, body) = post_json(
        addr,
        "/api/v1/publish",
        &json!({"topic": "prices.BTC-USD", "data": data}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"topic": "prices.BTC-USD", "seq": 1}));

    let before = now_ms();
    let (status, body) = post_json(
        addr,
        "/api/v1/publish",
        &json!({"topic": "prices.BTC-USD", "data": "second"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"topic": "prices.BTC-USD", "seq": 2}));

    let (status, got) = get_json(addr, "/api/v1/topics/prices.BTC-USD").await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["topic"], "prices.BTC-USD");
    assert_eq!(got["seq"], 2);
    assert_eq!(got["data"], "second");
    assert_recent_ts(&got);
    assert!(
        got["ts"].as_u64().unwrap() + 1000 >= before,
        "ts older than the publish: {got}"
    );

    // Any JSON value is valid data.
    for (i, d) in [
        json!(null),
        json!(0),
        json!([]),
        json!("s"),
        json!({"a": {"b": [1.5e300]}}),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) =
            post_json(addr, "/api/v1/publish", &json!({"topic": "any.data", "data": d})).await;
        assert_eq!(status, 200, "data {d}: {body}");
        assert_eq!(body["seq"], i as u64 + 1);
        assert_eq!(get_topic(addr, "any.data").await.unwrap()["data"], d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batch_results_in_order() {
    let server = start("").await;
    let addr = server.addr;
    publish(addr, "b.one", json!(0)).await;

    let (status, body) = post_json(
        addr,
        "/api/v1/publish",
        &json!({"messages": [
            {"topic": "b.one", "data": 1},
            {"topic": "b.two", "data": 2},
            {"topic": "b.one", "data": 3},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"results": [
            {"topic": "b.one", "seq": 2},
            {"topic": "b.two", "seq": 1},
            {"topic": "b.one", "seq": 3},
        ]})
    );
    let one = get_topic(addr, "b.one").await.unwrap();
    assert_eq!((one["seq"].clone(), one["data"].clone()), (json!(3), json!(3)));
    let two = get_topic(addr, "b.two").await.unwrap();
    assert_eq!((two["seq"].clone(), two["data"].clone()), (json!(1), json!(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_batch_publishes_nothing() {
    let server = start("").await;
    let addr = server.addr;
    publish(addr, "v.existing", json!("original")).await;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["v.>"]).await;
    let s = recv_json(&mut ws).await;
    assert_eq!(s["type"], "snapshot");

    let changed = json!({"topic": "v.existing", "data": "changed"});
    for (messages, code) in [
        // An invalid topic in the last message.
        (
            json!([changed, {"topic": "v.new", "data": 1}, {"topic": "v..bad", "data": 2}]),
            "invalid_topic",
        ),
        // A pattern in the middle.
        (
            json!([changed, {"topic": "v.*", "data": 1}, {"topic": "v.new", "data": 2}]),
            "invalid_topic",
        ),
        // A missing field in one message.
        (json!([changed, {"topic": "v.new"}]), "bad_request"),
    ] {
        let (status, body) = post_json(addr, "/api/v1/publish", &json!({ "messages": messages })).await;
        assert_http_error(status, &body, 400, Some(code));
    }

    // Nothing was published: seq and data unchanged, no new topic, no update delivered.
    let existing = get_topic(addr, "v.existing").await.unwrap();
    assert_eq!(existing["seq"], 1, "{existing}");
    assert_eq!(existing["data"], "original");
    assert!(get_topic(addr, "v.new").await.is_none(), "v.new was created");
    expect_silence(&mut ws, SILENCE).await;
    // The next valid publish continues at seq 2.
    assert_eq!(publish(addr, "v.existing", json!("next")).await, 2);
    assert_eq!(assert_update(&recv_json(&mut ws).await, "v.existing"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rejects_bad_requests() {
    let server = start("").await;
    let addr = server.addr;

    let raw_cases: &[&[u8]] = &[b"not json", b"{\"topic\":", b"", b"[1,2]", b"\"x\"", b"\xff\xfe"];
    for raw in raw_cases {
        let r = http_post(addr, "/api/v1/publish", raw).await;
        assert_http_error(r.status, &r.json(), 400, Some("bad_request"));
    }
    for body in [
        json!({"data": 1}),
        json!({"topic": "a.b"}),
        json!({"topic": 5, "data": 1}),
        json!({"topic": null, "data": 1}),
        json!({"messages": "x"}),
        json!({"messages": [1]}),
        json!({"messages": [{"data": 1}]}),
    ] {
        let (status, resp) = post_json(addr, "/api/v1/publish", &body).await;
        assert_eq!(status, 400, "{body} -> {resp}");
        assert_http_error(status, &resp, 400, Some("bad_request"));
    }
    for topic in ["", "a..b", "a.*", "a.>", ">", "a b", "é"] {
        let (status, resp) = post_json(addr, "/api/v1/publish", &json!({"topic": topic, "data": 1})).await;
        assert_eq!(status, 400, "topic {topic:?} -> {resp}");
        assert_http_error(status, &resp, 400, Some("invalid_topic"));
    }
    let long = "x".repeat(257);
    let (status, resp) = post_json(addr, "/api/v1/publish", &json!({"topic": long, "data": 1})).await;
    assert_http_error(status, &resp, 400, Some("invalid_topic"));

    // None of it published anything.
    let (status, body) = get_json(addr, "/api/v1/topics").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"topics": [], "next": null}));
    // And the server still publishes fine.
    assert_eq!(publish(addr, "a.b", json!(1)).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413() {
    let server = start("[http]\nmax_body_bytes = 1024\n").await;
    let addr = server.addr;

    // Exactly at the limit: accepted.
    let body_at = |len: usize| {
        let skeleton = json!({"topic": "big.one", "data": ""}).to_string();
        let pad = "p".repeat(len - skeleton.len());
        let body = json!({"topic": "big.one", "data": pad}).to_string();
        assert_eq!(body.len(), len);
        body
    };
    let r = http_post(addr, "/api/v1/publish", body_at(1024).as_bytes()).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"topic": "big.one", "seq": 1}));

    // One byte over: 413 with the error shape, nothing published.
    let r = http_post(addr, "/api/v1/publish", body_at(1025).as_bytes()).await;
    assert_http_error(r.status, &r.json(), 413, None);
    let r = http_post(addr, "/api/v1/publish", body_at(8000).as_bytes()).await;
    assert_http_error(r.status, &r.json(), 413, None);
    assert_eq!(get_topic(addr, "big.one").await.unwrap()["seq"], 1);

    // A chunked body over the limit (no Content-Length) is refused too.
    let payload = body_at(4000);
    let mut chunked = Vec::new();
    for chunk in payload.as_bytes().chunks(500) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut req = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&chunked);
    let r = raw_http(addr, &req).await;
    assert!(r.starts_with("HTTP/1.1 413"), "chunked oversized body: {r}");
    assert_eq!(get_topic(addr, "big.one").await.unwrap()["seq"], 1);
}

async fn raw_http(addr: std::net::SocketAddr, req: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(req).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn subscribe_with_snapshot(ws: &mut Ws, id: i64, topic: &str) {
    subscribe(ws, id, &[topic]).await;
    let snap = recv_json(ws).await;
    assert_eq!(snap["type"], "snapshot", "{snap}");
    assert_eq!(snap["topic"], topic, "{snap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_listing_with_subscriber_counts() {
    let server = start("").await;
    let addr = server.addr;

    let (status, body) = get_json(addr, "/api/v1/topics").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"topics": [], "next": null}));

    publish(addr, "l.a", json!(1)).await;
    publish(addr, "l.a", json!(2)).await;
    publish(addr, "l.b", json!(3)).await;

    let mut c1 = connect(addr).await;
    let mut c2 = connect(addr).await;
    subscribe_with_snapshot(&mut c1, 1, "l.a").await;
    subscribe_with_snapshot(&mut c2, 1, "l.a").await;
    subscribe_with_snapshot(&mut c2, 2, "l.b").await;

    let (status, body) = get_json(addr, "/api/v1/topics").await;
    assert_eq!(status, 200);
    let mut topics = body["topics"].as_array().expect("topics array").clone();
    topics.sort_by_key(|t| t["topic"].as_str().unwrap_or_default().to_string());
    assert_eq!(topics.len(), 2, "{body}");
    assert_eq!(topics[0]["topic"], "l.a");
    assert_eq!(topics[0]["seq"], 2);
    assert_eq!(topics[0]["subscribers"], 2);
    assert_eq!(topics[1]["topic"], "l.b");
    assert_eq!(topics[1]["seq"], 1);
    assert_eq!(topics[1]["subscribers"], 1);

    // A connection going away is no longer counted.
    drop(c1);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let entry = topic_listing(addr, "l.a").await.unwrap();
        if entry["subscribers"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed connection still counted after 5 s: {entry}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(c2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_404() {
    let server = start("").await;
    let addr = server.addr;
    let (status, body) = get_json(addr, "/api/v1/topics/nope.nothing").await;
    assert_http_error(status, &body, 404, None);

    // A topic with subscribers but no publication has no value, only its subscribers (issue
    // 20: a publisher feeding watched topics asks before it ever published).
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["nope.later"]).await;
    let (status, body) = get_json(addr, "/api/v1/topics/nope.later").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"topic": "nope.later", "subscribers": 1, "pattern_subscribers": 0})
    );
    drop(ws);
    eventually(
        "the topic without value or subscribers is 404 again",
        std::time::Duration::from_secs(5),
        || async { get_json(addr, "/api/v1/topics/nope.later").await.0 == 404 },
    )
    .await;

    publish(addr, "nope.later", json!(1)).await;
    let (status, body) = get_json(addr, "/api/v1/topics/nope.later").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], 1);
}

/// A 405 names the method the resource takes (RFC 9110 §15.5.6), for every route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_says_which_method_is() {
    let server = start("").await;
    let addr = server.addr;
    for (method, path, allow) in [
        ("GET", "/api/v1/publish", "POST"),
        ("PUT", "/api/v1/publish", "POST"),
        ("POST", "/api/v1/topics", "GET"),
        ("DELETE", "/api/v1/topics/a.b", "GET"),
        ("POST", "/api/v1/topics/a.b/history", "GET"),
        ("POST", "/healthz", "GET"),
        ("POST", "/metrics", "GET"),
    ] {
        let r = http_request(addr, method, path, &[], Some(b"{}")).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}: {:?}", r.headers);
    }
}
