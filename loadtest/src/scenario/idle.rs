//! `idle`: N subscribed connections held open with nothing published; the server's memory per
//! connection from its own `/metrics`:
//! (`process_resident_memory_bytes` − RSS of the server before connecting) / connections added.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::{connect_progress, secs, ClientUsage, Common, LatencySummary};
use crate::opts;
use crate::pool::{ConnectOutcome, Pool, SubPlan};
use crate::progress::Progress;
use crate::sys::{self, now_us, CpuSnap};

#[derive(Debug, Clone)]
pub struct IdleConfig {
    pub common: Common,
    pub connections: usize,
    pub topics: u32,
    pub subs_per_conn: u32,
    /// How long to hold the connections after all are subscribed.
    pub hold: Duration,
    pub topic_prefix: String,
}

impl IdleConfig {
    pub fn new(common: Common) -> IdleConfig {
        IdleConfig {
            common,
            connections: 1000,
            topics: 1,
            subs_per_conn: 1,
            hold: Duration::from_secs(10),
            topic_prefix: "bench.idle".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleParams {
    pub connections: usize,
    pub topics: u32,
    pub subs_per_conn: u32,
    pub hold_s: f64,
    /// permessage-deflate negotiated on every connection.
    pub deflate: bool,
    pub threads: usize,
    pub source_ips: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleServer {
    /// RSS of the server before this run connected anything.
    pub rss_empty: Option<f64>,
    pub rss_after_connect: Option<f64>,
    pub rss_end: Option<f64>,
    pub connections_before: Option<f64>,
    pub connections_end: Option<f64>,
    /// (RSS after connecting − empty RSS) / connections added.
    pub rss_per_conn_after_connect: Option<f64>,
    /// (RSS at the end of the hold − empty RSS) / connections added: the headline figure.
    pub rss_per_conn_end: Option<f64>,
    /// Server CPU while holding, % of one core.
    pub cpu_pct_hold: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub params: IdleParams,
    pub connect: ConnectOutcome,
    pub handshake_ms: Option<LatencySummary>,
    pub server: IdleServer,
    pub client: ClientUsage,
    pub closed_early: usize,
    pub errors: Vec<String>,
    pub interrupted: bool,
}

pub fn run(cfg: &IdleConfig) -> anyhow::Result<IdleReport> {
    opts::check_topic_prefix(&cfg.topic_prefix)?;
    if cfg.subs_per_conn > cfg.topics || cfg.topics == 0 {
        bail!("--subs-per-conn must be at most --topics, and --topics at least 1");
    }
    let c = &cfg.common;
    let mut progress = Progress::new(c.progress);
    let mut warned = false;
    let before = c.scrape(&progress, &mut warned);
    if before.is_none() {
        bail!(
            "the idle scenario needs the server's /metrics at {}{}",
            c.metrics.host,
            c.metrics.path
        );
    }
    let plan = SubPlan::flat(cfg.topics, cfg.subs_per_conn);
    let pool = Pool::start(c.pool_config(cfg.connections, plan, &cfg.topic_prefix))?;
    let outcome = pool.wait_ready(c.connect_timeout, |p| progress.update(|| connect_progress(p)));
    if outcome.ready == 0 {
        let errors = pool.shared().first_errors();
        pool.finish(now_us());
        bail!("no connection became ready: {}", errors.join("; "));
    }
    let after_connect = c.scrape(&progress, &mut warned);
    let (cpu_a, srv_a) = (CpuSnap::now(), after_connect);
    let hold_start = Instant::now();
    while hold_start.elapsed() < cfg.hold && !sys::abort_requested() {
        std::thread::sleep(Duration::from_millis(100));
        let shared = pool.shared();
        progress.update(|| {
            format!(
                "holding {:5.1}s of {:.0}s  {} connections ({} closed)",
                hold_start.elapsed().as_secs_f64(),
                secs(cfg.hold),
                pool.ready(),
                shared.closed_early.load(Relaxed)
            )
        });
    }
    let end = c.scrape(&progress, &mut warned);
    let cpu_b = CpuSnap::now();
    let errors = pool.shared().first_errors();
    let result = pool.finish(now_us());
    progress.finish();

    let empty = before.and_then(|s| s.rss_bytes);
    let conns_before = before.and_then(|s| s.connections);
    let per_conn = |snap: Option<crate::server::ServerSnap>| {
        let s = snap?;
        let added = s.connections? - conns_before?;
        let grown = s.rss_bytes? - empty?;
        (added > 0.0).then(|| grown / added)
    };
    Ok(IdleReport {
        scenario: "idle",
        label: c.label.clone(),
        url: c.target.url.clone(),
        params: IdleParams {
            connections: cfg.connections,
            topics: cfg.topics,
            subs_per_conn: cfg.subs_per_conn,
            hold_s: secs(cfg.hold),
            deflate: c.deflate,
            threads: c.threads,
            source_ips: c.source_ips.len().max(1),
        },
        connect: outcome,
        handshake_ms: LatencySummary::of(&result.handshake),
        server: IdleServer {
            rss_empty: empty,
            rss_after_connect: after_connect.and_then(|s| s.rss_bytes),
            rss_end: end.and_then(|s| s.rss_bytes),
            connections_before: conns_before,
            connections_end: end.and_then(|s| s.connections),
            rss_per_conn_after_connect: per_conn(after_connect),
            rss_per_conn_end: per_conn(end),
            cpu_pct_hold: srv_a.zip(end).and_then(|(a, b)| a.cpu_pct(&b)),
        },
        client: ClientUsage::between(&cpu_a, &cpu_b),
        closed_early: result.closed_early,
        errors,
        interrupted: sys::abort_requested(),
    })
}
