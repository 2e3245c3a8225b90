//! `server.echo_endpoint`: `GET /echo` sends every message back through the same reading,
//! limits and close handling as `/ws` (what the Autobahn suite then tests in depth), and does
//! not exist unless enabled. Also the RFC 6455 rules enforced on top of fastwebsockets.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const ECHO: &str = "[server]\necho_endpoint = true\nmax_message_bytes = 1024\n";

async fn connect_echo(server: &TestServer) -> Ws {
    try_connect(server.addr, "/echo", &[])
        .await
        .unwrap_or_else(|r| panic!("/echo refused: {r:?}"))
}

/// The next data message or close; pings and pongs are skipped.
async fn next_message(ws: &mut Ws) -> Message {
    loop {
        match tokio::time::timeout(RECV_TIMEOUT, ws.next()).await {
            Err(_) => panic!("nothing from the server within {RECV_TIMEOUT:?}"),
            Ok(None) => panic!("stream ended without a close frame"),
            Ok(Some(Err(e))) => panic!("read failed: {e}"),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(m))) => return m,
        }
    }
}

async fn expect_close(ws: &mut Ws, code: u16) {
    match next_message(ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), code, "close {f:?}"),
        other => panic!("expected close {code}, got {other:?}"),
    }
}

fn fragment(data: &[u8], opcode: OpCode, fin: bool) -> Message {
    Message::Frame(Frame::message(data.to_vec(), opcode, fin))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_text_and_binary_with_their_opcode() {
    let server = start(ECHO).await;
    let mut ws = connect_echo(&server).await;
    send_msg(&mut ws, Message::text("héllo, not JSON {")).await;
    assert_eq!(next_message(&mut ws).await, Message::text("héllo, not JSON {"));
    let bytes: Vec<u8> = (0..=255).collect();
    send_msg(&mut ws, Message::binary(bytes.clone())).await;
    assert_eq!(next_message(&mut ws).await, Message::binary(bytes));
    send_msg(&mut ws, Message::text("")).await;
    assert_eq!(next_message(&mut ws).await, Message::text(""));
    // The largest message allowed, exactly at max_message_bytes.
    let big = "x".repeat(1024);
    send_msg(&mut ws, Message::text(big.clone())).await;
    assert_eq!(next_message(&mut ws).await, Message::text(big));
    close_gracefully(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reassembles_fragments_with_control_frames_between() {
    let server = start(ECHO).await;
    let mut ws = connect_echo(&server).await;
    // "ü" is split between two fragments: valid once reassembled.
    let text = "fragmented ü message".as_bytes();
    let split = text.iter().position(|&b| b == 0xc3).unwrap() + 1;
    send_msg(&mut ws, fragment(&text[..split], OpCode::Data(Data::Text), false)).await;
    send_msg(&mut ws, Message::Ping(b"between".to_vec().into())).await;
    send_msg(
        &mut ws,
        fragment(&text[split..], OpCode::Data(Data::Continue), true),
    )
    .await;
    // The pong comes first, then the whole message as one.
    match tokio::time::timeout(RECV_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Pong(p)))) => assert_eq!(&p[..], b"between"),
        other => panic!("expected the pong first, got {other:?}"),
    }
    assert_eq!(next_message(&mut ws).await, Message::text("fragmented ü message"));
    for part in [b"ab".as_slice(), b"cd", b"ef"] {
        let (op, fin) = match part {
            b"ab" => (OpCode::Data(Data::Binary), false),
            b"cd" => (OpCode::Data(Data::Continue), false),
            _ => (OpCode::Data(Data::Continue), true),
        };
        send_msg(&mut ws, fragment(part, op, fin)).await;
    }
    assert_eq!(next_message(&mut ws).await, Message::binary(b"abcdef".to_vec()));
    close_gracefully(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_close_with_1009() {
    let server = start(ECHO).await;
    // One frame over the limit.
    let mut ws = connect_echo(&server).await;
    send_msg(&mut ws, Message::binary(vec![7u8; 1025])).await;
    expect_close(&mut ws, 1009).await;
    // Fragments that are each small but add up to more than the limit.
    let mut ws = connect_echo(&server).await;
    send_msg(&mut ws, fragment(&[b'a'; 600], OpCode::Data(Data::Text), false)).await;
    send_msg(
        &mut ws,
        fragment(&[b'b'; 600], OpCode::Data(Data::Continue), true),
    )
    .await;
    expect_close(&mut ws, 1009).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_with_1007_even_before_the_last_fragment() {
    let server = start(ECHO).await;
    let mut ws = connect_echo(&server).await;
    send_msg(&mut ws, fragment(b"ok \xff", OpCode::Data(Data::Text), true)).await;
    expect_close(&mut ws, 1007).await;
    // An invalid byte in the first fragment of a message that never finishes: refused at once.
    let mut ws = connect_echo(&server).await;
    send_msg(
        &mut ws,
        fragment(b"\xce\xba\xed\xa0\x80", OpCode::Data(Data::Text), false),
    )
    .await;
    expect_close(&mut ws, 1007).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_is_a_404_unless_enabled() {
    let server = start("").await;
    let refusal = try_connect(server.addr, "/echo", &[])
        .await
        .expect_err("/echo must not upgrade by default");
    refusal.assert(404, "not_found");
    // /ws is unaffected, and does not echo.
    let mut ws = connect(server.addr).await;
    assert_usable(&mut ws, 1).await;
    send_msg(&mut ws, Message::binary(vec![1, 2, 3])).await;
    assert_eq!(recv_close(&mut ws).await.0, 1003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_client_frames_close_with_1002() {
    let server = start("").await;
    let mut raw = raw_ws_connect(server.addr).await;
    let text = br#"{"op":"ping","id":1}"#;
    let mut frame = vec![0x81, text.len() as u8];
    frame.extend_from_slice(text);
    raw.write_all(&frame).await.unwrap();
    match read_raw_frame(&mut raw, Duration::from_secs(5)).await {
        RawFrame::Frame { opcode: 8, payload } => assert_eq!(close_payload(&payload).0, 1002),
        other => panic!("expected close 1002, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_pong_closes_with_1002() {
    let server = start(ECHO).await;
    let mut ws = connect_echo(&server).await;
    send_msg(&mut ws, Message::Frame(Frame::pong(vec![0u8; 126]))).await;
    expect_close(&mut ws, 1002).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_close_gets_1002_not_its_echo() {
    use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
    let server = start(ECHO).await;
    let mut ws = connect_echo(&server).await;
    let close = CloseFrame {
        code: 1000.into(),
        reason: "r".repeat(124).into(),
    };
    send_msg(&mut ws, Message::Frame(Frame::close(Some(close)))).await;
    expect_close(&mut ws, 1002).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_is_echoed_only_when_its_payload_is_valid() {
    let server = start("").await;
    let mut reason_1000 = 1000u16.to_be_bytes().to_vec();
    reason_1000.extend_from_slice(b"bye");
    let mut bad_utf8 = 1000u16.to_be_bytes().to_vec();
    bad_utf8.push(0xff);
    // (close payload sent, close code expected back: None means the payload echoed as is)
    let cases: [(Vec<u8>, Option<u16>); 6] = [
        (Vec::new(), None),
        (reason_1000, None),
        (vec![0x03], Some(1002)),
        (1005u16.to_be_bytes().to_vec(), Some(1002)),
        (999u16.to_be_bytes().to_vec(), Some(1002)),
        (bad_utf8, Some(1007)),
    ];
    for (payload, want) in cases {
        let mut raw = raw_ws_connect(server.addr).await;
        // FIN + close, masked with an all-zero key (legal, and leaves the payload as is).
        let mut frame = vec![0x88, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(&payload);
        raw.write_all(&frame).await.unwrap();
        match (read_raw_frame(&mut raw, RECV_TIMEOUT).await, want) {
            (
                RawFrame::Frame {
                    opcode: 8,
                    payload: got,
                },
                None,
            ) => assert_eq!(got, payload),
            (
                RawFrame::Frame {
                    opcode: 8,
                    payload: got,
                },
                Some(code),
            ) => {
                assert_eq!(close_payload(&got).0, code, "close payload {payload:02x?}")
            }
            (other, _) => panic!("close payload {payload:02x?}: expected a close, got {other:?}"),
        }
    }
}
