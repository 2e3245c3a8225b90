//! WebSocket clients: tungstenite connections with helpers that wait with a deadline and panic
//! with a clear message, protocol assertions (replies, errors, updates, snapshots), handshakes
//! that may be refused (tokens, origins), and a raw client that controls every byte sent.
//!
//! Part of the shared harness; not every test binary uses every helper.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::time::{now_ms, RECV_TIMEOUT};

/// A client WebSocket connection.
pub type Ws = WebSocketStream<TcpStream>;

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

/// Waits (at most `wait`) for the explicit reset a broker that lost publications sends: a
/// `snapshot` of `seq` with `data`, in a new epoch; returns that epoch.
pub async fn recv_reset(ws: &mut Ws, wait: Duration, seq: u64, data: &Value) -> String {
    let reset = recv_json_within(ws, wait).await;
    assert_eq!(reset["type"], "snapshot", "{reset}");
    assert_eq!((&reset["seq"], &reset["data"]), (&json!(seq), data), "{reset}");
    let epoch = (reset["epoch"].as_str()).expect("the reset carries the new epoch");
    assert!(!epoch.is_empty(), "{reset}");
    epoch.to_string()
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

/// Closes a client WebSocket the polite way: sends a close frame, reads until the server's
/// echo and the end of the stream, then drops the socket.
pub async fn close_gracefully(mut ws: Ws) {
    let _ = tokio::time::timeout(RECV_TIMEOUT, ws.close(None)).await;
    let _ = tokio::time::timeout(RECV_TIMEOUT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// Performs the WebSocket handshake by hand and returns the socket, positioned right after
/// the `101` response head. Nothing more is ever sent unless the test writes it.
pub async fn raw_ws_connect(addr: SocketAddr) -> TcpStream {
    raw_ws_handshake(addr, "/ws", "").await.0
}

/// [`raw_ws_connect`] to `path`, with `extra` header lines (each ending in `\r\n`) in the
/// request; also returns the `101` response head.
pub async fn raw_ws_handshake(addr: SocketAddr, path: &str, extra: &str) -> (TcpStream, String) {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await.expect("TCP connect");
        stream.set_nodelay(true).ok();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
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
        (stream, head)
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
