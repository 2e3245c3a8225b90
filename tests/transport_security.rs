//! Transport security end to end: wss:// and https:// on one TLS listener (handshakes in the
//! connection tasks, bounded by `server.handshake_timeout`), the origin allowlist (403) and the
//! per-IP connection limit (429, released on close).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allowlist_get_403() {
    let server =
        start("[server]\nallowed_origins = [\"https://app.example.com\", \"http://localhost:3000\"]\n").await;
    let addr = server.addr;
    for origin in [
        "https://evil.example",
        "null",
        "https://app.example.com.evil.example",
    ] {
        let r = try_connect(addr, "/ws", &[("Origin", origin)]).await.unwrap_err();
        r.assert(403, "forbidden");
    }
    for headers in [
        vec![("Origin", "https://APP.example.com:443")],
        vec![("Origin", "http://localhost:3000")],
        // Not a browser: no Origin header, nothing to check.
        vec![],
    ] {
        let mut ws = try_connect(addr, "/ws", &headers).await.unwrap();
        assert_usable(&mut ws, 1).await;
    }
    let m = scrape(addr).await;
    assert_eq!(
        m.value("tickwire_connections_rejected_total", &[("reason", "origin")]),
        3.0
    );

    // An empty allowlist lets every origin in.
    let open = start("").await;
    let ws = try_connect(open.addr, "/ws", &[("Origin", "https://anywhere.example")]).await;
    assert!(ws.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_limited_and_released_on_close() {
    let server = start("[limits]\nmax_connections_per_ip = 2\n").await;
    let addr = server.addr;
    let first = connect(addr).await;
    let mut second = connect(addr).await;
    let r = try_connect(addr, "/ws", &[]).await.unwrap_err();
    r.assert(429, "too_many_connections");
    assert_usable(&mut second, 1).await;
    let m = scrape(addr).await;
    assert_eq!(
        m.value("tickwire_connections_rejected_total", &[("reason", "ip_limit")]),
        1.0
    );
    assert_eq!(m.value("tickwire_connections", &[]), 2.0);

    close_gracefully(first).await;
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    let mut third = loop {
        match try_connect(addr, "/ws", &[]).await {
            Ok(ws) => break ws,
            Err(r) if tokio::time::Instant::now() < deadline => {
                assert_eq!(r.status, 429, "{r:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(r) => panic!("the closed connection's place never came back: {r:?}"),
        }
    };
    assert_usable(&mut third, 2).await;
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// One HTTPS request with `Connection: close`; returns (status, JSON body).
async fn https(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let mut tls = tls_connect(addr, cert).await.expect("TLS handshake");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // The server may end with a TLS close_notify or just a FIN: either way the response is in.
    let _ = tokio::time::timeout(RECV_TIMEOUT, tls.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_share_the_tls_listener() {
    let (dir, cert) = certificate_files("tls");
    let cert = cert.der;
    let server = start(&tls_toml(&dir, "")).await;
    let addr = server.addr;
    let stream = tls_connect(addr, &cert).await.expect("TLS handshake");
    let mut ws = try_handshake(format!("wss://localhost:{}/ws", addr.port()), stream, &[])
        .await
        .expect("wss handshake");
    let sub = json!({"op": "subscribe", "id": 1, "topics": ["chat.*"]}).to_string();
    ws.send(Message::text(sub)).await.unwrap();
    let (status, body) = https(
        addr,
        &cert,
        "POST",
        "/api/v1/publish",
        r#"{"topic":"chat.tls","data":"hi"}"#,
    )
    .await;
    assert_eq!((status, &body), (200, &json!({"topic": "chat.tls", "seq": 1})));
    let mut got = Vec::new();
    while got.len() < 2 {
        let msg = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("wss message");
        if let Some(Ok(Message::Text(t))) = msg {
            got.push(serde_json::from_str::<Value>(t.as_str()).unwrap());
        }
    }
    assert_eq!(got[0]["type"], "subscribed", "{got:?}");
    assert_update(&got[1], "chat.tls");
    assert_eq!(got[1]["data"], "hi");
    let (status, body) = https(addr, &cert, "GET", "/api/v1/topics/chat.tls", "").await;
    assert_eq!((status, &body["seq"]), (200, &json!(1)), "{body}");

    // Plain HTTP to the TLS port fails the handshake and is counted.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(RECV_TIMEOUT, plain.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "plain HTTP was served"
    );
    // Counted once the server's side of the handshake gave up: poll (over TLS, of course).
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while tls_metric(addr, &cert, "tls").await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rejected{{reason=tls}} never became 1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `GET /metrics` over TLS, parsed.
async fn tls_metric(addr: SocketAddr, cert: &CertificateDer<'static>, reason: &str) -> f64 {
    let mut tls = tls_connect(addr, cert).await.expect("TLS handshake");
    tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(RECV_TIMEOUT, tls.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    parse_prometheus(body).value("tickwire_connections_rejected_total", &[("reason", reason)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_blocks_nobody_and_times_out() {
    let (dir, cert) = certificate_files("tls");
    let cert = cert.der;
    let server = start(&tls_toml(&dir, "[server]\nhandshake_timeout = \"300ms\"\n")).await;
    let addr = server.addr;
    // Connects and never says a word.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    // Meanwhile others get through at once.
    let stream = tls_connect(addr, &cert).await.expect("TLS handshake");
    let mut ws = try_handshake(format!("wss://localhost:{}/ws", addr.port()), stream, &[])
        .await
        .expect("wss handshake");
    ws.send(Message::text(r#"{"op":"ping","id":1}"#)).await.unwrap();
    let pong = tokio::time::timeout(RECV_TIMEOUT, ws.next()).await.unwrap();
    assert!(matches!(pong, Some(Ok(Message::Text(t))) if t.as_str() == r#"{"type":"pong","id":1}"#));
    // The stalled one is dropped after handshake_timeout.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(RECV_TIMEOUT, stalled.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "stalled handshake not closed: {n:?}"
    );
    assert_eq!(tls_metric(addr, &cert, "handshake_timeout").await, 1.0);
    let _ = std::fs::remove_dir_all(dir);
}
