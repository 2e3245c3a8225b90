//! `connect`: open N WebSocket connections, at most `connect_concurrency` at a time, and
//! measure the handshake rate and the time each handshake took (TCP connect to a validated
//! `101 Switching Protocols`). The connections stay open until all are done.

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::{connect_progress, ClientUsage, Common, LatencySummary};
use crate::pool::{ConnectOutcome, Pool, SubPlan};
use crate::progress::Progress;
use crate::sys::{now_us, CpuSnap};

#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub common: Common,
    pub connections: usize,
    /// Keep the connections open this long once all are up (0: close at once).
    pub hold: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectParams {
    pub connections: usize,
    pub concurrency: usize,
    /// Every upgrade offered permessage-deflate (and had it accepted).
    pub deflate: bool,
    pub threads: usize,
    pub source_ips: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub params: ConnectParams,
    pub connect: ConnectOutcome,
    /// Completed handshakes per second, first connect to last handshake.
    pub handshakes_per_s: f64,
    pub handshake_ms: Option<LatencySummary>,
    /// Server CPU during the connect phase, % of one core.
    pub server_cpu_pct: Option<f64>,
    /// (RSS with every connection open − RSS before) / connections.
    pub server_rss_per_conn: Option<f64>,
    pub client: ClientUsage,
    pub errors: Vec<String>,
}

pub fn run(cfg: &ConnectConfig) -> anyhow::Result<ConnectReport> {
    let c = &cfg.common;
    let mut progress = Progress::new(c.progress);
    let mut warned = false;
    let before = c.scrape(&progress, &mut warned);
    let cpu_a = CpuSnap::now();
    let plan = SubPlan::flat(1, 0);
    let pool = Pool::start(c.pool_config(cfg.connections, plan, "bench.connect"))?;
    let outcome = pool.wait_ready(c.connect_timeout, |p| progress.update(|| connect_progress(p)));
    let cpu_b = CpuSnap::now();
    let after = c.scrape(&progress, &mut warned);
    if !cfg.hold.is_zero() {
        progress.update(|| format!("holding {} connections", outcome.connected));
        std::thread::sleep(cfg.hold);
    }
    let errors = pool.shared().first_errors();
    let result = pool.finish(now_us());
    progress.finish();
    if outcome.connected == 0 {
        bail!("no connection succeeded: {}", errors.join("; "));
    }
    let per_conn = match (before.and_then(|s| s.rss_bytes), after.and_then(|s| s.rss_bytes)) {
        (Some(b), Some(a)) => Some((a - b) / outcome.connected as f64),
        _ => None,
    };
    Ok(ConnectReport {
        scenario: "connect",
        label: c.label.clone(),
        url: c.target.url.clone(),
        params: ConnectParams {
            connections: cfg.connections,
            concurrency: c.connect_concurrency,
            deflate: c.deflate,
            threads: c.threads,
            source_ips: c.source_ips.len().max(1),
        },
        connect: outcome,
        handshakes_per_s: if outcome.seconds > 0.0 {
            outcome.connected as f64 / outcome.seconds
        } else {
            0.0
        },
        handshake_ms: LatencySummary::of(&result.handshake),
        server_cpu_pct: before.zip(after).and_then(|(a, b)| a.cpu_pct(&b)),
        server_rss_per_conn: per_conn,
        client: ClientUsage::between(&cpu_a, &cpu_b),
        errors,
    })
}
