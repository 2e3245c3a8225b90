//! What the tool reads from the server over plain HTTP: `/metrics` (RSS, CPU, connections,
//! delivery counters) and a topic's current `seq` (`GET /api/v1/topics/{name}`).
//!
//! These are occasional blocking requests from the coordinating thread (one `Connection: close`
//! request each), kept apart from the load itself.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::opts::HttpEndpoint;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking `GET`; returns the status and body.
pub fn get(ep: &HttpEndpoint, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&ep.addr, TIMEOUT)
        .with_context(|| format!("connecting to {} for GET {path}", ep.addr))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: tickwire-loadtest\r\n\r\n",
        ep.host
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading GET {path}"))?;
    parse_response(&raw).with_context(|| format!("GET {path} on {}", ep.addr))
}

/// Splits a complete HTTP/1.1 response into status and (de-chunked) body.
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let head_end = memchr::memmem::find(raw, b"\r\n\r\n").context("incomplete response head")?;
    let head = std::str::from_utf8(&raw[..head_end]).context("response head is not UTF-8")?;
    let status: u16 = (head.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    let body = &raw[head_end + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let eol = memchr::memmem::find(rest, b"\r\n").context("bad chunk")?;
        let size_text = std::str::from_utf8(&rest[..eol])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Prometheus text exposition: the sum over all label sets of each metric name, and each
/// labelled series under its own `name{labels}` as written.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // name{labels} value [timestamp]; label values may contain spaces, so split after '}'.
        let (name, series, rest) = match line.find('{') {
            Some(i) => match line[i..].find('}') {
                Some(j) => (&line[..i], Some(&line[..i + j + 1]), &line[i + j + 1..]),
                None => continue,
            },
            None => match line.split_once(char::is_whitespace) {
                Some((n, r)) => (n, None, r),
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        *out.entry(name.to_string()).or_insert(0.0) += value;
        if let Some(series) = series {
            out.insert(series.to_string(), value);
        }
    }
    out
}

/// The server figures the tool reports, from one `/metrics` scrape.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ServerSnap {
    pub rss_bytes: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub connections: Option<f64>,
    pub delivered_total: Option<f64>,
    pub conflated_total: Option<f64>,
    pub published_total: Option<f64>,
    /// `tickwire_delta_frames_total`: updates queued as Fossil deltas.
    pub delta_frames_total: Option<f64>,
    /// `tickwire_bytes_saved_total{by="delta"}`: bytes of full frames the deltas replaced.
    pub bytes_saved_delta: Option<f64>,
    /// `tickwire_compressed_frames_total`: frames queued compressed (permessage-deflate).
    pub compressed_frames_total: Option<f64>,
    /// `tickwire_bytes_saved_total{by="deflate"}`: what compressing those frames saved.
    pub bytes_saved_deflate: Option<f64>,
    /// `tickwire_bytes_sent_total`: bytes written to WebSocket connections.
    pub bytes_sent_total: Option<f64>,
    #[serde(skip)]
    pub at: Option<std::time::Instant>,
}

impl ServerSnap {
    pub fn from_metrics(m: &HashMap<String, f64>) -> ServerSnap {
        let g = |k: &str| m.get(k).copied();
        ServerSnap {
            rss_bytes: g("process_resident_memory_bytes"),
            cpu_seconds: g("process_cpu_seconds_total"),
            connections: g("tickwire_connections"),
            delivered_total: g("tickwire_messages_delivered_total"),
            conflated_total: g("tickwire_messages_conflated_total"),
            published_total: g("tickwire_messages_published_total"),
            delta_frames_total: g("tickwire_delta_frames_total"),
            bytes_saved_delta: g(r#"tickwire_bytes_saved_total{by="delta"}"#),
            compressed_frames_total: g("tickwire_compressed_frames_total"),
            bytes_saved_deflate: g(r#"tickwire_bytes_saved_total{by="deflate"}"#),
            bytes_sent_total: g("tickwire_bytes_sent_total"),
            at: Some(std::time::Instant::now()),
        }
    }

    /// Server CPU, % of one core, from `self` to `later`.
    pub fn cpu_pct(&self, later: &ServerSnap) -> Option<f64> {
        let secs = later.at?.duration_since(self.at?).as_secs_f64();
        (secs > 0.0).then_some((later.cpu_seconds? - self.cpu_seconds?) / secs * 100.0)
    }

    pub fn delta(&self, later: &ServerSnap, f: impl Fn(&ServerSnap) -> Option<f64>) -> Option<f64> {
        Some(f(later)? - f(self)?)
    }
}

/// Reads the server's metrics; `None` (with a warning printed once by the caller) when the
/// endpoint is not reachable, e.g. when `/metrics` lives on a separate admin listener.
pub fn scrape(ep: &HttpEndpoint) -> anyhow::Result<ServerSnap> {
    let (status, body) = get(ep, &ep.path)?;
    if status != 200 {
        bail!("GET {} returned HTTP {status}", ep.path);
    }
    let text = String::from_utf8_lossy(&body);
    let m = parse_metrics(&text);
    if !m.contains_key("tickwire_connections") {
        bail!("{} does not look like tickwire's metrics", ep.path);
    }
    Ok(ServerSnap::from_metrics(&m))
}

/// One `GET /healthz` on a new connection: its time in milliseconds, `None` when it failed or
/// did not answer 200.
pub fn healthz_ms(ep: &HttpEndpoint) -> Option<f64> {
    let started = std::time::Instant::now();
    match get(ep, "/healthz") {
        Ok((200, _)) => Some(started.elapsed().as_secs_f64() * 1000.0),
        _ => None,
    }
}

/// The current `seq` of `topic` (0 when the topic has no publication yet).
pub fn topic_seq(api: &HttpEndpoint, topic: &str) -> anyhow::Result<u64> {
    let (status, body) = get(api, &format!("/api/v1/topics/{topic}"))?;
    match status {
        404 => Ok(0),
        200 => {
            // A topic with subscribers but no publication answers without `seq` (issue 20).
            #[derive(serde::Deserialize)]
            struct Last {
                #[serde(default)]
                seq: u64,
            }
            let last: Last = serde_json::from_slice(&body).with_context(|| {
                format!(
                    "topic {topic}: unexpected body {:?}",
                    String::from_utf8_lossy(&body)
                )
            })?;
            Ok(last.seq)
        }
        s => bail!("GET /api/v1/topics/{topic} returned HTTP {s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP x y\n# TYPE x counter\n\
            process_resident_memory_bytes 1.2345e7\n\
            tickwire_connections{transport=\"ws\"} 2\n\
            tickwire_connections{transport=\"sse\"} 1\n\
            tickwire_messages_published_total{source=\"http\"} 10\n\
            tickwire_messages_published_total{source=\"feed\"} 5\n\
            weird{label=\"a } b\"} 1\n\
            tickwire_bytes_saved_total{by=\"delta\"} 640\n\
            tickwire_bytes_saved_total{by=\"deflate\"} 9000\n\
            tickwire_compressed_frames_total 12\n\
            tickwire_delivery_latency_seconds_bucket{le=\"+Inf\"} 7 1700000000\n";
        let m = parse_metrics(text);
        assert_eq!(m["process_resident_memory_bytes"], 12_345_000.0);
        assert_eq!(m["tickwire_messages_published_total"], 15.0);
        assert_eq!(m[r#"tickwire_messages_published_total{source="feed"}"#], 5.0);
        assert_eq!(m["tickwire_delivery_latency_seconds_bucket"], 7.0);
        let s = ServerSnap::from_metrics(&m);
        assert_eq!(s.connections, Some(3.0));
        assert_eq!(s.cpu_seconds, None);
        assert_eq!(s.bytes_saved_delta, Some(640.0));
        assert_eq!(s.bytes_saved_deflate, Some(9000.0));
        assert_eq!(s.compressed_frames_total, Some(12.0));
    }

    #[test]
    fn parses_responses() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"hi"[..]));
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let (s, b) = parse_response(raw).unwrap();
        assert_eq!((s, b.as_slice()), (404, &b"abcde"[..]));
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
