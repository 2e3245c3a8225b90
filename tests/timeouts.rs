//! Heartbeats, idle timeout and the handshake (slowloris) timeout, with short configured
//! durations.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const HEARTBEAT: &str = "[server]\nping_interval = \"100ms\"\nidle_timeout = \"400ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_answering_pings_stays_connected() {
    let server = start(HEARTBEAT).await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["hb.x"]).await;

    // Keep polling the stream (tungstenite answers each ping with a pong on the next poll),
    // but send nothing of our own for 1.5 s: far beyond the 400 ms idle timeout.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(p)))) => {
                assert!(p.is_empty(), "ping with a payload: {p:?}");
                pings += 1;
            }
            Ok(other) => panic!("a client answering pings got {other:?} while idle"),
        }
    }
    eprintln!("{pings} pings in 1.5 s at ping_interval = 100ms");
    assert!(
        (5..=20).contains(&pings),
        "expected about 15 pings in 1.5 s at a 100 ms interval, got {pings}"
    );
    // Still connected and served.
    assert_usable(&mut ws, 2).await;
    assert_eq!(publish(addr, "hb.x", serde_json::json!(1)).await, 1);
    assert_eq!(assert_update(&recv_json(&mut ws).await, "hb.x"), 1);
    let m = scrape(addr).await;
    assert_eq!(m.value("tickwire_connections", &[]), 1.0);
    assert_eq!(
        m.value("tickwire_disconnects_total", &[("reason", "idle_timeout")]),
        0.0
    );
    assert!(
        m.value("tickwire_bytes_received_total", &[]) > 0.0,
        "pongs and requests were received"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_4012_idle_timeout() {
    let server = start(HEARTBEAT).await;
    let addr = server.addr;
    // Handshake by hand, then never send a byte: no pong, no request, no close.
    let mut raw = raw_ws_connect(addr).await;
    let t0 = Instant::now();
    let mut pings = 0;
    let (code, reason) = loop {
        match read_raw_frame(&mut raw, Duration::from_secs(3)).await {
            RawFrame::Frame { opcode: 0x9, .. } => pings += 1,
            RawFrame::Frame { opcode: 0x8, payload } => break close_payload(&payload),
            RawFrame::Frame { opcode, payload } => {
                panic!("unexpected frame opcode {opcode:#x}: {payload:?}")
            }
            RawFrame::Eof => panic!("connection ended without a close frame"),
            RawFrame::Timeout => panic!("a silent client was not closed within 3 s"),
        }
    };
    let after = t0.elapsed();
    eprintln!("closed after {after:?} and {pings} pings");
    assert_eq!((code, reason.as_str()), (4012, "idle timeout"));
    assert!(
        after >= Duration::from_millis(300) && after < Duration::from_millis(1500),
        "idle timeout 400ms, but closed after {after:?}"
    );
    assert!(
        pings >= 2,
        "pings at 100, 200, 300 ms before the close; got {pings}"
    );
    // Nothing after the close frame: the server ends its side.
    match read_raw_frame(&mut raw, Duration::from_secs(3)).await {
        RawFrame::Eof => {}
        other => panic!("expected end of stream after the close frame, got {other:?}"),
    }
    drop(raw);
    wait_metric(
        addr,
        "tickwire_disconnects_total",
        &[("reason", "idle_timeout")],
        "1",
        |v| v == 1.0,
    )
    .await;
    wait_metric(addr, "tickwire_connections", &[], "0", |v| v == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tungstenite_client_that_never_polls_is_closed_4012() {
    // tungstenite only pongs when its stream is polled: not polling at all is not answering.
    let server = start(HEARTBEAT).await;
    let mut ws = connect(server.addr).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (4012, "idle timeout"));
}

/// Reads until the server closes the connection; returns the bytes read and when it closed.
async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, Option<Duration>) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (got, closed.ok().map(|()| t0.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_partial_request_head_is_cut_off() {
    let server = start("[server]\nhandshake_timeout = \"300ms\"\n").await;
    let addr = server.addr;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    let after = closed.expect("a partial request head kept the connection open for 3 s");
    eprintln!(
        "partial head: closed after {after:?}, server sent {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(1000),
        "handshake_timeout 300ms, but closed after {after:?}"
    );
    wait_metric(
        addr,
        "tickwire_connections_rejected_total",
        &[("reason", "handshake_timeout")],
        "1",
        |v| v == 1.0,
    )
    .await;

    // A connection that sends nothing at all is cut off the same way.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(3)).await;
    let after = closed.expect("a silent TCP connection was kept open for 3 s");
    assert!(after < Duration::from_millis(1000), "closed after {after:?}");
    wait_metric(
        addr,
        "tickwire_connections_rejected_total",
        &[("reason", "handshake_timeout")],
        "2",
        |v| v == 2.0,
    )
    .await;

    // A complete request in time is served normally.
    assert_eq!(http_get(addr, "/healthz").await.status, 200);
    let mut ws = connect(addr).await;
    assert_usable(&mut ws, 1).await;
    let m = scrape(addr).await;
    assert_eq!(
        m.value(
            "tickwire_connections_rejected_total",
            &[("reason", "handshake_timeout")]
        ),
        2.0,
        "completed requests are not handshake timeouts"
    );
    assert_eq!(m.value("tickwire_connections", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_session_outlives_the_handshake_timeout() {
    // handshake_timeout bounds the request head only, not the upgraded connection.
    let server = start("[server]\nhandshake_timeout = \"100ms\"\n").await;
    let mut ws = connect(server.addr).await;
    subscribe(&mut ws, 1, &["hs.x"]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_usable(&mut ws, 2).await;
    assert_eq!(
        scrape(server.addr).await.value(
            "tickwire_connections_rejected_total",
            &[("reason", "handshake_timeout")]
        ),
        0.0
    );
}
