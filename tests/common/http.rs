//! HTTP: a minimal hand-written HTTP/1.1 client (one request per connection, so tests see exactly
//! what the server sent, malformed or not), and helpers for the HTTP API (publish, topics,
//! history, readiness, error bodies).
//!
//! Part of the shared harness; not every test binary uses every helper.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::time::eventually;

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

/// The seqs of a `GET /api/v1/topics/{topic}/history` page, in order.
pub fn history_seqs(page: &Value) -> Vec<u64> {
    (page["publications"].as_array())
        .unwrap_or_else(|| panic!("no publications array: {page}"))
        .iter()
        .map(|p| p["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {p}")))
        .collect()
}

/// Waits (up to 10 s) until `GET /readyz` answers 200, e.g. a cluster node whose Redis link is
/// up.
pub async fn wait_ready(addr: SocketAddr) {
    let what = format!("{addr} ready");
    eventually(&what, Duration::from_secs(10), || async move {
        http_get(addr, "/readyz").await.status == 200
    })
    .await;
}

/// Polls `/readyz` until it answers `status`, for at most `within` (a cluster node losing and
/// finding its Redis again).
pub async fn wait_readyz(addr: SocketAddr, status: u16, within: Duration) {
    let what = format!("{addr} /readyz {status}");
    eventually(&what, within, || async move {
        http_get(addr, "/readyz").await.status == status
    })
    .await;
}

/// Asserts an HTTP API error: `want_status` and the `{"error": {"code", "message"}}` body, with
/// `code` when given.
#[track_caller]
pub fn assert_http_error(status: u16, body: &Value, want_status: u16, code: Option<&str>) {
    assert_eq!(status, want_status, "status (body {body})");
    let err = &body["error"];
    assert!(err["code"].is_string(), "no error.code string: {body}");
    assert!(err["message"].is_string(), "no error.message string: {body}");
    if let Some(code) = code {
        assert_eq!(err["code"], code, "error code: {body}");
    }
}
