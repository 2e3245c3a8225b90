//! `server.trusted_proxies` and `server.proxy_protocol`: behind a trusted proxy the per-IP limit
//! counts the client named by `X-Forwarded-For` or the PROXY protocol header, not the proxy;
//! from anyone else both are ignored. Every test runs on 127.0.0.1, so "trusted" means
//! 127.0.0.1 is listed, and "untrusted" that only some other address is.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket upgrade with `X-Forwarded-For: xff` (none when empty): the status (101 or the
/// refusal's), keeping the connection open while the returned guard lives.
async fn upgrade_with_xff(addr: SocketAddr, xff: &str) -> (u16, Option<Ws>) {
    let headers: Vec<(&str, &str)> = if xff.is_empty() {
        vec![]
    } else {
        vec![("X-Forwarded-For", xff)]
    };
    match try_connect(addr, "/ws", &headers).await {
        Ok(ws) => (101, Some(ws)),
        Err(refusal) => {
            if refusal.status == 429 {
                refusal.assert(429, "too_many_connections");
            }
            (refusal.status, None)
        }
    }
}

/// Opens upgrades in order, asserting each status, and keeps the open ones.
async fn expect_upgrades(addr: SocketAddr, steps: &[(&str, u16)]) -> Vec<Ws> {
    let mut open = Vec::new();
    for (i, (xff, status)) in steps.iter().enumerate() {
        let (got, ws) = upgrade_with_xff(addr, xff).await;
        assert_eq!(got, *status, "step {i}: X-Forwarded-For {xff:?}");
        open.extend(ws);
    }
    open
}

/// `rejected{reason="ip_limit"}`, scraped from `addr` (the admin listener when the main one
/// expects PROXY headers from 127.0.0.1).
async fn ip_limit_rejections(addr: SocketAddr) -> f64 {
    scrape(addr)
        .await
        .value("tickwire_connections_rejected_total", &[("reason", "ip_limit")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_trusted_proxy_names_the_client() {
    let server =
        start("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[limits]\nmax_connections_per_ip = 2\n").await;
    let addr = server.addr;
    let mut open = expect_upgrades(
        addr,
        &[
            ("10.0.0.1", 101),
            ("10.0.0.1", 101),
            ("10.0.0.1", 429),
            // Another client behind the same proxy still gets in...
            ("10.0.0.2", 101),
            ("10.0.0.2", 101),
            // ...and so does the proxy itself (no header: the peer is the client).
            ("", 101),
        ],
    )
    .await;
    assert_eq!(ip_limit_rejections(addr).await, 1.0);
    for (i, ws) in open.iter_mut().enumerate() {
        assert_usable(ws, i as i64).await;
    }
    // A place is given back under the client's address, not the proxy's.
    close_gracefully(open.remove(0)).await;
    wait_metric(addr, "tickwire_connections", &[], "4", |v| v == 4.0).await;
    expect_upgrades(addr, &[("10.0.0.1", 101), ("10.0.0.1", 429)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_ignored_without_trusted_proxies() {
    for config in [
        "[limits]\nmax_connections_per_ip = 2\n",
        // Listing someone else does not make 127.0.0.1 trusted.
        "[server]\ntrusted_proxies = [\"10.9.9.9/32\"]\n[limits]\nmax_connections_per_ip = 2\n",
    ] {
        let server = start(config).await;
        // Every upgrade counts against 127.0.0.1, whatever it claims.
        let _open = expect_upgrades(
            server.addr,
            &[("10.0.0.1", 101), ("10.0.0.2", 101), ("10.0.0.3", 429), ("", 429)],
        )
        .await;
        assert_eq!(ip_limit_rejections(server.addr).await, 2.0, "{config}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rightmost_untrusted_hop_is_the_client() {
    let server = start(
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.1\"]\n\
         [limits]\nmax_connections_per_ip = 1\n",
    )
    .await;
    let _open = expect_upgrades(
        server.addr,
        &[
            // 10.0.0.1 is a trusted hop too: the client is 6.6.6.6.
            ("6.6.6.6, 10.0.0.1", 101),
            ("6.6.6.6", 429),
            // The rightmost entry is untrusted: it is the client, and the (spoofable) leftmost
            // one is never looked at.
            ("1.1.1.1, 7.7.7.7", 101),
            ("7.7.7.7", 429),
            ("2.2.2.2, 7.7.7.7", 429),
            ("6.6.6.6, 7.7.7.7, 10.0.0.1", 429),
            ("9.9.9.9", 101),
            // Every hop trusted: the leftmost.
            ("10.0.0.1, 127.0.0.1", 101),
            ("10.0.0.1", 429),
            // A malformed entry on the walk: the peer (127.0.0.1) is the client.
            ("5.5.5.5, unknown", 101),
            ("", 429),
        ],
    )
    .await;
    // Two X-Forwarded-For headers: the last one's rightmost entry is examined first.
    let two = try_connect(
        server.addr,
        "/ws",
        &[
            ("X-Forwarded-For", "3.3.3.3"),
            ("X-Forwarded-For", "9.9.9.9, 10.0.0.1"),
        ],
    )
    .await;
    assert!(two.is_err(), "9.9.9.9 (already connected) must be the client");
}

/// A raw TCP connection that sends `header` before anything else.
async fn connect_with_header(addr: SocketAddr, header: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("TCP connect");
    stream.set_nodelay(true).ok();
    stream.write_all(header).await.expect("write the PROXY header");
    stream
}

/// A WebSocket upgrade after `header`: 101 or the refusal's status (with the connection).
async fn upgrade_after(addr: SocketAddr, header: &[u8]) -> (u16, Option<Ws>) {
    let stream = connect_with_header(addr, header).await;
    match try_handshake(format!("ws://{addr}/ws"), stream, &[]).await {
        Ok(ws) => (101, Some(ws)),
        Err(refusal) => (refusal.status, None),
    }
}

fn v1(source: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {source} 127.0.0.1 {port} 8080\r\n").into_bytes()
}

fn v2(source: [u8; 4], port: u16, tlv: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
    h.extend_from_slice(&source);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h.extend_from_slice(tlv);
    h
}

fn v2_local() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

/// 127.0.0.1 is a trusted proxy that sends PROXY headers. Metrics are read from the admin
/// listener, which never expects the header (probes and scrapes do not pass the proxy).
const PROXY_PROTOCOL: &str = "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\nproxy_protocol = true\n\
                              handshake_timeout = \"300ms\"\n[limits]\nmax_connections_per_ip = 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_source_is_the_client() {
    let (server, admin) = start_with_admin(PROXY_PROTOCOL).await;
    let addr = server.addr;
    let mut open = Vec::new();
    for (i, (header, status)) in [
        (v1("192.0.2.1", 5000), 101),
        // The same client on another port: over its limit of 1.
        (v1("192.0.2.1", 5001), 429),
        (v2([192, 0, 2, 2], 6000, &[]), 101),
        // With a TLV (ALPN "h2"), skipped.
        (v2([192, 0, 2, 2], 6001, &[0x01, 0x00, 0x02, b'h', b'2']), 429),
        (v2([192, 0, 2, 3], 6002, &[0x01, 0x00, 0x02, b'h', b'2']), 101),
        (v1("192.0.2.3", 5002), 429),
        // LOCAL and UNKNOWN: the proxy's own connection, counted under 127.0.0.1.
        (v2_local(), 101),
        (b"PROXY UNKNOWN\r\n".to_vec(), 429),
    ]
    .into_iter()
    .enumerate()
    {
        let (got, ws) = upgrade_after(addr, &header).await;
        assert_eq!(got, status, "step {i}: {:?}", String::from_utf8_lossy(&header));
        open.extend(ws);
    }
    assert_eq!(ip_limit_rejections(admin).await, 4.0);
    // The header and the request may arrive in one segment.
    let mut both = v1("192.0.2.9", 7000);
    both.extend_from_slice(b"GET /api/v1/topics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut stream = connect_with_header(addr, &both).await;
    let mut reply = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut reply))
        .await
        .expect("response in time")
        .expect("read");
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
}

/// Reads until the server closes; what it sent before closing.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut got)).await {
        Ok(Ok(_)) => got,
        // A reset also closes it.
        Ok(Err(_)) => got,
        Err(_) => panic!("the server did not close the connection; sent {got:?}"),
    }
}

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peer_without_a_valid_header_is_closed() {
    let (server, admin) = start_with_admin(PROXY_PROTOCOL).await;
    let addr = server.addr;
    let mut garbled_v2 = v2([192, 0, 2, 1], 1, &[]);
    garbled_v2[12] = 0x31; // version 3
    for (what, sent) in [
        ("no header", UPGRADE.to_vec()),
        ("garbled v1", b"PROXY TCP9 192.0.2.1 127.0.0.1 1 2\r\n".to_vec()),
        (
            "v1 without CRLF",
            [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat(),
        ),
        ("garbled v2", garbled_v2),
    ] {
        let mut stream = connect_with_header(addr, &sent).await;
        let _ = stream.write_all(UPGRADE).await;
        let got = read_until_closed(&mut stream).await;
        assert!(
            got.is_empty(),
            "{what}: the server answered {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    wait_metric(
        admin,
        "tickwire_connections_rejected_total",
        &[("reason", "proxy_protocol")],
        "4",
        |v| v == 4.0,
    )
    .await;
    // Half a header, then silence: closed at handshake_timeout.
    let mut stream = connect_with_header(addr, b"PROXY TCP4 192.0.2.1").await;
    let got = read_until_closed(&mut stream).await;
    assert!(got.is_empty());
    let m = scrape(admin).await;
    assert_eq!(
        m.value(
            "tickwire_connections_rejected_total",
            &[("reason", "handshake_timeout")]
        ),
        1.0
    );
    assert_eq!(m.value("tickwire_connections", &[]), 0.0);
    // A valid header still works.
    let (status, _ws) = upgrade_after(addr, &v1("192.0.2.1", 1)).await;
    assert_eq!(status, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_from_an_untrusted_peer_is_refused() {
    let server = start(
        "[server]\ntrusted_proxies = [\"10.9.9.9/32\"]\nproxy_protocol = true\n\
         [limits]\nmax_connections_per_ip = 1\n",
    )
    .await;
    let addr = server.addr;
    for header in [v1("192.0.2.1", 5000), v2([192, 0, 2, 1], 5000, &[])] {
        let mut stream = connect_with_header(addr, &header).await;
        let _ = stream.write_all(UPGRADE).await;
        let got = read_until_closed(&mut stream).await;
        // Read as HTTP: not a request line.
        assert!(
            got.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(
        scrape(addr).await.value(
            "tickwire_connections_rejected_total",
            &[("reason", "proxy_protocol")]
        ),
        0.0
    );
    // The untrusted peer is served directly, as itself: one place for 127.0.0.1.
    let (first, _ws) = upgrade_with_xff(addr, "").await;
    assert_eq!(first, 101);
    let (second, _) = upgrade_with_xff(addr, "").await;
    assert_eq!(second, 429);
}

/// The header comes before TLS: a load balancer passing TLS through to tickwire sends it in
/// clear, then the client's TLS handshake follows on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_header_precedes_tls() {
    let (dir, cert) = certificate_files("proxies-tls");
    let (server, admin) = start_with_admin(&format!("{PROXY_PROTOCOL}{}", tls_toml(&dir, ""))).await;
    let addr = server.addr;
    let wss = |header: Vec<u8>| {
        let cert = cert.der.clone();
        async move {
            let tcp = connect_with_header(addr, &header).await;
            let tls = tls_handshake(tcp, &cert)
                .await
                .expect("TLS handshake after the PROXY header");
            match try_handshake(format!("ws://{addr}/ws"), tls, &[]).await {
                Ok(ws) => (101, Some(ws)),
                Err(refusal) => (refusal.status, None),
            }
        }
    };
    let (first, _a) = wss(v1("192.0.2.1", 1)).await;
    let (second, _b) = wss(v2([192, 0, 2, 2], 2, &[])).await;
    let (third, _) = wss(v1("192.0.2.1", 3)).await;
    assert_eq!((first, second, third), (101, 101, 429));
    assert_eq!(ip_limit_rejections(admin).await, 1.0);
    std::fs::remove_dir_all(&dir).ok();
}
