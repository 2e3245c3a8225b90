//! Exactly-once HTTP publishing: `Idempotency-Key` on `POST /api/v1/publish`, on one node
//! (the memory ledger) and across a two-node cluster (the key recorded in Redis with the
//! publication), and the Rust client's retries.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::redis::RedisServer;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PUBLISH: &str = "/api/v1/publish";

/// POSTs `body` to the publish endpoint with an `Idempotency-Key` (and more headers).
async fn post_keyed(addr: SocketAddr, key: &str, body: &Value, extra: &[(&str, &str)]) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/json"), ("Idempotency-Key", key)];
    headers.extend_from_slice(extra);
    http_request(addr, "POST", PUBLISH, &headers, Some(body.to_string().as_bytes())).await
}

/// A publish reply's seq and whether it was a replay (`Idempotent-Replayed`).
fn seq_and_replay(r: &HttpResponse) -> (Option<u64>, Option<&str>) {
    (r.json()["seq"].as_u64(), r.header("Idempotent-Replayed"))
}

fn seq_of(addr_topic: Option<Value>) -> u64 {
    addr_topic.expect("topic exists")["seq"].as_u64().unwrap()
}

/// Receives `n` updates of `topic` (each once), then asserts nothing else arrives.
async fn expect_updates(ws: &mut Ws, topic: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for _ in 0..n {
        let v = recv_json(ws).await;
        seqs.push(assert_update(&v, topic));
    }
    expect_silence(ws, SILENCE).await;
    seqs
}

#[tokio::test]
async fn a_repeat_with_the_same_key_and_body_gets_the_first_reply_and_publishes_nothing() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["idem.a", "idem.b"]).await;

    let one = json!({"topic": "idem.a", "data": {"n": 1}});
    let first = post_keyed(addr, "order-1", &one, &[]).await;
    assert_eq!(first.status, 200, "{}", first.json());
    assert_eq!(first.json(), json!({"topic": "idem.a", "seq": 1}));
    assert_eq!(first.header("Idempotent-Replayed"), None);
    for _ in 0..2 {
        let again = post_keyed(addr, "order-1", &one, &[]).await;
        assert_eq!(again.status, 200);
        assert_eq!(
            again.body, first.body,
            "a replay is the original reply, byte for byte"
        );
        assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    }
    assert_eq!(expect_updates(&mut ws, "idem.a", 1).await, [1]);
    assert_eq!(
        seq_of(get_topic(addr, "idem.a").await),
        1,
        "the topic's seq did not move"
    );

    // A batch: one key covers all of it.
    let batch = json!({"messages": [
        {"topic": "idem.a", "data": 2}, {"topic": "idem.b", "data": 3}, {"topic": "idem.a", "data": 4},
    ]});
    let first = post_keyed(addr, "batch-1", &batch, &[]).await;
    assert_eq!(first.status, 200);
    let again = post_keyed(addr, "batch-1", &batch, &[]).await;
    assert_eq!((again.status, &again.body), (200, &first.body));
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    let results = first.json()["results"].clone();
    assert_eq!(
        results,
        json!([{"topic": "idem.a", "seq": 2}, {"topic": "idem.b", "seq": 1}, {"topic": "idem.a", "seq": 3}])
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(recv_json(&mut ws).await["seq"].as_u64().unwrap());
    }
    expect_silence(&mut ws, SILENCE).await;
    assert_eq!(got, [2, 1, 3]);

    // Without a key, the same body publishes again.
    assert_eq!(publish(addr, "idem.a", json!({"n": 1})).await, 4);
    assert_eq!(
        metric_value(addr, "tickwire_http_idempotent_replays_total").await,
        3.0
    );
}

#[tokio::test]
async fn the_same_key_with_another_body_is_a_conflict_and_bad_keys_are_refused() {
    let server = start("").await;
    let addr = server.addr;
    let first = post_keyed(addr, "k", &json!({"topic": "idem.c", "data": 1}), &[]).await;
    assert_eq!(first.status, 200);
    let other = post_keyed(addr, "k", &json!({"topic": "idem.c", "data": 2}), &[]).await;
    assert_eq!(other.status, 409, "{}", other.json());
    assert_eq!(other.json()["error"]["code"], "idempotency_conflict");
    let last = get_topic(addr, "idem.c").await.unwrap();
    assert_eq!((last["seq"].as_u64(), &last["data"]), (Some(1), &json!(1)));
    assert_eq!(
        metric_value(
            addr,
            r#"tickwire_http_requests_total{route="publish",status="409"}"#
        )
        .await,
        1.0
    );

    let body = json!({"topic": "idem.c", "data": 3});
    let long = "x".repeat(129);
    for bad in [long.as_str(), "has space", "tab\there"] {
        let r = post_keyed(addr, bad, &body, &[]).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.json());
        assert_eq!(r.json()["error"]["code"], "bad_request");
    }
    let r = http_request(
        addr,
        "POST",
        PUBLISH,
        &[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
        Some(body.to_string().as_bytes()),
    )
    .await;
    assert_eq!(r.status, 400, "two keys");
    assert_eq!(
        seq_of(get_topic(addr, "idem.c").await),
        1,
        "no refused request published"
    );
    let r = post_keyed(addr, &"y".repeat(128), &body, &[]).await;
    assert_eq!(r.status, 200, "128 bytes is the limit, inclusive");
}

#[tokio::test]
async fn a_key_is_forgotten_after_the_window_and_ignored_when_the_window_is_zero() {
    let server = start("[http]\nidempotency_window = \"300ms\"\n").await;
    let addr = server.addr;
    let body = json!({"topic": "idem.w", "data": 1});
    assert_eq!(post_keyed(addr, "w", &body, &[]).await.json()["seq"], 1);
    assert_eq!(post_keyed(addr, "w", &body, &[]).await.json()["seq"], 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = post_keyed(addr, "w", &body, &[]).await;
    assert_eq!(seq_and_replay(&r), (Some(2), None));
    // Once forgotten, a key may carry another body.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = post_keyed(addr, "w", &json!({"topic": "idem.w", "data": 2}), &[]).await;
    assert_eq!(r.json()["seq"], 3);

    let off = start("[http]\nidempotency_window = \"0s\"\n").await;
    assert_eq!(post_keyed(off.addr, "w", &body, &[]).await.json()["seq"], 1);
    assert_eq!(post_keyed(off.addr, "w", &body, &[]).await.json()["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_publish_once() {
    let server = start("[http]\nmax_body_bytes = 4194304\n").await;
    let addr = server.addr;
    // A batch big enough that the first request is still publishing (it yields every 256
    // messages) when the others arrive.
    let messages: Vec<Value> = (0..20_000)
        .map(|i| json!({"topic": "idem.race", "data": i}))
        .collect();
    let body = json!({ "messages": messages });
    let requests = (0..8).map(|_| {
        let body = body.clone();
        tokio::spawn(async move { post_keyed(addr, "race", &body, &[]).await })
    });
    let replies = futures_util::future::join_all(requests).await;
    let first = &replies[0].as_ref().unwrap().body;
    for r in &replies {
        let r = r.as_ref().unwrap();
        assert_eq!(
            r.status,
            200,
            "{}",
            String::from_utf8_lossy(&r.body[..200.min(r.body.len())])
        );
        // Not assert_eq: the bodies are 600 KB each.
        assert!(&r.body == first, "every duplicate gets the same seqs");
    }
    assert_eq!(
        seq_of(get_topic(addr, "idem.race").await),
        20_000,
        "published once"
    );
    assert_eq!(
        metric_value(addr, "tickwire_http_idempotent_replays_total").await,
        7.0
    );
}

#[tokio::test]
async fn keys_are_scoped_per_api_key() {
    let a = tickwire::apikey::generate().unwrap();
    let b = tickwire::apikey::generate().unwrap();
    let toml = format!(
        "[[auth.api_keys]]\nname = \"a\"\nsha256 = \"{}\"\npublish = [\">\"]\n\
         [[auth.api_keys]]\nname = \"b\"\nsha256 = \"{}\"\npublish = [\">\"]\n",
        a.sha256, b.sha256
    );
    let server = start(&toml).await;
    // The same Idempotency-Key, "same", from the publisher with API key `key`.
    let post_as = |key: &str, data: &str| {
        let (body, auth) = (json!({"topic": "idem.s", "data": data}), format!("Bearer {key}"));
        async move { post_keyed(server.addr, "same", &body, &[("Authorization", &auth)]).await }
    };
    let r = post_as(&a.key, "a").await;
    assert_eq!(r.json()["seq"], 1);
    let r = post_as(&b.key, "b").await;
    assert_eq!(
        (r.status, r.json()["seq"].as_u64()),
        (200, Some(2)),
        "another publisher's key"
    );
    let r = post_as(&a.key, "a").await;
    assert_eq!(seq_and_replay(&r), (Some(1), Some("true")));
}

#[tokio::test]
async fn the_ledger_is_bounded_by_idempotency_max_keys() {
    let server = start("[http]\nidempotency_max_keys = 100\n").await;
    let addr = server.addr;
    for i in 0..1000 {
        let r = post_keyed(
            addr,
            &format!("k{i}"),
            &json!({"topic": "idem.m", "data": i}),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let keys = metric_value(addr, "tickwire_http_idempotency_keys").await;
    let bytes = metric_value(addr, "tickwire_http_idempotency_bytes").await;
    assert!((99.0..=100.0).contains(&keys), "{keys} keys remembered");
    assert!(bytes <= 100.0 * 512.0, "{bytes} bytes");
    // The newest keys are remembered, the oldest were forgotten (so they publish again).
    let r = post_keyed(addr, "k999", &json!({"topic": "idem.m", "data": 999}), &[]).await;
    assert_eq!(r.header("Idempotent-Replayed"), Some("true"));
    let r = post_keyed(addr, "k0", &json!({"topic": "idem.m", "data": 0}), &[]).await;
    assert_eq!(seq_and_replay(&r), (Some(1001), None));
}

#[tokio::test]
async fn in_a_cluster_a_retry_on_another_node_is_deduplicated_in_redis() {
    let redis = RedisServer::start(false);
    let a = start(&redis.broker_toml("idem")).await;
    let b = start(&redis.broker_toml("idem")).await;
    wait_ready(a.addr).await;
    wait_ready(b.addr).await;
    let mut on_a = connect(a.addr).await;
    let mut on_b = connect(b.addr).await;
    subscribe(&mut on_a, 1, &["idem.x", "idem.y"]).await;
    subscribe(&mut on_b, 1, &["idem.x", "idem.y"]).await;

    let batch = json!({"messages": [{"topic": "idem.x", "data": 1}, {"topic": "idem.y", "data": 2}]});
    let first = post_keyed(a.addr, "retry-me", &batch, &[]).await;
    assert_eq!(first.status, 200, "{}", first.json());
    let retry = post_keyed(b.addr, "retry-me", &batch, &[]).await;
    assert_eq!(
        (retry.status, &retry.body),
        (200, &first.body),
        "same seqs from the other node"
    );
    assert_eq!(retry.header("Idempotent-Replayed"), Some("true"));
    for ws in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..2 {
            let v = recv_json(ws).await;
            got.push((
                v["topic"].as_str().unwrap().to_string(),
                v["seq"].as_u64().unwrap(),
            ));
        }
        expect_silence(ws, SILENCE).await;
        got.sort();
        assert_eq!(
            got,
            [("idem.x".to_string(), 1), ("idem.y".to_string(), 1)],
            "delivered once"
        );
    }
    assert_eq!(
        seq_of(get_topic(b.addr, "idem.x").await),
        1,
        "the topic's seq did not move"
    );

    let other = post_keyed(b.addr, "retry-me", &json!({"topic": "idem.x", "data": 9}), &[]).await;
    assert_eq!(other.status, 409);
    assert_eq!(other.json()["error"]["code"], "idempotency_conflict");
    // The key lives in Redis with the window as its TTL.
    let keys = redis.cli(&["--scan", "--pattern", "idem:idem:*"]);
    let key = keys
        .lines()
        .next()
        .expect("an idempotency key in Redis")
        .to_string();
    let ttl: i64 = redis.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(ttl > 290_000 && ttl <= 300_000, "PTTL {ttl}");
    // Without a key the same body publishes again, on either node.
    let r = post_json(a.addr, PUBLISH, &batch).await;
    assert_eq!(r.1["results"][0]["seq"], 2);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// One HTTP/1.1 request off `client`: its head, then its Content-Length bytes of body; `None`
/// when the connection ends first.
async fn read_request(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => raw.extend_from_slice(&buf[..k]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let len: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    while raw.len() < head_end + len {
        let k = client.read(&mut buf).await.unwrap();
        raw.extend_from_slice(&buf[..k]);
    }
    Some((head, raw.split_off(head_end)))
}

/// The value of header `name` in a request `head`.
fn header(head: &str, name: &str) -> Option<String> {
    (head.lines())
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

/// A proxy that passes requests to `upstream`, but answers the first with 503 after the server
/// handled it (the reply lost on the way back); returns the Idempotency-Key of each request.
async fn lossy_proxy(upstream: SocketAddr) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (keys_tx, keys_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            loop {
                let Some((head, body)) = read_request(&mut client).await else {
                    break;
                };
                keys_tx
                    .send(header(&head, "idempotency-key").unwrap_or_default())
                    .unwrap();
                let mut up = TcpStream::connect(upstream).await.unwrap();
                let forwarded = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                up.write_all(forwarded.as_bytes()).await.unwrap();
                up.write_all(&body).await.unwrap();
                let mut reply = Vec::new();
                up.read_to_end(&mut reply).await.unwrap();
                n += 1;
                if n == 1 {
                    let unavailable = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
                    client.write_all(unavailable.as_bytes()).await.unwrap();
                } else {
                    client.write_all(&reply).await.unwrap();
                    break;
                }
            }
        }
    });
    (addr, keys_rx)
}

/// The Rust client's HTTP publisher, talking to the server through `proxy`.
fn publisher_via(proxy: SocketAddr) -> tickwire_client::HttpPublisher {
    tickwire_client::HttpPublisher::new(&format!("http://{proxy}")).unwrap()
}

#[tokio::test]
async fn the_client_retries_a_lost_reply_with_the_same_key_and_publishes_once() {
    let server = start("").await;
    let mut ws = connect(server.addr).await;
    subscribe(&mut ws, 1, &["idem.client"]).await;
    let (proxy, mut keys) = lossy_proxy(server.addr).await;

    let http = publisher_via(proxy);
    let published = http.publish("idem.client", &json!({"n": 1})).await.unwrap();
    assert_eq!(published.seq, 1);
    let (k1, k2) = (keys.recv().await.unwrap(), keys.recv().await.unwrap());
    assert_eq!(k1, k2, "the retry carries the first attempt's key");
    assert_eq!(k1.len(), 32, "a 128-bit hex key: {k1}");
    assert_eq!(
        expect_updates(&mut ws, "idem.client", 1).await,
        [1],
        "published once"
    );
    assert_eq!(seq_of(get_topic(server.addr, "idem.client").await), 1);

    // The next logical publish gets a new key.
    let (proxy, mut keys) = lossy_proxy(server.addr).await;
    let http = publisher_via(proxy);
    assert_eq!(
        http.publish("idem.client", &json!({"n": 1})).await.unwrap().seq,
        2
    );
    assert_ne!(keys.recv().await.unwrap(), k1);

    // With one attempt, the 503 is the answer (and the publication happened all the same).
    let (proxy, _keys) = lossy_proxy(server.addr).await;
    let http = publisher_via(proxy).attempts(1);
    let e = http.publish("idem.client", &json!({"n": 3})).await.unwrap_err();
    assert!(
        matches!(e, tickwire_client::Error::Http { status: 503, .. }),
        "{e}"
    );
}
