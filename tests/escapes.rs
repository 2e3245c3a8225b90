//! JSON escapes in request strings, end to end: what Go's `encoding/json` (`>` as `\u003e`) or
//! Python's `json.dumps` (`é` as `\u00e9`) send is read as the string it encodes, over WebSocket
//! and HTTP, then validated as a topic like any other; replies echo the unescaped name, and
//! escapes inside `data` pass through byte for byte.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The next text message as the server wrote it, to check how the server encoded it.
async fn recv_text(ws: &mut Ws) -> String {
    loop {
        let next = tokio::time::timeout(RECV_TIMEOUT, ws.next()).await;
        match next.expect("no message from the server in time") {
            Some(Ok(Message::Text(t))) => return t.as_str().to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_topics_work_over_websocket() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    send_text(
        &mut ws,
        r#"{"op":"subscribe","id":1,"topics":["chat.\u003e","a\u002eb"]}"#,
    )
    .await;
    // The echo is the valid name, encoded by the server: no escape left in it.
    let reply = recv_text(&mut ws).await;
    let expected = r#"{"type":"subscribed","id":1,"topics":["chat.>","a.b"],"positions":{"a.b":{"#;
    assert!(reply.starts_with(expected), "{reply}");
    publish(addr, "chat.x", json!(1)).await;
    assert_update(&recv_json(&mut ws).await, "chat.x");
    publish(addr, "a.b", json!(2)).await;
    assert_update(&recv_json(&mut ws).await, "a.b");

    // A WebSocket publish with an escaped topic, and escapes in data passed through as sent.
    let mut publisher = connect(addr).await;
    send_text(
        &mut publisher,
        r#"{"op":"publish","id":2,"topic":"chat\u002ey","data":"\u003e\ud83d\ude00\"\\\/"}"#,
    )
    .await;
    assert_eq!(
        recv_text(&mut publisher).await,
        r#"{"type":"published","id":2,"topic":"chat.y","seq":1}"#
    );
    let update = recv_text(&mut ws).await;
    let expected = r#""topic":"chat.y","seq":1,"#;
    assert!(update.contains(expected), "{update}");
    assert!(
        update.ends_with(r#","data":"\u003e\ud83d\ude00\"\\\/"}"#),
        "{update}"
    );

    // Recovery positions keyed by an escaped topic name: the client is up to date.
    let (_, page) = get_json(addr, "/api/v1/topics/chat.y/history").await;
    let epoch = page["epoch"].as_str().unwrap();
    let since = format!(r#"{{"chat\u002ey":{{"seq":1,"epoch":"{epoch}"}}}}"#);
    send_text(
        &mut ws,
        &format!(r#"{{"op":"subscribe","id":3,"topics":["chat.y"],"since":{since}}}"#),
    )
    .await;
    let reply = recv_json(&mut ws).await;
    assert_eq!(reply["recovered"], json!({"chat.y": true}), "{reply}");

    // `op` itself may be escaped.
    send_text(&mut ws, r#"{"op":"\u0070ing","id":4}"#).await;
    assert_eq!(recv_json(&mut ws).await, json!({"type": "pong", "id": 4}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unescaped_names_are_still_validated() {
    let server = start("").await;
    let mut ws = connect(server.addr).await;
    // Python's json.dumps("chat.é"), an emoji as a surrogate pair, an escaped quote.
    for (id, bad) in [
        (1, r#""chat.\u00e9""#),
        (2, r#""chat.\ud83d\ude00""#),
        (3, r#""chat\"x""#),
    ] {
        send_text(
            &mut ws,
            &format!(r#"{{"op":"subscribe","id":{id},"topics":[{bad}]}}"#),
        )
        .await;
        let e = recv_json(&mut ws).await;
        assert_error(&e, "invalid_topic", Some(id));
        let sent: String = serde_json::from_str(bad).unwrap();
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(&format!("{sent:?}")), "{message}");
        send_text(
            &mut ws,
            &format!(r#"{{"op":"publish","id":{id},"topic":{bad},"data":1}}"#),
        )
        .await;
        assert_error(&recv_json(&mut ws).await, "invalid_topic", Some(id));
    }
    // A lone surrogate is not a string at all.
    send_text(
        &mut ws,
        r#"{"op":"publish","id":9,"topic":"chat.\ud83d","data":1}"#,
    )
    .await;
    assert_error(&recv_json(&mut ws).await, "bad_request", Some(9));
    assert_usable(&mut ws, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_topics_work_over_http() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["chat.x", "chat.z"]).await;

    let r = http_post(
        addr,
        "/api/v1/publish",
        br#"{"topic":"chat\u002ex","data":"\u00e9"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.body, br#"{"topic":"chat.x","seq":1}"#);
    let update = recv_text(&mut ws).await;
    assert!(update.contains(r#""topic":"chat.x""#), "{update}");
    assert!(
        update.ends_with(r#""data":"\u00e9"}"#),
        "data byte for byte: {update}"
    );

    let r = http_post(
        addr,
        "/api/v1/publish",
        br#"{"messages":[{"topic":"chat\u002ez","data":1}]}"#,
    )
    .await;
    assert_eq!(r.json(), json!({"results": [{"topic": "chat.z", "seq": 1}]}));
    assert_update(&recv_json(&mut ws).await, "chat.z");

    let r = http_post(addr, "/api/v1/publish", br#"{"topic":"chat.\u00e9","data":1}"#).await;
    assert_eq!(r.status, 400);
    let body: Value = r.json();
    assert_eq!(body["error"]["code"], "invalid_topic", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("\"chat.é\""),
        "{body}"
    );
}
