//! HTTP request bodies: `http.body_timeout` (408 for missing, trickled and unfinished bodies,
//! also during the drain), the `http.max_inflight_body_bytes` budget (503), and over-limit
//! bodies answered with a readable 413 instead of a reset. Raw TCP clients, so that the test
//! controls exactly which bytes are sent and when.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHORT: &str = "[http]\nbody_timeout = \"500ms\"\n";
const PUBLISH_HEAD: &str = "POST /api/v1/publish HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n";

/// A response read off a raw socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    json: Value,
    /// Time from the start given to [`reply`] to the complete response.
    after: Duration,
    /// The server closed the connection after the response.
    closed: bool,
}

/// Reads one response (its body sized by Content-Length), then whether the connection ends
/// within a second. Panics when no complete response arrives within `wait`.
async fn reply(stream: &mut TcpStream, started: Instant, wait: Duration) -> Reply {
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let read = async {
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
                if raw.len() >= end + 4 + len {
                    return (head, raw[end + 4..end + 4 + len].to_vec());
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) => panic!("connection closed before a full response: {raw:?}"),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) => panic!("read failed ({e}) after {:?}", String::from_utf8_lossy(&raw)),
            }
        }
    };
    let (head, body) = tokio::time::timeout(wait, read)
        .await
        .unwrap_or_else(|_| panic!("no response within {wait:?}"));
    let after = started.elapsed();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let json =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{head}: body is not JSON ({e}): {body:?}"));
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    );
    Reply {
        status,
        head,
        json,
        after,
        closed,
    }
}

#[track_caller]
fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.json["error"]["code"], code, "{r:?}");
    assert!(r.json["error"]["message"].is_string(), "{r:?}");
}

/// Opens a connection and sends a publish request head with `headers`.
async fn post_head(addr: SocketAddr, headers: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let head = format!("{PUBLISH_HEAD}{headers}\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    s
}

/// A publish body of exactly `len` bytes.
fn body_of(len: usize) -> Vec<u8> {
    let skeleton = json!({"topic": "big.one", "data": ""}).to_string();
    let body = json!({"topic": "big.one", "data": "p".repeat(len - skeleton.len())}).to_string();
    assert_eq!(body.len(), len);
    body.into_bytes()
}

async fn publish_status(addr: SocketAddr, metric_status: &str) -> f64 {
    scrape(addr)
        .await
        .get(
            "tickwire_http_requests_total",
            &[("route", "publish"), ("status", metric_status)],
        )
        .unwrap_or(0.0)
}

/// A timed-out body is answered 408 `body_timeout` about `body_timeout` after its head, and the
/// connection closes.
#[track_caller]
fn assert_timed_out(r: &Reply) {
    assert_error(r, 408, "body_timeout");
    assert!(
        r.after >= Duration::from_millis(450) && r.after < Duration::from_millis(2500),
        "408 after {:?}, body_timeout is 500ms",
        r.after
    );
    assert!(r.closed, "connection still open after the 408: {r:?}");
    assert!(r.head.to_ascii_lowercase().contains("connection: close"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_body_never_sent_gets_408_and_closes() {
    let server = start(SHORT).await;
    let started = Instant::now();
    let mut s = post_head(server.addr, "Content-Length: 1000\r\n").await;
    let r = reply(&mut s, started, Duration::from_secs(5)).await;
    assert_timed_out(&r);
    assert_eq!(publish_status(server.addr, "408").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_body_gets_408_and_closes() {
    let server = start(SHORT).await;
    let started = Instant::now();
    let s = post_head(server.addr, "Content-Length: 1000\r\n").await;
    let (mut rd, mut wr) = s.into_split();
    // One byte every 20 ms: the connection is never idle, the body just never ends in time.
    let trickle = tokio::spawn(async move {
        for b in body_of(1000) {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut buf)).await;
    let after = started.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "connection still open after 5 s: {text:?}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(text.contains(r#""code":"body_timeout""#), "{text:?}");
    assert!(after < Duration::from_millis(2500), "408 after {after:?}");
    assert_eq!(publish_status(server.addr, "408").await, 1.0);
    assert_eq!(get_topic(server.addr, "big.one").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_chunked_body_gets_408_and_closes() {
    let server = start(SHORT).await;
    let started = Instant::now();
    let mut s = post_head(server.addr, "Transfer-Encoding: chunked\r\n").await;
    s.write_all(b"10\r\n{\"topic\":\"a.b\", \r\n").await.unwrap();
    let r = reply(&mut s, started, Duration::from_secs(5)).await;
    assert_timed_out(&r);
}

/// Bodies that do not fit in `http.max_inflight_body_bytes` are refused with 503 at once, a
/// declared one before it is read and a chunked one at the chunk that does not fit; the budget
/// comes back when the holders end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_body_budget_refuses_with_503() {
    let config =
        "[http]\nmax_body_bytes = 65536\nmax_inflight_body_bytes = 131072\nbody_timeout = \"1500ms\"\n";
    let server = start(config).await;
    let addr = server.addr;
    let started = Instant::now();
    // Two bodies of 64 KiB, mostly sent, then stalled: they hold the whole budget.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = post_head(addr, "Content-Length: 65536\r\n").await;
        s.write_all(&body_of(65536)[..60_000]).await.unwrap();
        holders.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t = Instant::now();
    let mut s = post_head(addr, "Content-Length: 100\r\n").await;
    let r = reply(&mut s, t, Duration::from_secs(5)).await;
    assert_error(&r, 503, "unavailable");
    assert!(r.after < Duration::from_millis(500), "503 after {:?}", r.after);
    assert!(r.closed, "{r:?}");

    let t = Instant::now();
    let mut s = post_head(addr, "Transfer-Encoding: chunked\r\n").await;
    s.write_all(b"5\r\n{\"top\r\n").await.unwrap();
    let r = reply(&mut s, t, Duration::from_secs(5)).await;
    assert_error(&r, 503, "unavailable");
    assert!(r.after < Duration::from_millis(500), "503 after {:?}", r.after);

    for mut s in holders {
        let r = reply(&mut s, started, Duration::from_secs(5)).await;
        assert_error(&r, 408, "body_timeout");
        assert!(r.closed, "{r:?}");
    }
    // Given back: bodies of the full size fit again, one after the other and side by side.
    for _ in 0..3 {
        let r = http_post(addr, "/api/v1/publish", &body_of(65536)).await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    }
    let full = body_of(65536);
    let (a, b) = tokio::join!(
        http_post(addr, "/api/v1/publish", &full),
        http_post(addr, "/api/v1/publish", &full),
    );
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(publish_status(addr, "503").await, 2.0);
    assert_eq!(publish_status(addr, "408").await, 2.0);
    assert_eq!(publish_status(addr, "200").await, 5.0);
}

/// Writes `req` in full (asserting that the server let it), then reads the response. The small
/// send buffer keeps most of the body in the client until the server reads it, as the
/// bandwidth-delay product of a real network does (loopback would otherwise buffer all of it in
/// the kernel, hiding a server that stops reading).
async fn send_all_then_read(addr: SocketAddr, req: &[u8]) -> Reply {
    let started = Instant::now();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(16 * 1024).unwrap();
    let mut s = socket.connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    if let Err(e) = s.write_all(req).await {
        panic!("writing the {} byte request failed: {e}", req.len());
    }
    reply(&mut s, started, Duration::from_secs(10)).await
}

/// A publisher that writes a 1.1 MiB body without `Expect: 100-continue` (what most HTTP
/// libraries do) must be able to finish writing and read the 413, with Content-Length and
/// chunked; with `Expect: 100-continue` the 413 comes before any body is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_without_expect_reads_the_413() {
    // A queue large enough for a message as large as the body limit (tests/queue_bound.rs
    // covers messages too large for the queue).
    let server = start("[queue]\nmax_bytes = 2097152\n").await;
    let addr = server.addr;
    let body = body_of(1_153_434); // 1.1 MiB, over the default 1 MiB
    for round in 0..5 {
        let mut req = format!("{PUBLISH_HEAD}Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(&body);
        let r = send_all_then_read(addr, &req).await;
        assert_error(&r, 413, "payload_too_large");
        assert!(r.closed, "round {round}: {r:?}");

        let mut req = format!("{PUBLISH_HEAD}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
        for chunk in body.chunks(64 * 1024) {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let r = send_all_then_read(addr, &req).await;
        assert_error(&r, 413, "payload_too_large");
        assert!(r.closed, "round {round}: {r:?}");
    }

    let started = Instant::now();
    let mut s = post_head(addr, "Content-Length: 1153434\r\nExpect: 100-continue\r\n").await;
    let r = reply(&mut s, started, Duration::from_secs(5)).await;
    assert_error(&r, 413, "payload_too_large");
    assert!(r.after < Duration::from_secs(1), "413 after {:?}", r.after);

    assert_eq!(publish_status(addr, "413").await, 11.0);
    assert_eq!(get_topic(addr, "big.one").await, None);
    // A body at the limit still publishes.
    let r = http_post(addr, "/api/v1/publish", &body_of(1_048_576)).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
}

/// A body still arriving at shutdown is cut at `http.body_timeout`: it does not hold the drain
/// for `server.shutdown_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_does_not_hold_the_drain() {
    let server = start(&format!("{SHORT}[server]\nshutdown_timeout = \"20s\"\n")).await;
    let addr = server.addr;
    let started = Instant::now();
    let mut s = post_head(addr, "Content-Length: 1000\r\n").await;
    s.write_all(&body_of(1000)[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stop = Instant::now();
    let run = server.begin_shutdown();
    let r = reply(&mut s, started, Duration::from_secs(5)).await;
    assert_timed_out(&r);
    let result = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the drain waited for the slow body beyond 5 s");
    result.expect("join").expect("server::run");
    let drained = stop.elapsed();
    assert!(
        drained < Duration::from_millis(2500),
        "drain took {drained:?} with body_timeout 500ms"
    );
}
