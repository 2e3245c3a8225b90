//! WebSocket transport: upgrade, size limit, UTF-8, binary, fragmentation, shutdown.

mod common;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

fn text_fragment(bytes: &[u8], first: bool, fin: bool) -> Message {
    let op = if first { Data::Text } else { Data::Continue };
    Message::Frame(Frame::message(bytes.to_vec(), OpCode::Data(op), fin))
}

/// `{"op":"ping","id":<id>}` padded with JSON whitespace to exactly `len` bytes.
fn padded_ping(id: i64, len: usize) -> String {
    let mut s = json!({"op": "ping", "id": id}).to_string();
    s.pop(); // '}'
    while s.len() < len - 1 {
        s.push(' ');
    }
    s.push('}');
    assert_eq!(s.len(), len);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_upgrade_get_ws_is_rejected() {
    let server = start("").await;
    let r = http_get(server.addr, "/ws").await;
    assert!(
        r.status == 400 || r.status == 426,
        "plain GET /ws gave {} {:?}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    // The server still accepts real upgrades afterwards.
    let mut ws = connect(server.addr).await;
    assert_usable(&mut ws, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_at_limit_ok_over_limit_closes_1009() {
    let server = start("").await; // max_message_bytes = 65536
    let mut ws = connect(server.addr).await;

    send_text(&mut ws, &padded_ping(1, 65536)).await;
    assert_eq!(recv_json(&mut ws).await, json!({"type": "pong", "id": 1}));

    send_text(&mut ws, &padded_ping(2, 65537)).await;
    let (code, _reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1009, "oversized message must close with 1009");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limit_applies_to_reassembled_fragments() {
    let server = start("[server]\nmax_message_bytes = 1024\n").await;
    let mut ws = connect(server.addr).await;

    // Fragments of 600 bytes each are individually fine, but reassemble to 1200 > 1024.
    let msg = padded_ping(1, 1200);
    let (a, b) = msg.as_bytes().split_at(600);
    send_msg(&mut ws, text_fragment(a, true, false)).await;
    send_msg(&mut ws, text_fragment(b, false, true)).await;
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 1009);

    // A single 1025-byte message on a fresh connection too; 1024 is fine.
    let mut ws = connect(server.addr).await;
    send_text(&mut ws, &padded_ping(2, 1024)).await;
    assert_eq!(recv_json(&mut ws).await, json!({"type": "pong", "id": 2}));
    send_text(&mut ws, &padded_ping(3, 1025)).await;
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_closes_1007() {
    let server = start("").await;
    let mut ws = connect(server.addr).await;
    assert_usable(&mut ws, 1).await;
    let mut bytes = br#"{"op":"ping","id":2,"x":""#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    bytes.extend_from_slice(br#""}"#);
    send_msg(
        &mut ws,
        Message::Frame(Frame::message(bytes, OpCode::Data(Data::Text), true)),
    )
    .await;
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 1007, "invalid UTF-8 in a text message must close with 1007");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_split_across_fragments_is_valid() {
    let server = start("").await;
    let mut ws = connect(server.addr).await;
    // "é" is 0xC3 0xA9; split the code point across the two fragments.
    let msg = r#"{"op":"publish","id":5,"topic":"chat.x","data":"café"}"#.as_bytes();
    let cut = msg.iter().position(|&b| b == 0xc3).unwrap() + 1;
    send_msg(&mut ws, text_fragment(&msg[..cut], true, false)).await;
    send_msg(&mut ws, text_fragment(&msg[cut..], false, true)).await;
    let r = recv_json(&mut ws).await;
    assert_eq!(
        r,
        json!({"type": "published", "id": 5, "topic": "chat.x", "seq": 1})
    );
    assert_eq!(get_topic(server.addr, "chat.x").await.unwrap()["data"], "café");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_message_closes_1003() {
    let server = start("").await;
    let mut ws = connect(server.addr).await;
    assert_usable(&mut ws, 1).await;
    send_msg(
        &mut ws,
        Message::binary(json!({"op": "ping", "id": 2}).to_string().into_bytes()),
    )
    .await;
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 1003, "binary message must close with 1003");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_message_is_reassembled() {
    let server = start("").await;
    let mut ws = connect(server.addr).await;

    let msg = json!({"op": "subscribe", "id": 7, "topics": ["frag.a", "frag.b"]}).to_string();
    let bytes = msg.as_bytes();
    let n = bytes.len();
    send_msg(&mut ws, text_fragment(&bytes[..5], true, false)).await;
    send_msg(&mut ws, text_fragment(&bytes[5..n / 2], false, false)).await;
    // A control frame may be interleaved between fragments.
    send_msg(&mut ws, Message::Ping(b"between".to_vec().into())).await;
    send_msg(&mut ws, text_fragment(&bytes[n / 2..n - 1], false, false)).await;
    send_msg(&mut ws, text_fragment(&bytes[n - 1..], false, true)).await;

    let r = recv_json(&mut ws).await;
    assert_eq!(
        without_positions(r),
        json!({"type": "subscribed", "id": 7, "topics": ["frag.a", "frag.b"]})
    );
    publish(server.addr, "frag.b", json!("ok")).await;
    let u = recv_json(&mut ws).await;
    assert_update(&u, "frag.b");

    // An empty final continuation frame is fine too.
    let ping = json!({"op": "ping", "id": 8}).to_string();
    send_msg(&mut ws, text_fragment(ping.as_bytes(), true, false)).await;
    send_msg(&mut ws, text_fragment(b"", false, true)).await;
    assert_eq!(recv_json(&mut ws).await, json!({"type": "pong", "id": 8}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_websocket_ping() {
    let server = start("").await;
    let mut ws = connect(server.addr).await;
    send_msg(&mut ws, Message::Ping(b"hello".to_vec().into())).await;
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        use futures_util::StreamExt;
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no pong to a WebSocket ping")
            .expect("stream ended")
            .expect("ws error");
        match m {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hello");
                break;
            }
            Message::Ping(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_answered_and_subscriptions_dropped() {
    let server = start("").await;
    let addr = server.addr;
    publish(addr, "cl.t", json!(1)).await;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["cl.t"]).await;
    assert_eq!(recv_json(&mut ws).await["type"], "snapshot");
    assert_eq!(topic_listing(addr, "cl.t").await.unwrap()["subscribers"], 1);

    ws.close(None).await.expect("send close");
    // The server completes the close handshake.
    match next_incoming(&mut ws, RECV_TIMEOUT).await {
        Incoming::Close(_) | Incoming::Ended(_) => {}
        other => panic!("expected the close handshake, got {other:?}"),
    }

    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while topic_listing(addr, "cl.t").await.unwrap()["subscribers"] != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed connection still counted as a subscriber"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Publishing to a topic whose subscriber left is fine.
    assert_eq!(publish(addr, "cl.t", json!(2)).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_returns_after_shutdown_signal() {
    let server = start("").await;
    let addr = server.addr;
    assert_eq!(publish(addr, "s.t", json!(1)).await, 1);
    let result = server.stop().await;
    assert_eq!(result, Ok(()), "server::run must return Ok(()) after shutdown");
    // The listener is gone: new connections fail (refused) or get no HTTP answer.
    let connect = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    if let Ok(Ok(mut s)) = connect {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = s
            .write_all(b"GET /api/v1/topics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut buf)).await;
        assert!(
            buf.is_empty(),
            "server still answers after shutdown: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
}
