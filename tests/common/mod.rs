//! Shared harness for the black-box integration tests.
//!
//! Every test starts its own in-process server on 127.0.0.1:0 and talks to it only through its
//! public surface: WebSocket (`GET /ws`) and the HTTP API.

#![allow(dead_code)]

pub mod redis;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket connection.
pub type Ws = WebSocketStream<TcpStream>;

/// How long any single expected message may take to arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long we listen to conclude that "nothing arrives".
pub const SILENCE: Duration = Duration::from_millis(300);

/// A running in-process server. Dropping it fires the shutdown signal.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl TestServer {
    /// Fires the shutdown signal and waits (bounded) for `run` to return.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().expect("server handle");
        match tokio::time::timeout(Duration::from_secs(10), handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(format!("server task panicked: {join}")),
            Err(_) => Err("server::run did not return within 10 s of shutdown".into()),
        }
    }

    /// `ws://` URL of the WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// With `TEST_LOG=<filter>` set (e.g. `TEST_LOG=tickwire=debug`), server logs go to the test
/// output.
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Builds the settings for a test: the built-in defaults with the feed disabled (unless the
/// test configures `[feed]` itself), overlaid with `extra`.
pub fn settings(extra: &str) -> tickwire::settings::Settings {
    let toml = if extra.contains("[feed]") {
        extra.to_string()
    } else {
        format!("[feed]\nenabled = false\n\n{extra}")
    };
    tickwire::settings::Settings::from_toml(&toml)
        .unwrap_or_else(|e| panic!("Settings::from_toml rejected test config: {e:?}\n---\n{toml}"))
}

/// Starts a server with the defaults overlaid by `extra_toml` (feed disabled unless `extra_toml`
/// has a `[feed]` section).
pub async fn start(extra_toml: &str) -> TestServer {
    init_logging();
    let settings = settings(extra_toml);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let handle = tokio::spawn(async move {
        tickwire::server::run(listener, settings, shutdown)
            .await
            .map_err(|e| format!("{e:?}"))
    });
    TestServer {
        addr,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

fn client_config() -> WebSocketConfig {
    // Generous limits: the server may legitimately send large frames to us.
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20))
}

async fn handshake(addr: SocketAddr, stream: TcpStream) -> Ws {
    stream.set_nodelay(true).expect("set_nodelay");
    let url = format!("ws://{addr}/ws");
    let handshake = tokio_tungstenite::client_async_with_config(url, stream, Some(client_config()));
    match tokio::time::timeout(RECV_TIMEOUT, handshake).await {
        Ok(Ok((ws, _resp))) => ws,
        Ok(Err(e)) => panic!("WebSocket handshake with {addr} failed: {e}"),
        Err(_) => panic!("WebSocket handshake with {addr} timed out"),
    }
}

/// Opens a WebSocket to `GET /ws`.
pub async fn connect(addr: SocketAddr) -> Ws {
    let stream = tokio::time::timeout(RECV_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("TCP connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("TCP connect to {addr} failed: {e}"));
    handshake(addr, stream).await
}

/// Opens a WebSocket whose TCP receive buffer is tiny, so that a client that stops reading makes
/// the server's writes back up quickly.
pub async fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: u32) -> Ws {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    let stream = tokio::time::timeout(RECV_TIMEOUT, socket.connect(addr))
        .await
        .unwrap_or_else(|_| panic!("TCP connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("TCP connect to {addr} failed: {e}"));
    handshake(addr, stream).await
}

pub async fn send_msg(ws: &mut Ws, msg: Message) {
    tokio::time::timeout(RECV_TIMEOUT, ws.send(msg))
        .await
        .expect("sending a WebSocket message timed out")
        .expect("sending a WebSocket message failed");
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    send_msg(ws, Message::text(text)).await;
}

pub async fn send_json(ws: &mut Ws, value: Value) {
    send_text(ws, &value.to_string()).await;
}

/// What the next data message turned out to be.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Close(Option<(u16, String)>),
    Ended(String),
    Timeout,
}

/// Next text message (parsed), close, end of stream, or timeout. Pings/pongs are skipped.
pub async fn next_incoming(ws: &mut Ws, wait: Duration) -> Incoming {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Incoming::Timeout,
            Ok(n) => n,
        };
        match next {
            None => return Incoming::Ended("stream ended".into()),
            Some(Err(e)) => return Incoming::Ended(format!("error: {e}")),
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("server sent a text frame that is not JSON ({e}): {t}"));
                return Incoming::Json(v);
            }
            Some(Ok(Message::Close(frame))) => {
                return Incoming::Close(frame.map(|f| (u16::from(f.code), f.reason.as_str().to_string())))
            }
            Some(Ok(Message::Binary(b))) => {
                panic!("server sent an unexpected binary frame of {} bytes", b.len())
            }
            Some(Ok(_)) => continue, // ping / pong / raw frame
        }
    }
}

/// Receives the next JSON message, panicking with a clear message on timeout or close.
pub async fn recv_json(ws: &mut Ws) -> Value {
    recv_json_within(ws, RECV_TIMEOUT).await
}

pub async fn recv_json_within(ws: &mut Ws, wait: Duration) -> Value {
    match next_incoming(ws, wait).await {
        Incoming::Json(v) => v,
        Incoming::Timeout => panic!("no message from the server within {wait:?}"),
        Incoming::Close(c) => panic!("connection closed by the server ({c:?}) while awaiting a message"),
        Incoming::Ended(e) => panic!("connection ended ({e}) while awaiting a message"),
    }
}

/// Asserts nothing (no data message, no close) arrives within `wait`.
pub async fn expect_silence(ws: &mut Ws, wait: Duration) {
    match next_incoming(ws, wait).await {
        Incoming::Timeout => {}
        Incoming::Json(v) => panic!("expected silence, but the server sent {v}"),
        Incoming::Close(c) => panic!("expected silence, but the server closed the connection: {c:?}"),
        Incoming::Ended(e) => panic!("expected silence, but the connection ended: {e}"),
    }
}

/// Reads (discarding data messages) until the server's close frame; returns (code, reason).
pub async fn recv_close(ws: &mut Ws) -> (u16, String) {
    recv_close_within(ws, RECV_TIMEOUT).await.1
}

/// Like [`recv_close`], also returning the data messages read before the close.
pub async fn recv_close_within(ws: &mut Ws, wait: Duration) -> (Vec<Value>, (u16, String)) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_incoming(ws, left).await {
            Incoming::Json(v) => before.push(v),
            Incoming::Close(Some(c)) => return (before, c),
            Incoming::Close(None) => panic!("server closed the connection without a close code"),
            Incoming::Ended(e) => panic!(
                "connection ended ({e}) without a close frame after {} messages",
                before.len()
            ),
            Incoming::Timeout => panic!(
                "no close frame within {wait:?} ({} messages received meanwhile)",
                before.len()
            ),
        }
    }
}

/// Sends `request` and returns the next message.
pub async fn request(ws: &mut Ws, request: Value) -> Value {
    send_json(ws, request).await;
    recv_json(ws).await
}

/// A `subscribed` reply without its `positions` (random epochs), for exact comparisons.
pub fn without_positions(mut reply: Value) -> Value {
    if let Some(obj) = reply.as_object_mut() {
        obj.remove("positions");
    }
    reply
}

/// Subscribes and asserts the `subscribed` reply. Snapshots (if any) are left unread.
pub async fn subscribe(ws: &mut Ws, id: i64, topics: &[&str]) {
    let reply = request(ws, json!({"op": "subscribe", "id": id, "topics": topics})).await;
    assert_eq!(
        without_positions(reply),
        json!({"type": "subscribed", "id": id, "topics": topics}),
        "unexpected reply to subscribe"
    );
}

/// Unsubscribes and asserts the `unsubscribed` reply.
pub async fn unsubscribe(ws: &mut Ws, id: i64, topics: &[&str]) {
    let reply = request(ws, json!({"op": "unsubscribe", "id": id, "topics": topics})).await;
    assert_eq!(
        reply,
        json!({"type": "unsubscribed", "id": id, "topics": topics}),
        "unexpected reply to unsubscribe"
    );
}

/// A ping round trip: proves the connection is still open and serving requests.
pub async fn assert_usable(ws: &mut Ws, id: i64) {
    let reply = request(ws, json!({"op": "ping", "id": id})).await;
    assert_eq!(reply, json!({"type": "pong", "id": id}), "ping after an error");
}

/// Asserts `v` is an error message with the given code and id (None: no `id` key at all).
#[track_caller]
pub fn assert_error(v: &Value, code: &str, id: Option<i64>) {
    assert_eq!(v["type"], "error", "expected an error message, got {v}");
    assert_eq!(v["code"], code, "wrong error code in {v}");
    assert!(v["message"].is_string(), "error without a string message: {v}");
    match id {
        Some(id) => assert_eq!(v["id"], json!(id), "error must echo the request id: {v}"),
        None => assert!(
            v.get("id").is_none(),
            "error for a request without id has an id: {v}"
        ),
    }
}

/// Asserts `v` is an update on `topic` and returns its seq.
#[track_caller]
pub fn assert_update(v: &Value, topic: &str) -> u64 {
    assert_eq!(v["type"], "update", "expected an update, got {v}");
    assert_eq!(v["topic"], topic, "update on the wrong topic: {v}");
    assert!(v["ts"].is_u64(), "update without an integer ts: {v}");
    v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("update without an integer seq: {v}"))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Asserts a `ts` field is a plausible current Unix time in milliseconds.
#[track_caller]
pub fn assert_recent_ts(v: &Value) {
    let ts = v["ts"].as_u64().unwrap_or_else(|| panic!("no integer ts in {v}"));
    let now = now_ms();
    assert!(
        ts + 60_000 >= now && ts <= now + 60_000,
        "ts {ts} is not a current Unix time in ms (now {now}): {v}"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP client (minimal HTTP/1.1, one request per connection)
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends one raw HTTP/1.1 request with `Connection: close` and reads the whole response.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await.expect("HTTP connect");
        stream.set_nodelay(true).ok();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in extra_headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if let Some(b) = body {
            out.extend_from_slice(b);
        }
        // The server may answer (e.g. 413) and stop reading before the whole body is sent, so a
        // write error is not fatal: the response is what counts.
        let _ = stream.write_all(&out).await;
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if raw.is_empty() => panic!("HTTP {method} {path}: read failed: {e}"),
                Err(_) => break,
            }
            if let Some(resp) = parse_response(&raw) {
                return resp;
            }
        }
        parse_response(&raw).unwrap_or_else(|| {
            panic!(
                "HTTP {method} {path}: incomplete response: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("HTTP {method} {path} timed out"))
}

/// Parses a complete response out of `raw`, or None when more bytes are needed.
fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).expect("response head is not UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[head_end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = get("content-length") {
        let len: usize = len.parse().expect("content-length");
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if get("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = rest[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
            let size_str = std::str::from_utf8(&rest[pos..line_end]).ok()?;
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                break;
            }
            if rest.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        // Body delimited by EOF: only complete once the caller saw EOF.
        return None;
    };
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_request(addr, "GET", path, &[], None).await
}

pub async fn http_post(addr: SocketAddr, path: &str, body: &[u8]) -> HttpResponse {
    http_request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body),
    )
    .await
}

/// GET returning (status, JSON body).
pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let r = http_get(addr, path).await;
    (r.status, r.json())
}

/// POST a JSON body returning (status, JSON body).
pub async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let r = http_post(addr, path, body.to_string().as_bytes()).await;
    (r.status, r.json())
}

/// Publishes one message over HTTP, asserts success, returns its seq.
pub async fn publish(addr: SocketAddr, topic: &str, data: Value) -> u64 {
    let (status, body) = post_json(addr, "/api/v1/publish", &json!({"topic": topic, "data": data})).await;
    assert_eq!(status, 200, "publish to {topic} failed: {body}");
    assert_eq!(body["topic"], topic, "publish reply: {body}");
    body["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("publish reply without integer seq: {body}"))
}

/// Publishes a batch over HTTP, asserts success, returns the seqs in order.
pub async fn publish_batch(addr: SocketAddr, messages: &[(&str, Value)]) -> Vec<u64> {
    let msgs: Vec<Value> = messages
        .iter()
        .map(|(t, d)| json!({"topic": t, "data": d}))
        .collect();
    let (status, body) = post_json(addr, "/api/v1/publish", &json!({"messages": msgs})).await;
    assert_eq!(status, 200, "batch publish failed: {body}");
    let results = body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("batch reply without results array: {body}"));
    assert_eq!(results.len(), messages.len(), "one result per message: {body}");
    results
        .iter()
        .zip(messages)
        .map(|(r, (t, _))| {
            assert_eq!(r["topic"], *t, "batch results out of order: {body}");
            r["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("batch result without seq: {r}"))
        })
        .collect()
}

/// `GET /api/v1/topics/{topic}`: Some(body) on 200, None on 404 (asserting the error shape).
pub async fn get_topic(addr: SocketAddr, topic: &str) -> Option<Value> {
    let (status, body) = get_json(addr, &format!("/api/v1/topics/{topic}")).await;
    match status {
        200 => Some(body),
        404 => {
            assert!(
                body["error"]["code"].is_string() && body["error"]["message"].is_string(),
                "404 without the error shape: {body}"
            );
            None
        }
        s => panic!("GET /api/v1/topics/{topic}: unexpected status {s}: {body}"),
    }
}

/// Entry for `topic` in `GET /api/v1/topics`, if listed.
pub async fn topic_listing(addr: SocketAddr, topic: &str) -> Option<Value> {
    let (status, body) = get_json(addr, "/api/v1/topics").await;
    assert_eq!(status, 200, "GET /api/v1/topics: {body}");
    body["topics"]
        .as_array()
        .unwrap_or_else(|| panic!("GET /api/v1/topics without topics array: {body}"))
        .iter()
        .find(|t| t["topic"] == topic)
        .cloned()
}

/// Resident set size of this process in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

// ---------------------------------------------------------------------------------------------
// History / recovery helpers
// ---------------------------------------------------------------------------------------------

/// `(seq, epoch)` of `topic` in the `positions` of a `subscribed` reply.
#[track_caller]
pub fn position(reply: &Value, topic: &str) -> (u64, String) {
    let p = &reply["positions"][topic];
    let seq = p["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer positions.{topic}.seq in {reply}"));
    let epoch = p["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no string positions.{topic}.epoch in {reply}"));
    assert!(!epoch.is_empty(), "empty epoch for {topic} in {reply}");
    (seq, epoch.to_string())
}

/// A `since` entry: `{"seq": seq, "epoch": epoch}`.
pub fn pos(seq: u64, epoch: &str) -> Value {
    json!({"seq": seq, "epoch": epoch})
}

/// Sends a subscribe request carrying `since` and returns the `subscribed` reply.
pub async fn subscribe_since(ws: &mut Ws, id: i64, topics: &[&str], since: Value) -> Value {
    let reply = request(
        ws,
        json!({"op": "subscribe", "id": id, "topics": topics, "since": since}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "subscribe with since: {reply}");
    assert_eq!(reply["id"], json!(id), "subscribe with since: {reply}");
    reply
}

/// The seqs of a `GET /api/v1/topics/{topic}/history` page, in order.
pub fn history_seqs(page: &Value) -> Vec<u64> {
    (page["publications"].as_array())
        .unwrap_or_else(|| panic!("no publications array: {page}"))
        .iter()
        .map(|p| p["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {p}")))
        .collect()
}

/// Every data message that arrives until `quiet` passes without one.
pub async fn recv_until_silence(ws: &mut Ws, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        match next_incoming(ws, quiet).await {
            Incoming::Json(v) => out.push(v),
            Incoming::Timeout => return out,
            other => panic!("connection ended after {} messages: {other:?}", out.len()),
        }
    }
}

/// Asserts `v` is a `snapshot` of `topic` with `seq` and `data`.
#[track_caller]
pub fn assert_snapshot(v: &Value, topic: &str, seq: u64, data: &Value) {
    assert_eq!(v["type"], "snapshot", "expected a snapshot, got {v}");
    assert_eq!(v["topic"], topic, "snapshot of the wrong topic: {v}");
    assert_eq!(v["seq"], json!(seq), "snapshot with the wrong seq: {v}");
    assert_eq!(&v["data"], data, "snapshot with the wrong data: {v}");
    assert!(v["ts"].is_u64(), "snapshot without an integer ts: {v}");
}

/// The value of one sample in `GET /metrics`, named exactly as exposed (labels included, e.g.
/// `tickwire_recoveries_total{result="reset"}`); None when the sample is absent.
pub async fn metric(addr: SocketAddr, sample: &str) -> Option<f64> {
    let r = http_get(addr, "/metrics").await;
    assert_eq!(r.status, 200, "GET /metrics");
    let text = String::from_utf8(r.body).expect("metrics text is UTF-8");
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| {
            value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("metric {sample}: bad value {value:?}: {e}"))
        })
    })
}

/// Like [`metric`], panicking when the sample is absent.
pub async fn metric_value(addr: SocketAddr, sample: &str) -> f64 {
    metric(addr, sample)
        .await
        .unwrap_or_else(|| panic!("metric sample {sample} not exposed"))
}

/// Closes a client WebSocket the polite way: sends a close frame, reads until the server's
/// echo and the end of the stream, then drops the socket.
pub async fn close_gracefully(mut ws: Ws) {
    let _ = tokio::time::timeout(RECV_TIMEOUT, ws.close(None)).await;
    let _ = tokio::time::timeout(RECV_TIMEOUT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// Starts a server with a separate admin listener (`server::serve(main, Some(admin), ..)`).
/// Returns the server (its `addr` is the main listener) and the admin address.
pub async fn start_with_admin(extra_toml: &str) -> (TestServer, SocketAddr) {
    init_logging();
    let settings = settings(extra_toml);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind main");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = listener.local_addr().expect("local_addr");
    let admin_addr = admin.local_addr().expect("admin local_addr");
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let handle = tokio::spawn(async move {
        tickwire::server::serve(listener, Some(admin), settings, shutdown)
            .await
            .map_err(|e| format!("{e:?}"))
    });
    let server = TestServer {
        addr,
        shutdown: Some(tx),
        handle: Some(handle),
    };
    (server, admin_addr)
}

impl TestServer {
    /// Fires the shutdown signal without waiting for the drain to finish; returns a future that
    /// resolves with `run`'s result.
    pub fn begin_shutdown(mut self) -> JoinHandle<Result<(), String>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().expect("server handle")
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text exposition
// ---------------------------------------------------------------------------------------------

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` response.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Metric family name -> type, from the `# TYPE` lines.
    pub types: std::collections::BTreeMap<String, String>,
}

impl Scrape {
    /// Sum of every sample named `name` whose labels include all of `labels`; None when no
    /// sample matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.samples.iter().filter(|s| s.name == name) {
            if labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }

    /// Like [`Scrape::get`], panicking when the series is missing.
    #[track_caller]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("metric {name}{labels:?} is not exported"))
    }

    /// Every distinct sample name plus every `# TYPE` family name.
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        let mut names: std::collections::BTreeSet<String> =
            self.samples.iter().map(|s| s.name.clone()).collect();
        names.extend(self.types.keys().cloned());
        names
    }
}

fn parse_prom_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses the Prometheus text format (version 0.0.4), panicking on a malformed line.
pub fn parse_prometheus(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.split_whitespace();
            if parts.next() == Some("TYPE") {
                let name = parts
                    .next()
                    .unwrap_or_else(|| panic!("line {n}: bad TYPE: {line}"));
                let ty = parts
                    .next()
                    .unwrap_or_else(|| panic!("line {n}: bad TYPE: {line}"));
                out.types.insert(name.to_string(), ty.to_string());
            }
            continue;
        }
        let bad = |why: &str| -> ! { panic!("/metrics line {n} malformed ({why}): {line:?}") };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or_else(|| bad("no value"));
        let name = &line[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            bad("invalid metric name");
        }
        let mut labels = std::collections::BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let end = loop {
                // Skip separators.
                while let Some((_, c)) = chars.peek() {
                    if *c == ',' || *c == ' ' {
                        chars.next();
                    } else {
                        break;
                    }
                }
                match chars.peek() {
                    Some((i, '}')) => break *i,
                    None => bad("unterminated labels"),
                    _ => {}
                }
                let mut key = String::new();
                loop {
                    match chars.next() {
                        Some((_, '=')) => break,
                        Some((_, c)) if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                        _ => bad("bad label name"),
                    }
                }
                if !matches!(chars.next(), Some((_, '"'))) {
                    bad("label value not quoted");
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => bad("bad escape in label value"),
                        },
                        Some((_, c)) => value.push(c),
                        None => bad("unterminated label value"),
                    }
                }
                if labels.insert(key.clone(), value).is_some() {
                    bad("duplicate label");
                }
            };
            rest = &after[end + 1..];
        }
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_prom_value)
            .unwrap_or_else(|| bad("bad value"));
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().unwrap_or_else(|_| bad("bad timestamp"));
        }
        if fields.next().is_some() {
            bad("trailing fields");
        }
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// `GET /metrics`, asserting 200 and the Prometheus text content type.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let r = http_get(addr, "/metrics").await;
    assert_eq!(
        r.status,
        200,
        "GET /metrics: {}",
        String::from_utf8_lossy(&r.body)
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "GET /metrics content-type {ct:?}"
    );
    parse_prometheus(std::str::from_utf8(&r.body).expect("/metrics body is not UTF-8"))
}

/// Scrapes until `name{labels}` satisfies `ok` (within [`RECV_TIMEOUT`]); returns the value.
/// Values that take a moment to settle (gauges after a disconnect, disconnect counters) are
/// polled rather than slept for.
#[track_caller]
pub fn wait_metric<'a>(
    addr: SocketAddr,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
    what: &'a str,
    ok: impl Fn(f64) -> bool + 'a,
) -> impl std::future::Future<Output = f64> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            let v = scrape(addr).await.get(name, labels);
            if let Some(v) = v {
                if ok(v) {
                    return v;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{caller}: {name}{labels:?} never became {what} within {RECV_TIMEOUT:?} (last value {v:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Scrapes until `ok` holds for the scrape (within [`RECV_TIMEOUT`]) and returns that scrape.
/// For counters the writer updates just after the socket write: a client may read a frame a
/// moment before it is counted.
#[track_caller]
pub fn wait_scrape<'a>(
    addr: SocketAddr,
    what: &'a str,
    ok: impl Fn(&Scrape) -> bool + 'a,
) -> impl std::future::Future<Output = Scrape> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            let m = scrape(addr).await;
            if ok(&m) {
                return m;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{caller}: /metrics never showed {what} within {RECV_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket client: complete handshake, then full control over what is (not) sent
// ---------------------------------------------------------------------------------------------

/// Performs the WebSocket handshake by hand and returns the socket, positioned right after
/// the `101` response head. Nothing more is ever sent unless the test writes it.
pub async fn raw_ws_connect(addr: SocketAddr) -> TcpStream {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await.expect("TCP connect");
        stream.set_nodelay(true).ok();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("write handshake");
        // Byte by byte so that no frame after the head is consumed.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.expect("read handshake response");
            assert!(
                n == 1,
                "connection closed during the handshake: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "handshake not accepted: {head:?}"
        );
        stream
    };
    tokio::time::timeout(RECV_TIMEOUT, fut)
        .await
        .expect("raw WebSocket handshake timed out")
}

/// A frame read from the server on a raw connection.
#[derive(Debug)]
pub enum RawFrame {
    Frame {
        opcode: u8,
        payload: Vec<u8>,
    },
    /// The server closed the TCP connection (or it failed).
    Eof,
    Timeout,
}

/// Reads one server frame (unmasked, as RFC 6455 requires of servers).
pub async fn read_raw_frame(stream: &mut TcpStream, wait: Duration) -> RawFrame {
    let fut = async {
        let mut h = [0u8; 2];
        if stream.read_exact(&mut h).await.is_err() {
            return RawFrame::Eof;
        }
        assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                if stream.read_exact(&mut b).await.is_err() {
                    return RawFrame::Eof;
                }
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                if stream.read_exact(&mut b).await.is_err() {
                    return RawFrame::Eof;
                }
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).await.is_err() {
            return RawFrame::Eof;
        }
        RawFrame::Frame {
            opcode: h[0] & 0x0f,
            payload,
        }
    };
    tokio::time::timeout(wait, fut).await.unwrap_or(RawFrame::Timeout)
}

/// Decodes a close frame's payload into (code, reason).
pub fn close_payload(payload: &[u8]) -> (u16, String) {
    assert!(payload.len() >= 2, "close frame without a code");
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        String::from_utf8_lossy(&payload[2..]).to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// The `tickwire` binary with a clean environment: no inherited `TICKWIRE__*` variables and
/// a scratch working directory (so no `config/default.toml` is picked up).
pub fn tickwire_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TICKWIRE__") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.current_dir(std::env::temp_dir());
    cmd
}

/// A `tickwire serve` child process; killed on drop if still running.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub log: std::path::PathBuf,
}

impl ServerProcess {
    /// Starts `tickwire serve` on 127.0.0.1:<free port> with the feed off and `env` on top,
    /// and waits until `/healthz` answers (on `TICKWIRE__ADMIN__LISTEN` when `env` sets it).
    pub async fn start(env: &[(&str, &str)]) -> ServerProcess {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::env::temp_dir().join(format!("tickwire-test-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create log file");
        let mut cmd = tickwire_command();
        cmd.arg("serve")
            .env("TICKWIRE__SERVER__LISTEN", addr.to_string())
            .env("TICKWIRE__FEED__ENABLED", "false")
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn tickwire");
        // With an admin listener, /healthz lives there.
        let probe: SocketAddr = env
            .iter()
            .find(|(k, _)| *k == "TICKWIRE__ADMIN__LISTEN")
            .map_or(addr, |(_, v)| v.parse().expect("TICKWIRE__ADMIN__LISTEN"));
        let mut proc = ServerProcess { child, addr, log };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("tickwire exited at start-up with {status}: {}", proc.logs());
            }
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(probe)).await
            {
                let ok = async {
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .await
                        .ok()?;
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).await.ok()?;
                    Some(buf.starts_with(b"HTTP/1.1 200"))
                };
                if tokio::time::timeout(Duration::from_secs(1), ok).await == Ok(Some(true)) {
                    return proc;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tickwire did not answer /healthz on {probe} within 10 s: {}",
                proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM to this child (by pid).
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits (polling) up to `wait` for the process to exit.
    pub async fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The process's output so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

// ---------------------------------------------------------------------------------------------
// Security: tokens, keys, handshakes that may be refused
// ---------------------------------------------------------------------------------------------

/// The HS256 secret of [`JWT_TOML`].
pub const JWT_SECRET: &str = "tickwire-test-secret-0123456789abcdef";

/// Settings for `auth.mode = "jwt"` with [`JWT_SECRET`], leeway 0 (expiry is exact).
pub const JWT_TOML: &str = "[auth]\nmode = \"jwt\"\n[auth.jwt]\n\
    hs256_secret = \"tickwire-test-secret-0123456789abcdef\"\nleeway = \"0s\"\n";

/// Path of a file in `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn unix_now() -> u64 {
    now_ms() / 1000
}

/// Claims for `sub`, valid for `ttl` seconds from now (negative: expired).
pub fn claims(sub: &str, subscribe: &[&str], publish: &[&str], ttl: i64) -> Value {
    let exp = unix_now() as i64 + ttl;
    json!({"sub": sub, "exp": exp, "subscribe": subscribe, "publish": publish})
}

/// `claims` signed with `alg` and `key`, with `kid` in the header when given.
pub fn sign(
    claims: &Value,
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    kid: Option<&str>,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("sign test token")
}

/// `claims` signed with HS256 and [`JWT_SECRET`].
pub fn token(claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    sign(claims, jsonwebtoken::Algorithm::HS256, &key, None)
}

/// A WebSocket handshake the server answered with an HTTP error.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Refusal {
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and the `{"error":{"code"}}` body.
    #[track_caller]
    pub fn assert(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "refusal {self:?}");
        assert_eq!(self.body["error"]["code"], code, "refusal {self:?}");
        assert!(self.body["error"]["message"].is_string(), "refusal {self:?}");
    }
}

/// A WebSocket handshake over `stream` to `path` (e.g. `/ws?token=...`) with extra headers.
pub async fn try_handshake<S>(
    url: String,
    stream: S,
    headers: &[(&str, &str)],
) -> Result<WebSocketStream<S>, Refusal>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let mut request = url.into_client_request().expect("client request");
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        request.headers_mut().insert(name, v.parse().unwrap());
    }
    let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()));
    match tokio::time::timeout(RECV_TIMEOUT, handshake).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(Error::Http(resp))) => {
            let body = resp.body().as_deref().unwrap_or_default();
            Err(Refusal {
                status: resp.status().as_u16(),
                headers: (resp.headers().iter())
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                    .collect(),
                body: serde_json::from_slice(body).unwrap_or(Value::Null),
            })
        }
        Ok(Err(e)) => panic!("WebSocket handshake failed: {e}"),
        Err(_) => panic!("WebSocket handshake timed out"),
    }
}

/// [`try_handshake`] over a new TCP connection to `addr`.
pub async fn try_connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Ws, Refusal> {
    let stream = TcpStream::connect(addr).await.expect("TCP connect");
    stream.set_nodelay(true).ok();
    try_handshake(format!("ws://{addr}{path}"), stream, headers).await
}

/// Connects with `token` in the query string, panicking when refused.
pub async fn connect_with_token(addr: SocketAddr, token: &str) -> Ws {
    try_connect(addr, &format!("/ws?token={token}"), &[])
        .await
        .unwrap_or_else(|r| panic!("connection with a valid token refused: {r:?}"))
}
