//! `bandwidth`: what a subscriber pays in bytes per update, with and without Fossil deltas
//! (`"delta":"fossil"`), permessage-deflate (`--deflate`) and under a max rate (`"max_rate"`),
//! checking every update's data while measuring (issue 18 §5).
//!
//! One topic, N subscribers subscribing with the options given, one publisher at R msg/s whose
//! payloads have a [`shapes::Shape`] (`tick`, `book`, `doc`): each publication changes a little
//! of the one before, as real feeds do, which is what a delta saves on. Every subscriber rebuilds
//! each update's data (applying deltas to its previous frame's data) and compares it with what
//! the publisher sent for that `seq` ([`check`]): a run with any mismatch fails.
//!
//! Timeline (as `fanout`): connect and subscribe → read the topic's `seq` (the base) → publish
//! for `warmup` and `duration` (the window: latency, deliveries/s, server CPU) → drain until
//! every subscriber has the last publication (with a max rate it comes up to 1/R late) → close.
//! Bytes, deltas and mismatches count every update of the run; the bytes also once more for the
//! window alone (the steady state: a subscription's first update is always whole).
//!
//! Layout: [`shapes`] the payloads, [`check`] the publisher's record and each subscriber's
//! check, `figures` the report and what fails a run, [`summary`] the human summary; this file
//! the options and the run.
//!
//! Compression: with `--deflate` (a common option) every connection negotiates
//! permessage-deflate, the pool inflates compressed updates before the check sees them, and
//! [`crate::pool::Watch::update`] gets each one's size as it came (the compressed frame). The
//! full-frame size still comes from the rebuilt data, so full / wire shows what deltas and
//! compression save together; the compressed frames and what they saved are counted apart, to
//! compare with the server's metrics. The report's `mode` says which of the two were on.

pub mod check;
mod figures;
pub mod shapes;
pub mod summary;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use super::{connect_progress, secs, ClientUsage, Common, LatencySummary};
use crate::gaps::GapCounts;
use crate::opts::{self, parse_duration};
use crate::pool::{topic_name, Pool, SubPlan, Watch, Watcher};
use crate::progress::Progress;
use crate::proto::SubscribeOptions;
use crate::publisher::{self, PublisherConfig};
use crate::server::{self, ServerSnap};
use crate::sys::{self, now_us, CpuSnap};
use check::{Check, Recorder, Sent, Shared};
use figures::{failures, wire_figures};
pub use figures::{
    BandwidthParams, BandwidthReport, Deliveries, RateFigures, ServerFigures, WindowFigures, WireFigures,
};
use shapes::{Generator, Shape};

#[derive(Debug, Clone)]
pub struct BandwidthConfig {
    pub common: Common,
    pub connections: usize,
    pub shape: Shape,
    /// Subscribe with `"delta":"fossil"`.
    pub delta: bool,
    /// Subscribe with `"max_rate"`.
    pub max_rate: Option<f64>,
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    /// `None`: `bench.bw.<shape>.` (the topic is the prefix and `0`).
    pub topic_prefix: Option<String>,
    /// Of the shape's generator: the same seed publishes the same values.
    pub seed: u64,
}

/// The options of the `bandwidth` subcommand besides the common ones.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Subscriber connections, all on one topic.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// The payload: tick (~90 B, 2-3 numbers change), book (50-level order book, ~3.2 KB, 2-4
    /// levels change) or doc (~5 KB JSON document, one field changes).
    #[arg(long, value_enum, default_value_t = Shape::Tick)]
    pub shape: Shape,
    /// Subscribe with "delta":"fossil" (updates may come as Fossil deltas).
    #[arg(long)]
    pub delta: bool,
    /// Subscribe with "max_rate": at most R updates a second (0.01 to 1000).
    #[arg(long, value_name = "R")]
    pub max_rate: Option<f64>,
    /// Messages per second published.
    #[arg(short = 'r', long, default_value_t = 10.0)]
    pub rate: f64,
    /// Measurement window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publishing before the window (not in the latency and CPU figures; bytes count it).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Longest wait after publishing until every subscriber has the last publication (with
    /// --max-rate at least 1/R + 1 s).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Topic prefix (default bench.bw.SHAPE.); the topic is the prefix and 0.
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Seed of the payload generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Args {
    pub fn config(&self, common: Common) -> BandwidthConfig {
        BandwidthConfig {
            common,
            connections: self.connections,
            shape: self.shape,
            delta: self.delta,
            max_rate: self.max_rate,
            rate: self.rate,
            warmup: self.warmup,
            duration: self.duration,
            drain: self.drain,
            topic_prefix: self.topic_prefix.clone(),
            seed: self.seed,
        }
    }
}

impl BandwidthConfig {
    pub fn new(common: Common, shape: Shape) -> BandwidthConfig {
        BandwidthConfig {
            common,
            connections: 1000,
            shape,
            delta: false,
            max_rate: None,
            rate: 10.0,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            drain: Duration::from_secs(3),
            topic_prefix: None,
            seed: 1,
        }
    }

    pub fn prefix(&self) -> String {
        (self.topic_prefix.clone()).unwrap_or_else(|| format!("bench.bw.{}.", self.shape.name()))
    }

    /// `plain`, `delta`, `deflate` or `delta+deflate`.
    pub fn mode(&self) -> &'static str {
        match (self.delta, self.common.deflate) {
            (false, false) => "plain",
            (true, false) => "delta",
            (false, true) => "deflate",
            (true, true) => "delta+deflate",
        }
    }

    /// The drain: with a max rate the last publication may come 1/R after it was published.
    pub fn drain(&self) -> Duration {
        let paced = self
            .max_rate
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r + 1.0));
        self.drain.max(paced)
    }

    fn validate(&self) -> anyhow::Result<()> {
        opts::check_topic_prefix(&self.prefix())?;
        if self.connections == 0 {
            bail!("-n must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate > 0.0) || self.duration.is_zero() {
            bail!("--rate and --duration must be positive");
        }
        if let Some(r) = self.max_rate.filter(|&r| !tickwire_proto::rate::valid(r)) {
            bail!(
                "--max-rate {r} is outside {}..={}",
                tickwire_proto::rate::MIN_RATE,
                tickwire_proto::rate::MAX_RATE
            );
        }
        Ok(())
    }
}

/// Runs the bandwidth scenario.
pub fn run(cfg: &BandwidthConfig) -> anyhow::Result<BandwidthReport> {
    cfg.validate()?;
    let c = &cfg.common;
    let mut progress = Progress::new(c.progress);
    let mut warned = false;
    let prefix = cfg.prefix();
    let topic = topic_name(&prefix, 0);
    let api = opts::endpoint(&c.target, "/api/v1/publish");
    let sent = Arc::new(Sent::default());
    let shared = Arc::new(Shared::new(sent.clone(), cfg.connections, cfg.max_rate));

    let mut pool_cfg = c.pool_config(cfg.connections, SubPlan::flat(1, 1), &prefix);
    pool_cfg.subscribe = SubscribeOptions {
        max_rate: cfg.max_rate,
        delta: cfg.delta,
    };
    let watching = shared.clone();
    pool_cfg.watch = Some(Watcher(Arc::new(move |i| {
        Box::new(Check::new(i, watching.clone())) as Box<dyn Watch>
    })));
    let pool = Pool::start(pool_cfg)?;
    let outcome = pool.wait_ready(c.connect_timeout, |p| progress.update(|| connect_progress(p)));
    if outcome.ready == 0 {
        let errors = pool.shared().first_errors();
        pool.finish(now_us());
        bail!("no connection became ready: {}", errors.join("; "));
    }
    let base = server::topic_seq(&api, &topic).context("reading the topic's current seq")?;
    sent.set_base(base);
    let srv_start = c.scrape(&progress, &mut warned);

    let t_start = now_us();
    let t0 = t_start + cfg.warmup.as_micros() as u64;
    let t1 = t0 + cfg.duration.as_micros() as u64;
    pool.shared().set_window(t0, t1);
    shared.set_window(t0, t1);
    let pcfg = PublisherConfig {
        endpoint: api.clone(),
        topics: vec![topic.clone()],
        rate: cfg.rate,
        payload_bytes: 0,
        payloads: Some(Box::new(Recorder {
            generator: Generator::new(cfg.shape, cfg.seed),
            sent: sent.clone(),
        })),
        interval: Duration::from_millis(5),
        batch_max: 10_000,
        t0,
        t1,
        grace: cfg.drain().max(Duration::from_millis(500)),
        lockstep: None,
        stop: None,
    };
    let publisher = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || publisher::run(pcfg))?;
    let updates = &pool.shared().updates;
    let wait_until = |until: u64, phase: &str, progress: &mut Progress| {
        while now_us() < until && !sys::abort_requested() {
            std::thread::sleep(Duration::from_micros((until - now_us()).min(100_000)));
            progress.update(|| {
                format!(
                    "{phase} {:5.1}s  received {}",
                    now_us().saturating_sub(t_start) as f64 / 1e6,
                    updates.load(Relaxed)
                )
            });
        }
    };
    wait_until(t0, "warmup ", &mut progress);
    let (cpu_a, srv_a) = (CpuSnap::now(), c.scrape(&progress, &mut warned));
    wait_until(t1, "measure", &mut progress);
    let (cpu_b, srv_b) = (CpuSnap::now(), c.scrape(&progress, &mut warned));
    let interrupted = sys::abort_requested();
    let pub_result = publisher::join(publisher);
    let mut errors = pub_result.problems();
    let final_seq = pub_result.final_seqs(&[base])[0];
    if final_seq != base + sent.len() as u64 {
        errors.push(format!(
            "the topic's seqs went from {base} to {final_seq} for {} publications: a failed publish or another publisher? \
             (the data check assumes seq = base + 1 + k)",
            sent.len()
        ));
    }

    // Drain: until every ready subscriber's last update is the last publication.
    let at_last = || {
        (shared.last_seq.iter())
            .filter(|s| s.load(Relaxed) == final_seq)
            .count()
    };
    let drain_end = now_us() + cfg.drain().as_micros() as u64;
    while now_us() < drain_end && !sys::abort_requested() && final_seq > base && at_last() < outcome.ready {
        std::thread::sleep(Duration::from_millis(5));
        progress.update(|| {
            format!(
                "drain: {} of {} have the last publication",
                at_last(),
                outcome.ready
            )
        });
    }
    let srv_end = c.scrape(&progress, &mut warned);
    errors.extend(pool.shared().first_errors());
    let result = pool.finish(now_us());
    progress.finish();

    let totals = shared.totals();
    let newest_last = if final_seq > base { at_last() as u64 } else { 0 };
    let mut gaps = GapCounts::default();
    for (_, track) in &result.tracks {
        gaps += track.finish(base, final_seq);
    }
    let duration_s = secs(cfg.duration);
    let client = ClientUsage::between(&cpu_a, &cpu_b);
    let server_cpu = srv_a.zip(srv_b).and_then(|(a, b)| a.cpu_pct(&b));
    let other_cpu_pct =
        server_cpu.map(|s| (client.machine_busy_pct * client.ncpu as f64 - s - client.cpu_pct).max(0.0));
    let over_run =
        |f: fn(&ServerSnap) -> Option<f64>| srv_start.zip(srv_end).and_then(|(a, b)| a.delta(&b, f));
    let deliveries = Deliveries {
        updates_received: totals.updates,
        expected: (final_seq - base) * outcome.ready as u64,
        per_subscriber: totals.updates as f64 / totals.subscribers.max(1) as f64,
        per_subscriber_min: totals.min_updates.unwrap_or(0),
        per_subscriber_max: totals.max_updates,
        delivered_in_window: result.counters.delivered_in_window,
        deliveries_per_s: result.counters.delivered_in_window as f64 / duration_s,
        newest_last,
        newest_not_last: (result.connected as u64).saturating_sub(newest_last),
    };
    let max_rate = cfg.max_rate.map(|r| RateFigures {
        max_rate: r,
        bound: r + 1.0,
        max_in_1s: totals.max_in_1s,
        over_bound: totals.over_bound,
    });
    let failures = failures(cfg, &totals, &deliveries, max_rate.as_ref());
    Ok(BandwidthReport {
        scenario: "bandwidth",
        label: c.label.clone(),
        url: c.target.url.clone(),
        params: BandwidthParams {
            connections: cfg.connections,
            shape: cfg.shape,
            mode: cfg.mode(),
            max_rate: cfg.max_rate,
            rate: cfg.rate,
            warmup_s: secs(cfg.warmup),
            duration_s,
            drain_s: secs(cfg.drain()),
            threads: c.threads,
            source_ips: c.source_ips.len().max(1),
            topic,
            seed: cfg.seed,
        },
        connect: outcome,
        handshake_ms: LatencySummary::of(&result.handshake),
        publish_rate: pub_result.sent_in_window as f64 / duration_s,
        publish: pub_result,
        base_seq: base,
        final_seq,
        deliveries,
        bytes: wire_figures(&totals, result.counters.bytes),
        mismatches: totals.mismatches.total(),
        mismatch_kinds: totals.mismatches,
        max_rate,
        latency_ms: LatencySummary::of(&result.latency),
        gaps,
        receive: result.counters,
        closed_early: result.closed_early,
        server: ServerFigures {
            cpu_pct: server_cpu,
            delta_frames: over_run(|s| s.delta_frames_total),
            bytes_saved_delta: over_run(|s| s.bytes_saved_delta),
            compressed_frames: over_run(|s| s.compressed_frames_total),
            bytes_saved_deflate: over_run(|s| s.bytes_saved_deflate),
            bytes_sent: over_run(|s| s.bytes_sent_total),
            conflated: over_run(|s| s.conflated_total),
            rss_end: srv_end.and_then(|s| s.rss_bytes),
        },
        client,
        other_cpu_pct,
        failures,
        errors,
        interrupted,
    })
}
