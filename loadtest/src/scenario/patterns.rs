//! `patterns`: what a pattern subscription costs on a server with many topics. Creates T topics
//! (`<prefix>g{G}.t{K}`: groups of `--per-pattern` topics) over HTTP batch publish, then, on one
//! connection, subscribes to `<prefix>g{G}.*` for M different groups (each matches exactly
//! `--per-pattern` topics) and unsubscribes again, one request at a time, and reports the round
//! trip of each subscribe (request written → `subscribed` reply parsed). The round trip bounds
//! the server's time from above: it adds the loopback and this client's parse.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Common, LatencySummary};
use crate::client::{self, Rng};
use crate::frame::{self, Event, Reassembler};
use crate::http::HttpClient;

#[derive(Debug, Clone)]
pub struct PatternsConfig {
    pub common: Common,
    /// Topics to create.
    pub topics: usize,
    /// Topics each pattern matches.
    pub per_pattern: usize,
    /// Subscribe/unsubscribe round trips measured.
    pub subscribes: usize,
    pub topic_prefix: String,
    /// Messages per HTTP publish batch while creating the topics.
    pub batch: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PatternsReport {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub topics: usize,
    pub per_pattern: usize,
    pub subscribes: usize,
    /// Seconds to create the topics.
    pub create_s: f64,
    /// Server RSS after creating the topics, MiB (from `/metrics`).
    pub server_rss_mib: Option<f64>,
    /// Subscribe round trips, milliseconds.
    pub subscribe_ms: Option<LatencySummary>,
}

pub fn run(cfg: &PatternsConfig) -> anyhow::Result<PatternsReport> {
    if cfg.per_pattern == 0 || cfg.topics < cfg.per_pattern || cfg.subscribes == 0 {
        bail!("need --per-pattern ≥ 1, --topics ≥ --per-pattern and --subscribes ≥ 1");
    }
    crate::opts::check_topic_prefix(&cfg.topic_prefix)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(cfg))
}

fn topic(cfg: &PatternsConfig, i: usize) -> String {
    format!(
        "{}g{}.t{}",
        cfg.topic_prefix,
        i / cfg.per_pattern,
        i % cfg.per_pattern
    )
}

async fn measure(cfg: &PatternsConfig) -> anyhow::Result<PatternsReport> {
    let c = &cfg.common;
    let started = Instant::now();
    let mut http = HttpClient::new(crate::opts::endpoint(&c.target, "/api/v1/publish"));
    for start in (0..cfg.topics).step_by(cfg.batch.max(1)) {
        let end = (start + cfg.batch).min(cfg.topics);
        let messages: Vec<String> = (start..end)
            .map(|i| format!(r#"{{"topic":"{}","data":0}}"#, topic(cfg, i)))
            .collect();
        let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
        let resp = http.post_json(Bytes::from(body)).await.context("publishing")?;
        if resp.status != 200 {
            bail!(
                "publish answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
    }
    let create_s = started.elapsed().as_secs_f64();
    let metrics = c.metrics.clone();
    let snap = tokio::task::spawn_blocking(move || crate::server::scrape(&metrics)).await?;
    let server_rss_mib = snap.ok().and_then(|s| s.rss_bytes).map(|b| b / (1024.0 * 1024.0));

    let mut ws = Connection::open(c).await?;
    let groups = cfg.topics / cfg.per_pattern;
    let mut hist = Histogram::<u64>::new(3)?;
    for n in 0..cfg.subscribes {
        let pattern = format!("{}g{}.*", cfg.topic_prefix, n * 7919 % groups);
        let sub = format!(r#"{{"op":"subscribe","id":1,"topics":["{pattern}"]}}"#);
        let sent = Instant::now();
        let reply = ws.request(&sub).await?;
        hist.record(sent.elapsed().as_micros() as u64)?;
        let matched = reply.matches(r#""seq":"#).count();
        if !reply.contains(r#""type":"subscribed""#) || matched != cfg.per_pattern {
            bail!(
                "subscribe to {pattern}: expected {} positions, got {reply}",
                cfg.per_pattern
            );
        }
        let unsub = format!(r#"{{"op":"unsubscribe","id":2,"topics":["{pattern}"]}}"#);
        ws.request(&unsub).await?;
    }
    Ok(PatternsReport {
        scenario: "patterns",
        label: c.label.clone(),
        url: c.target.url.clone(),
        topics: cfg.topics,
        per_pattern: cfg.per_pattern,
        subscribes: cfg.subscribes,
        create_s,
        server_rss_mib,
        subscribe_ms: LatencySummary::of(&hist),
    })
}

/// One WebSocket connection that sends a request and reads up to its reply (a message with an
/// `"id"`), skipping the snapshots that follow a `subscribed` reply.
struct Connection {
    stream: TcpStream,
    rng: Rng,
    buf: Vec<u8>,
    frames: Reassembler,
}

impl Connection {
    async fn open(c: &Common) -> anyhow::Result<Connection> {
        let mut stream = client::open(c.target.addr, c.source_ips.first().copied()).await?;
        let mut rng = Rng::new(0x7a77);
        let (host, path) = (&c.target.host, &c.target.path);
        let buf = client::handshake(&mut stream, host, path, &mut rng, c.deflate).await?;
        Ok(Connection {
            stream,
            rng,
            buf,
            // Replies always come plain: with deflate, a compressed message (an update) is
            // skipped like the snapshots are.
            frames: Reassembler::new(c.deflate),
        })
    }

    async fn request(&mut self, text: &str) -> anyhow::Result<String> {
        let mut out = Vec::with_capacity(text.len() + 14);
        frame::encode_masked(frame::OP_TEXT, text.as_bytes(), self.rng.mask(), &mut out);
        self.stream.write_all(&out).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut reply = None;
            let used = self.frames.feed(&self.buf, |event| {
                if let Event::Text(t) = event {
                    if reply.is_none() && memchr::memmem::find(t, br#""id":"#).is_some() {
                        reply = Some(String::from_utf8_lossy(t).into_owned());
                    }
                }
            })?;
            self.buf.drain(..used);
            if let Some(reply) = reply {
                return Ok(reply);
            }
            let mut chunk = [0u8; 64 << 10];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.stream.read(&mut chunk))
                .await
                .context("no reply within 30 s")??;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
