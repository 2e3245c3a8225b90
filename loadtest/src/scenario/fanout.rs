//! `fanout`: N subscribers over T topics (K subscriptions each), one publisher at R msg/s over
//! HTTP batch publish; end-to-end latency, deliveries/s, conflation and loss.
//!
//! Timeline: connect and subscribe every connection → read each topic's current `seq` (the
//! base) → publish for `warmup` (not measured) and `duration` (the window) → stop publishing,
//! read each topic's final `seq` → keep receiving for `drain` (or until everything arrived) →
//! close. A message counts as delivered in the window if its send stamp falls in the window and
//! it arrives before the drain ends; the latency histogram holds exactly those. Sequence
//! accounting (received / conflated / lost) covers every message of the run.
//!
//! With `sse` the subscribers are `GET /sse?topics=…` streams instead of WebSocket connections
//! (publishing stays HTTP); everything else is the same.
//!
//! With `lockstep` (`--lockstep N`) there is no warmup and the window ends when the publisher has
//! sent its N messages one by one, each once the previous one reached every subscriber (or at
//! `duration`, an upper bound): the server's work is then the same in every run, for callgrind.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use super::{connect_progress, secs, ClientUsage, Common, LatencySummary};
use crate::gaps::GapCounts;
use crate::opts::{self, HttpEndpoint};
use crate::pool::{topic_name, ConnectOutcome, Pool, RecvCounters, SubPlan};
use crate::progress::Progress;
use crate::publisher::{self, Lockstep, PublisherConfig, PublisherResult};
use crate::server::{self, ServerSnap};
use crate::sys::{self, now_us, CpuSnap};

#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub common: Common,
    pub connections: usize,
    pub topics: u32,
    pub subs_per_conn: u32,
    pub rate: f64,
    pub payload_bytes: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub topic_prefix: String,
    pub pub_interval: Duration,
    pub batch_max: u64,
    /// The publish API of another node of a cluster; `None`: the subscribers' node.
    pub publish_to: Option<HttpEndpoint>,
    /// Publish this many messages in lockstep with the subscribers instead of at `rate`.
    pub lockstep: Option<u64>,
    /// Subscribe over Server-Sent Events (`GET /sse?topics=…` on the target's host and port)
    /// instead of WebSocket.
    pub sse: bool,
}

impl FanoutConfig {
    pub fn new(common: Common) -> FanoutConfig {
        FanoutConfig {
            common,
            connections: 1000,
            topics: 1,
            subs_per_conn: 1,
            rate: 10.0,
            payload_bytes: 100,
            warmup: Duration::from_secs(3),
            duration: Duration::from_secs(10),
            drain: Duration::from_secs(3),
            topic_prefix: "bench.t".into(),
            pub_interval: Duration::from_millis(5),
            batch_max: 10_000,
            publish_to: None,
            lockstep: None,
            sse: false,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        opts::check_topic_prefix(&self.topic_prefix)?;
        if self.topics == 0 {
            bail!("--topics must be at least 1");
        }
        if self.subs_per_conn == 0 || self.subs_per_conn > self.topics {
            bail!(
                "--subs-per-conn must be between 1 and --topics ({}), got {}",
                self.topics,
                self.subs_per_conn
            );
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            bail!("--rate must be a non-negative number");
        }
        if self.lockstep == Some(0) {
            bail!("--lockstep must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.sse && self.common.deflate {
            bail!("--deflate is a WebSocket extension: it does not combine with --sse");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutParams {
    pub connections: usize,
    pub topics: u32,
    pub subs_per_conn: u32,
    pub rate: f64,
    /// Publications sent in lockstep (`rate` then does not apply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lockstep: Option<u64>,
    /// `websocket` or `sse`.
    pub transport: &'static str,
    pub payload_bytes: usize,
    /// permessage-deflate negotiated on every connection.
    pub deflate: bool,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub threads: usize,
    pub source_ips: usize,
    pub topic_prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deliveries {
    /// Updates stamped in the window and received before the drain ended.
    pub delivered_in_window: u64,
    /// Messages published in the window × their topic's subscribers.
    pub expected_in_window: u64,
    pub deliveries_per_s: f64,
    /// 1 − delivered/expected over the window, % (late, conflated and lost messages).
    pub shortfall_in_window_pct: f64,
    /// Every update received during the run (warmup and drain included).
    pub updates_received: u64,
    /// Whether the drain ended early because everything published had arrived.
    pub drained_early: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerFigures {
    /// Server CPU over the window, % of one core.
    pub cpu_pct: Option<f64>,
    pub rss_before: Option<f64>,
    pub rss_after_connect: Option<f64>,
    pub rss_end: Option<f64>,
    /// (RSS at window end − RSS before connecting) / connections.
    pub rss_per_conn_end: Option<f64>,
    /// `tickwire_messages_delivered_total` over the window (frames written, all kinds).
    pub frames_written_in_window: Option<f64>,
    /// `tickwire_messages_conflated_total` over the whole run.
    pub conflated_metric: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub params: FanoutParams,
    pub connect: ConnectOutcome,
    pub handshake_ms: Option<LatencySummary>,
    pub publish: PublisherResult,
    /// Publish rate achieved in the window, msg/s.
    pub publish_rate: f64,
    pub topics_base_seq: Vec<u64>,
    pub topics_final_seq: Vec<u64>,
    pub deliveries: Deliveries,
    pub latency_ms: Option<LatencySummary>,
    pub gaps: GapCounts,
    pub receive: RecvCounters,
    pub closed_early: usize,
    pub server: ServerFigures,
    pub client: ClientUsage,
    /// CPU used by other processes during the window, % of one core (machine busy minus the
    /// server and this client): competition that inflates latency.
    pub other_cpu_pct: Option<f64>,
    pub errors: Vec<String>,
    pub interrupted: bool,
}

/// Runs the fan-out scenario.
pub fn run(cfg: &FanoutConfig) -> anyhow::Result<FanoutReport> {
    cfg.validate()?;
    let c = &cfg.common;
    let mut progress = Progress::new(c.progress);
    let mut warned = false;
    let plan = SubPlan::flat(cfg.topics, cfg.subs_per_conn);
    let names: Vec<String> = (0..cfg.topics)
        .map(|t| topic_name(&cfg.topic_prefix, t))
        .collect();
    let api = (cfg.publish_to.clone()).unwrap_or_else(|| opts::endpoint(&c.target, "/api/v1/publish"));

    let srv_before = c.scrape(&progress, &mut warned);
    let mut pool_config = c.pool_config(cfg.connections, plan, &cfg.topic_prefix);
    pool_config.sse = cfg.sse;
    let pool = Pool::start(pool_config)?;
    let outcome = pool.wait_ready(c.connect_timeout, |p| progress.update(|| connect_progress(p)));
    if outcome.ready == 0 {
        let errors = pool.shared().first_errors();
        pool.finish(now_us());
        bail!("no connection became ready: {}", errors.join("; "));
    }
    if outcome.timed_out && !sys::abort_requested() {
        progress.println(&format!(
            "warning: connect timeout: {} of {} ready; measuring with those",
            outcome.ready, cfg.connections
        ));
    }
    let base = (names.iter())
        .map(|t| server::topic_seq(&api, t))
        .collect::<anyhow::Result<Vec<u64>>>()
        .context("reading the topics' current seq")?;
    let srv_connected = c.scrape(&progress, &mut warned);
    if cfg.lockstep.is_some() && outcome.ready < cfg.connections {
        pool.finish(now_us());
        bail!(
            "--lockstep needs every connection: {} of {} ready",
            outcome.ready,
            cfg.connections
        );
    }
    let warmup = if cfg.lockstep.is_some() {
        Duration::ZERO
    } else {
        cfg.warmup
    };

    let t_start = now_us();
    let t0 = t_start + warmup.as_micros() as u64;
    let t1 = t0 + cfg.duration.as_micros() as u64;
    pool.shared().set_window(t0, t1);
    let publisher = (cfg.rate > 0.0 || cfg.lockstep.is_some()).then(|| {
        let pcfg = PublisherConfig {
            endpoint: api.clone(),
            topics: names.clone(),
            rate: cfg.rate,
            payload_bytes: cfg.payload_bytes,
            payloads: None,
            interval: cfg.pub_interval.max(Duration::from_millis(1)),
            batch_max: cfg.batch_max.max(1),
            t0,
            t1,
            grace: cfg.drain.max(Duration::from_millis(500)),
            lockstep: cfg.lockstep.map(|publications| Lockstep {
                publications,
                fan: plan.subscribers_per_topic(cfg.connections),
                pool: pool.shared_arc(),
            }),
            stop: None,
        };
        std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || publisher::run(pcfg))
    });
    let publisher = publisher.transpose()?;

    let shared = pool.shared();
    let mut last = (shared.updates.load(Relaxed), std::time::Instant::now());
    // A lockstep publisher ends the window when it has sent everything.
    let published_all = || cfg.lockstep.is_some() && publisher.as_ref().is_some_and(|h| h.is_finished());
    let mut wait_until = |until: u64, phase: &str, progress: &mut Progress| {
        while now_us() < until && !sys::abort_requested() && !published_all() {
            std::thread::sleep(Duration::from_micros((until - now_us()).min(100_000)));
            let now = std::time::Instant::now();
            let dt = now.duration_since(last.1).as_secs_f64();
            if dt >= 0.5 {
                let u = shared.updates.load(Relaxed);
                let rate = (u - last.0) as f64 / dt;
                last = (u, now);
                progress.update(|| {
                    format!(
                        "{phase} {:5.1}s  recv {:>9.0}/s  total {}  conns {} (closed {})",
                        (now_us().saturating_sub(t_start)) as f64 / 1e6,
                        rate,
                        u,
                        outcome.ready,
                        shared.closed_early.load(Relaxed)
                    )
                });
            }
        }
    };
    wait_until(t0, "warmup ", &mut progress);
    let (cpu_a, srv_a) = (CpuSnap::now(), c.scrape(&progress, &mut warned));
    wait_until(t1, "measure", &mut progress);
    let (cpu_b, srv_b) = (CpuSnap::now(), c.scrape(&progress, &mut warned));
    let window_us = if cfg.lockstep.is_some() {
        now_us().min(t1) - t0
    } else {
        t1 - t0
    };
    let interrupted = sys::abort_requested();

    let pub_result = match publisher {
        Some(h) => publisher::join(h),
        None => PublisherResult::default(),
    };
    let read_seqs = || -> anyhow::Result<Vec<u64>> {
        (names.iter())
            .map(|t| server::topic_seq(&api, t))
            .collect::<anyhow::Result<Vec<u64>>>()
            .context("reading the topics' final seq")
    };
    // A request the publisher gave up on may still be applied: wait until the seqs settle.
    let mut final_seq = read_seqs()?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let again = read_seqs()?;
        if again == final_seq {
            break;
        }
        final_seq = again;
    }

    // Drain: until everything published has arrived (nothing conflated, nothing missing), or
    // the drain time is over.
    let expected_total: u64 = if outcome.ready == cfg.connections {
        let subs = plan.subscribers_per_topic(cfg.connections);
        (0..names.len())
            .map(|t| final_seq[t].saturating_sub(base[t]) * subs[t])
            .sum()
    } else {
        u64::MAX
    };
    let drain_end = now_us().max(t1) + cfg.drain.as_micros() as u64;
    let mut drained_early = false;
    while now_us() < drain_end && !sys::abort_requested() {
        if shared.updates.load(Relaxed) >= expected_total {
            drained_early = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        progress.update(|| {
            format!(
                "drain   {:5.1}s  received {} of {}",
                (now_us().saturating_sub(t_start)) as f64 / 1e6,
                shared.updates.load(Relaxed),
                if expected_total == u64::MAX {
                    "?".to_string()
                } else {
                    expected_total.to_string()
                }
            )
        });
    }
    let mut errors = shared.first_errors();
    let result = pool.finish(now_us());
    let srv_end = c.scrape(&progress, &mut warned);
    progress.finish();
    // Settle the accounts against the seqs as they are now, in case something was still applied
    // during the drain.
    let settled = read_seqs()?;
    if settled != final_seq {
        errors.push(format!(
            "topic seqs moved after publishing stopped ({final_seq:?} -> {settled:?}); accounting uses the later"
        ));
        drained_early = false;
        final_seq = settled;
    }

    let mut gaps = GapCounts::default();
    let mut subscribers = vec![0u64; names.len()];
    for (t, track) in &result.tracks {
        let t = *t as usize;
        subscribers[t] += 1;
        gaps += track.finish(base[t], final_seq[t]);
    }
    if let Some(e) = &pub_result.first_error {
        errors.push(format!("publisher: {e}"));
    }
    for (t, name) in names.iter().enumerate() {
        if pub_result.last_seq[..]
            .get(t)
            .is_some_and(|&s| s != 0 && s != final_seq[t])
        {
            errors.push(format!(
                "topic {name}: server seq {} differs from the last acknowledged {} (another publisher?)",
                final_seq[t], pub_result.last_seq[t]
            ));
        }
    }
    let expected_in_window: u64 = (0..names.len())
        .map(|t| pub_result.in_window_per_topic.get(t).copied().unwrap_or(0) * subscribers[t])
        .sum();
    let delivered = result.counters.delivered_in_window;
    let duration_s = window_us as f64 / 1e6;
    let per_conn = |rss: Option<f64>| match (rss, srv_before.and_then(|s| s.rss_bytes)) {
        (Some(r), Some(b)) if result.connected > 0 => Some((r - b) / result.connected as f64),
        _ => None,
    };
    let rss_end = srv_b.and_then(|s| s.rss_bytes);
    let client = ClientUsage::between(&cpu_a, &cpu_b);
    let server_cpu = srv_a.zip(srv_b).and_then(|(a, b)| a.cpu_pct(&b));
    let other_cpu_pct =
        server_cpu.map(|s| (client.machine_busy_pct * client.ncpu as f64 - s - client.cpu_pct).max(0.0));
    Ok(FanoutReport {
        scenario: "fanout",
        label: c.label.clone(),
        url: c.target.url.clone(),
        params: FanoutParams {
            connections: cfg.connections,
            topics: cfg.topics,
            subs_per_conn: cfg.subs_per_conn,
            rate: cfg.rate,
            lockstep: cfg.lockstep,
            transport: if cfg.sse { "sse" } else { "websocket" },
            payload_bytes: cfg.payload_bytes,
            deflate: c.deflate,
            warmup_s: secs(warmup),
            duration_s,
            drain_s: secs(cfg.drain),
            threads: c.threads,
            source_ips: c.source_ips.len().max(1),
            topic_prefix: cfg.topic_prefix.clone(),
        },
        connect: outcome,
        handshake_ms: LatencySummary::of(&result.handshake),
        publish_rate: pub_result.sent_in_window as f64 / duration_s,
        topics_base_seq: base,
        topics_final_seq: final_seq,
        deliveries: Deliveries {
            delivered_in_window: delivered,
            expected_in_window,
            deliveries_per_s: delivered as f64 / duration_s,
            shortfall_in_window_pct: if expected_in_window > 0 {
                100.0 * (1.0 - delivered as f64 / expected_in_window as f64)
            } else {
                0.0
            },
            updates_received: result.counters.updates,
            drained_early,
        },
        latency_ms: LatencySummary::of(&result.latency),
        gaps,
        receive: result.counters,
        closed_early: result.closed_early,
        server: ServerFigures {
            cpu_pct: server_cpu,
            rss_before: srv_before.and_then(|s| s.rss_bytes),
            rss_after_connect: srv_connected.and_then(|s| s.rss_bytes),
            rss_end,
            rss_per_conn_end: per_conn(rss_end),
            frames_written_in_window: srv_a
                .zip(srv_b)
                .and_then(|(a, b)| a.delta(&b, |s| s.delivered_total)),
            conflated_metric: srv_connected
                .zip(srv_end)
                .and_then(|(a, b)| a.delta(&b, |s: &ServerSnap| s.conflated_total)),
        },
        client,
        other_cpu_pct,
        publish: pub_result,
        errors,
        interrupted,
    })
}
