//! `reconnect`: a reconnect storm. N connections subscribed (exact names and group patterns,
//! as in `topics`) with a publisher running; then every connection drops at once (client
//! side), reconnects (at most `--connect-concurrency` at a time) and subscribes again with
//! `since`: the last position it saw of each topic (protocol.md §4.5).
//!
//! Reported: the time from the drop until every connection is back (its recovering
//! `subscribed` reply parsed), how many came back recovered and how many reset, gaps and
//! duplicates over the whole run (a recovered stream has neither: the catch-up fills exactly
//! what the drop missed), the reconnect handshakes, the latency of live updates to connections
//! already back while the storm goes on, and the server during the storm: CPU, RSS peak (from
//! /proc every ~20 ms), `/healthz` answered on a fresh connection every ~20 ms (max and p99),
//! and the kernel's listen-queue overflow and drop counters before and after.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::topics::TopicsConfig;
use super::{connect_progress, secs, ClientUsage, LatencySummary};
use crate::gaps::GapCounts;
use crate::opts::{self, HttpEndpoint};
use crate::pool::{histogram, ConnectOutcome, Pool, RecvCounters};
use crate::progress::Progress;
use crate::publisher::{self, PublisherConfig, PublisherResult};
use crate::storm::StormOutcome;
use crate::sys::{self, now_us, CpuSnap};

#[derive(Debug, Clone)]
pub struct ReconnectConfig {
    /// Connections, topics, the plan, rate and payload as in `topics` (its `warmup` is the
    /// publishing before the drop, its `duration` the publishing after everyone is back).
    pub load: TopicsConfig,
    /// Longest wait for every connection to come back.
    pub recover_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReconnectParams {
    pub connections: usize,
    pub topics: u32,
    pub subs_per_conn: u32,
    pub patterns_per_conn: u32,
    pub group: u32,
    pub rate: f64,
    pub connect_concurrency: usize,
    pub before_s: f64,
    pub after_s: f64,
    pub source_ips: usize,
}

/// The server while the storm lasted.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StormServer {
    /// % of one core, drop to the last connection back.
    pub cpu_pct: Option<f64>,
    pub rss_before: Option<f64>,
    pub rss_peak: Option<f64>,
    /// `/healthz` samples (a new connection each, every ~20 ms), milliseconds.
    pub healthz_samples: u64,
    pub healthz_failed: u64,
    pub healthz_max_ms: Option<f64>,
    pub healthz_p99_ms: Option<f64>,
    /// `TcpExt` `ListenOverflows` / `ListenDrops` during the storm (whole machine, loopback).
    pub listen_overflows: Option<u64>,
    pub listen_drops: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReconnectReport {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub params: ReconnectParams,
    /// The first connect and subscribe.
    pub connect: ConnectOutcome,
    pub handshake_ms: Option<LatencySummary>,
    pub storm: StormOutcome,
    pub rehandshake_ms: Option<LatencySummary>,
    /// Live updates to connections already back, while the storm went on.
    pub storm_delivery_ms: Option<LatencySummary>,
    pub server: StormServer,
    /// This client during the storm (it competes with the server for the cores).
    pub client: ClientUsage,
    /// CPU of other processes during the storm, % of one core.
    pub other_cpu_pct: Option<f64>,
    pub publish: PublisherResult,
    /// Over the whole run: `conflated + lost` is the gap count (0 when all recovered),
    /// `out_of_order` the duplicates.
    pub gaps: GapCounts,
    pub receive: RecvCounters,
    pub closed_early: usize,
    pub errors: Vec<String>,
    pub interrupted: bool,
}

pub fn run(cfg: &ReconnectConfig) -> anyhow::Result<ReconnectReport> {
    let load = &cfg.load;
    let plan = load.plan();
    plan.check().context("the subscription plan")?;
    opts::check_topic_prefix(&load.topic_prefix)?;
    if plan.per_conn == 0 || !(load.rate.is_finite() && load.rate > 0.0) {
        bail!("the storm needs subscriptions and a positive --rate");
    }
    let c = &load.common;
    let mut progress = Progress::new(c.progress);
    let api = opts::endpoint(&c.target, "/api/v1/publish");
    let names: Vec<String> = (0..load.topics)
        .map(|t| plan.name(&load.topic_prefix, t))
        .collect();
    progress.update(|| format!("creating {} topics", load.topics));
    let base = publisher::create_topics(&api, &names, load.batch)?;

    let mut pool_cfg = c.pool_config(load.connections, plan, &load.topic_prefix);
    pool_cfg.recovery = true;
    let pool = Pool::start(pool_cfg)?;
    let outcome = pool.wait_ready(c.connect_timeout, |p| progress.update(|| connect_progress(p)));
    if outcome.ready < load.connections {
        let errors = pool.shared().first_errors();
        pool.finish(now_us());
        bail!(
            "only {} of {} connections became ready: {}",
            outcome.ready,
            load.connections,
            errors.join("; ")
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = now_us();
    // The publisher stops on `stop`; `t1` only bounds it.
    let t1 = t0 + 3_600_000_000;
    pool.shared().set_window(t0, t1);
    let pcfg = PublisherConfig {
        endpoint: api.clone(),
        topics: names.clone(),
        rate: load.rate,
        payload_bytes: load.payload_bytes,
        payloads: None,
        interval: Duration::from_millis(5),
        batch_max: 10_000,
        t0,
        t1,
        grace: Duration::from_secs(5),
        lockstep: None,
        stop: Some(stop.clone()),
    };
    let publisher = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || publisher::run(pcfg))?;
    progress.update(|| "publishing before the drop".into());
    sys::sleep_until_us(t0 + load.warmup.as_micros() as u64);

    // The storm, watched from the side.
    let drops_before = sys::listen_drops();
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (healthz, pid, stop) = (
            opts::endpoint(&c.target, "/healthz"),
            c.server_pid,
            watch_stop.clone(),
        );
        std::thread::Builder::new()
            .name("healthz".into())
            .spawn(move || watch_server(healthz, pid, stop))?
    };
    let cpu = |pid: Option<u32>| pid.and_then(|p| sys::cpu_seconds(&p.to_string()));
    let rss_before = c.server_pid.and_then(|p| sys::rss_bytes(&p.to_string()));
    let (cpu_a, at_a, client_a) = (cpu(c.server_pid), Instant::now(), CpuSnap::now());
    // A connection the server already closed has nothing to drop.
    let alive = outcome.ready - pool.shared().closed_early.load(Relaxed);
    pool.storm();
    let storm = pool.wait_back(alive, cfg.recover_timeout, |s| {
        progress.update(|| {
            format!(
                "storm: {} recovered, {} reset, {} failed of {}",
                s.recovered.load(Relaxed),
                s.reset.load(Relaxed),
                s.failed.load(Relaxed),
                alive
            )
        })
    });
    let (cpu_b, at_b, client_b) = (cpu(c.server_pid), Instant::now(), CpuSnap::now());
    watch_stop.store(true, Relaxed);
    let watched = watcher.join().unwrap_or_default();
    let drops_after = sys::listen_drops();

    progress.update(|| "publishing after the storm".into());
    std::thread::sleep(load.duration);
    stop.store(true, Relaxed);
    let pub_result = publisher::join(publisher);
    let mut errors = pub_result.problems();
    let final_seq = pub_result.final_seqs(&base);
    let subs = plan.subscribers_per_topic(load.connections);
    let expected: u64 = (0..names.len()).map(|t| (final_seq[t] - base[t]) * subs[t]).sum();
    let shared = pool.shared();
    let drain_end = now_us() + load.drain.as_micros() as u64;
    while now_us() < drain_end && !sys::abort_requested() && shared.updates.load(Relaxed) < expected {
        std::thread::sleep(Duration::from_millis(5));
    }
    errors.extend(shared.first_errors());
    let mut storm = storm;
    storm.caught_up = shared.storm.caught_up.load(Relaxed);
    let result = pool.finish(now_us());
    progress.finish();
    let mut gaps = GapCounts::default();
    for (t, track) in &result.tracks {
        gaps += track.finish(base[*t as usize], final_seq[*t as usize]);
    }
    let delta = |a: Option<(u64, u64)>, b: Option<(u64, u64)>, f: fn((u64, u64)) -> u64| {
        Some(f(b?).saturating_sub(f(a?)))
    };
    let storm_s = at_b.duration_since(at_a).as_secs_f64();
    let server_cpu = (cpu_a.zip(cpu_b))
        .filter(|_| storm_s > 0.0)
        .map(|(a, b)| (b - a) / storm_s * 100.0);
    let client = ClientUsage::between(&client_a, &client_b);
    let other_cpu_pct =
        server_cpu.map(|s| (client.machine_busy_pct * client.ncpu as f64 - s - client.cpu_pct).max(0.0));
    Ok(ReconnectReport {
        scenario: "reconnect",
        label: c.label.clone(),
        url: c.target.url.clone(),
        params: ReconnectParams {
            connections: load.connections,
            topics: load.topics,
            subs_per_conn: load.subs_per_conn,
            patterns_per_conn: load.patterns_per_conn,
            group: load.group,
            rate: load.rate,
            connect_concurrency: c.connect_concurrency,
            before_s: secs(load.warmup),
            after_s: secs(load.duration),
            source_ips: c.source_ips.len().max(1),
        },
        connect: outcome,
        handshake_ms: LatencySummary::of(&result.handshake),
        storm,
        rehandshake_ms: LatencySummary::of(&result.rehandshake),
        storm_delivery_ms: LatencySummary::of(&result.storm_latency),
        server: StormServer {
            cpu_pct: server_cpu,
            rss_before: rss_before.map(|b| b as f64),
            rss_peak: watched.rss_peak.map(|b| b as f64),
            healthz_samples: watched.healthz.len(),
            healthz_failed: watched.failed,
            healthz_max_ms: (!watched.healthz.is_empty()).then(|| watched.healthz.max() as f64 / 1000.0),
            healthz_p99_ms: (!watched.healthz.is_empty())
                .then(|| watched.healthz.value_at_quantile(0.99) as f64 / 1000.0),
            listen_overflows: delta(drops_before, drops_after, |d| d.0),
            listen_drops: delta(drops_before, drops_after, |d| d.1),
        },
        client,
        other_cpu_pct,
        publish: pub_result,
        gaps,
        receive: result.counters,
        closed_early: result.closed_early,
        errors,
        interrupted: sys::abort_requested(),
    })
}

/// What the watcher saw during the storm.
struct Watched {
    /// `/healthz` times, µs.
    healthz: Histogram<u64>,
    failed: u64,
    rss_peak: Option<u64>,
}

impl Default for Watched {
    fn default() -> Watched {
        Watched {
            healthz: histogram(),
            failed: 0,
            rss_peak: None,
        }
    }
}

/// Every ~20 ms until `stop`: one `/healthz` on a new connection, and the server's RSS.
fn watch_server(healthz: HttpEndpoint, pid: Option<u32>, stop: Arc<AtomicBool>) -> Watched {
    let mut w = Watched::default();
    let period = Duration::from_millis(20);
    loop {
        let started = Instant::now();
        match crate::server::healthz_ms(&healthz) {
            Some(ms) => w.healthz.saturating_record((ms * 1000.0) as u64),
            None => w.failed += 1,
        }
        if let Some(rss) = pid.and_then(|p| sys::rss_bytes(&p.to_string())) {
            w.rss_peak = Some(w.rss_peak.unwrap_or(0).max(rss));
        }
        if stop.load(Relaxed) {
            return w;
        }
        std::thread::sleep(period.saturating_sub(started.elapsed()));
    }
}
