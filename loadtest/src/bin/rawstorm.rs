//! rawstorm: the least a server can do for the `reconnect` scenario, a reference to measure the
//! reconnect storm against (as rawfan is for fan-out). Not a product: no hub, no history, no
//! delivery; it only does the socket work every server must do for a client that comes back.
//!
//! - `GET /ws`: the WebSocket upgrade, then each text frame `{"op":"subscribe",...}` is answered
//!   with one `subscribed` reply: the position of every topic the request names or matches (an
//!   exact name, or `prefix.*` over the topics published so far) and, for each topic of `since`,
//!   `recovered: true` when its epoch is this server's. Every other frame is ignored; the end of
//!   the stream (or an error) closes the socket.
//! - `POST /api/v1/publish`: counts the publication (one object or `{"messages":[...]}`) and
//!   answers with its seq; nothing is delivered, so the scenario's gap counts mean nothing here.
//! - `GET /healthz`: 200. Anything else: 404.
//!
//! Usage: `rawstorm [ADDR]` (default 127.0.0.1:19020; port 0: any free one, printed on stderr).
//! One tokio worker per core, as tickwire.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use base64::Engine;
use std::fmt::Write as _;

use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const EPOCH: &str = "raw";
/// Largest request head or client frame accepted.
const MAX: usize = 1 << 20;

/// Topics by name (seq), and by the prefix before their last token (for `prefix.*`).
#[derive(Default)]
struct Topics {
    seq: HashMap<String, u64>,
    by_prefix: HashMap<String, Vec<String>>,
}

type Shared = Arc<Mutex<Topics>>;

fn main() -> io::Result<()> {
    let addr: std::net::SocketAddr = (std::env::args().nth(1))
        .unwrap_or_else(|| "127.0.0.1:19020".into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("ADDR: {e}")))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // tickwire's backlog.
        let listener = socket.listen(4096)?;
        // The bound address (port 0 picks one), for whoever started it.
        eprintln!("rawstorm listening on {}", listener.local_addr()?);
        let topics = Shared::default();
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(stream, topics.clone()));
        }
    })
}

async fn connection(mut s: TcpStream, topics: Shared) {
    // Buffers on the heap, never arrays in the future: a task's future is moved when spawned.
    let mut buf = Vec::with_capacity(1024);
    let Some(end) = read_until_head(&mut s, &mut buf).await else {
        return;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut rest = buf.split_off(end);
    let line = head.lines().next().unwrap_or("");
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    if line.starts_with("GET /ws") {
        let Some(key) = header("sec-websocket-key") else {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        };
        let accept = {
            let mut h = Sha1::new();
            h.update(key.as_bytes());
            h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
            base64::engine::general_purpose::STANDARD.encode(h.finalize())
        };
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        );
        if s.write_all(response.as_bytes()).await.is_ok() {
            websocket(s, rest, &topics).await;
        }
        return;
    }
    let (status, body) = if line.starts_with("GET /healthz") {
        ("200 OK", "ok".to_owned())
    } else if line.starts_with("POST /api/v1/publish") {
        let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if len > MAX {
            return;
        }
        rest.reserve(len.saturating_sub(rest.len()));
        while rest.len() < len {
            match s.read_buf(&mut rest).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        match serde_json::from_slice::<Value>(&rest[..len]) {
            Ok(v) => ("200 OK", publish(&v, &topics)),
            Err(_) => ("400 Bad Request", "{}".to_owned()),
        }
    } else {
        ("404 Not Found", String::new())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(response.as_bytes()).await;
}

/// Reads until the end of a request head; returns its length (with the blank line).
async fn read_until_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(at + 4);
        }
        if buf.len() > MAX {
            return None;
        }
        buf.reserve(1024);
        match s.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn publish(v: &Value, topics: &Shared) -> String {
    let one = |m: &Value, t: &mut Topics| -> Value {
        let topic = m.get("topic").and_then(Value::as_str).unwrap_or("").to_owned();
        let seq = match t.seq.get_mut(&topic) {
            Some(seq) => {
                *seq += 1;
                *seq
            }
            None => {
                t.seq.insert(topic.clone(), 1);
                if let Some((prefix, _)) = topic.rsplit_once('.') {
                    t.by_prefix
                        .entry(prefix.to_owned())
                        .or_default()
                        .push(topic.clone());
                }
                1
            }
        };
        json!({"topic": topic, "seq": seq})
    };
    let mut t = topics.lock().unwrap_or_else(|e| e.into_inner());
    match v.get("messages").and_then(Value::as_array) {
        Some(batch) => {
            json!({"results": batch.iter().map(|m| one(m, &mut t)).collect::<Vec<_>>()}).to_string()
        }
        None => one(v, &mut t).to_string(),
    }
}

/// Reads client frames until the stream ends, answering subscribes.
async fn websocket(mut s: TcpStream, mut buf: Vec<u8>, topics: &Shared) {
    let mut at = 0;
    loop {
        while let Some((opcode, payload, used)) = frame(&buf[at..]) {
            if opcode == 1 {
                if let Some(reply) = subscribed(&payload, topics) {
                    if s.write_all(&server_frame(reply.as_bytes())).await.is_err() {
                        return;
                    }
                }
            }
            at += used;
        }
        if at == buf.len() {
            buf.clear();
            at = 0;
        }
        if buf.len() > MAX {
            return;
        }
        buf.reserve(1024);
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// One complete masked client frame at the start of `buf`: opcode, unmasked payload, length.
fn frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (opcode, short) = (buf[0] & 0x0f, (buf[1] & 0x7f) as usize);
    let (len, mut at) = match short {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n, 2),
    };
    let mask: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    at += 4;
    let payload = buf.get(at..at.checked_add(len)?)?;
    let payload = payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
    Some((opcode, payload, at + len))
}

fn server_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n < 65536 => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Each topic of a `since`, and whether its epoch is ours.
type Recovered<'a> = Vec<(&'a str, bool)>;

/// A subscribe as the load tool sends it (names without escapes, which it never writes).
#[derive(serde::Deserialize)]
struct Subscribe<'a> {
    op: &'a str,
    id: Option<i64>,
    #[serde(borrow)]
    topics: Vec<&'a str>,
    /// Each topic of `since`, and whether its epoch is ours.
    #[serde(default, borrow, deserialize_with = "since")]
    since: Option<Recovered<'a>>,
}

#[derive(serde::Deserialize)]
struct At<'a> {
    #[allow(dead_code)]
    seq: u64,
    epoch: &'a str,
}

/// `since`'s object, entry by entry.
fn since<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Recovered<'de>>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Recovered<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of positions")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((name, at)) = map.next_entry::<&'de str, At<'de>>()? {
                out.push((name, at.epoch == EPOCH));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Entries).map(Some)
}

fn subscribed(payload: &[u8], topics: &Shared) -> Option<String> {
    let req: Subscribe<'_> = serde_json::from_slice(payload).ok()?;
    if req.op != "subscribe" {
        return None;
    }
    // Written by hand, `type` first as the server writes it (the load tool classifies messages
    // by their prefix); names need no escaping (the tool writes none that would).
    let mut reply = String::with_capacity(256 + 64 * req.topics.len());
    reply.push_str(r#"{"type":"subscribed","topics":["#);
    for (i, name) in req.topics.iter().enumerate() {
        if i > 0 {
            reply.push(',');
        }
        reply.push('"');
        reply.push_str(name);
        reply.push('"');
    }
    reply.push_str(r#"],"positions":{"#);
    {
        let t = topics.lock().unwrap_or_else(|e| e.into_inner());
        let mut first = true;
        let mut position = |name: &str, reply: &mut String| {
            let seq = t.seq.get(name).copied().unwrap_or(0);
            if !std::mem::take(&mut first) {
                reply.push(',');
            }
            let _ = write!(reply, r#""{name}":{{"seq":{seq},"epoch":"{EPOCH}"}}"#);
        };
        for name in &req.topics {
            match name.strip_suffix(".*") {
                Some(prefix) => {
                    (t.by_prefix.get(prefix).into_iter().flatten()).for_each(|n| position(n, &mut reply))
                }
                None => position(name, &mut reply),
            }
        }
    }
    reply.push('}');
    if let Some(id) = req.id {
        let _ = write!(reply, r#","id":{id}"#);
    }
    if let Some(since) = &req.since {
        reply.push_str(r#","recovered":{"#);
        for (i, (name, ours)) in since.iter().enumerate() {
            if i > 0 {
                reply.push(',');
            }
            let _ = write!(reply, r#""{name}":{ours}"#);
        }
        reply.push('}');
    }
    reply.push('}');
    Some(reply)
}
