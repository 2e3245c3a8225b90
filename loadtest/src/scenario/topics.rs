//! `topics`: many topics, many subscriptions. T topics in groups (`<prefix><g>.<j>`), N
//! connections with K subscriptions each, of which P are group patterns (`<prefix><g>.*`), and
//! one publisher spread round-robin over all T topics at R msg/s: deliveries/s, loss,
//! duplicates, latency, and the server's memory per topic and per subscription.
//!
//! Timeline: server RSS of the empty server → create the T topics over HTTP batch publish (one
//! tiny value each, no subscriber; the replies give each topic's base `seq`) → RSS → connect
//! and subscribe every connection → RSS → publish for `warmup` and `duration` (the window) →
//! drain → close. Per topic = (RSS after creating − empty) / T; per subscription = (RSS after
//! subscribing − RSS after creating) / (N × K), which includes the connections' own memory
//! (see the `idle` scenario for that alone). Final `seq`s come from the publisher's
//! acknowledgements, so no per-topic read is needed at the end.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use super::{connect_progress, secs, ClientUsage, Common, LatencySummary};
use crate::gaps::GapCounts;
use crate::opts;
use crate::pool::{ConnectOutcome, Pool, RecvCounters, SubPlan};
use crate::progress::Progress;
use crate::publisher::{self, PublisherConfig, PublisherResult};
use crate::sys::{self, now_us, CpuSnap};

#[derive(Debug, Clone)]
pub struct TopicsConfig {
    pub common: Common,
    pub connections: usize,
    pub topics: u32,
    /// Subscriptions per connection, patterns included.
    pub subs_per_conn: u32,
    /// How many of each connection's subscriptions are group patterns.
    pub patterns_per_conn: u32,
    /// Topics per group (what one pattern matches).
    pub group: u32,
    pub rate: f64,
    pub payload_bytes: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub topic_prefix: String,
    /// Messages per HTTP batch while creating the topics.
    pub batch: usize,
}

impl TopicsConfig {
    pub fn new(common: Common) -> TopicsConfig {
        TopicsConfig {
            common,
            connections: 1000,
            topics: 10_000,
            subs_per_conn: 10,
            patterns_per_conn: 1,
            group: 10,
            rate: 1000.0,
            payload_bytes: 100,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            drain: Duration::from_secs(3),
            topic_prefix: "bench.tp.".into(),
            batch: 5000,
        }
    }

    pub fn plan(&self) -> SubPlan {
        SubPlan {
            topics: self.topics,
            per_conn: self.subs_per_conn,
            patterns: self.patterns_per_conn,
            group: self.group,
        }
    }
}

/// The load of `topics` and `reconnect`: topics in groups, subscriptions, a publisher.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// Topics, named <topic-prefix><g>.<j> in groups of --group (created with one value each).
    #[arg(short = 't', long, default_value_t = 10_000)]
    pub topics: u32,
    /// Subscriptions per connection, patterns included.
    #[arg(short = 'k', long, default_value_t = 10)]
    pub subs_per_conn: u32,
    /// How many of the -k subscriptions are group patterns <topic-prefix><g>.*
    #[arg(long, default_value_t = 1)]
    pub patterns: u32,
    /// Topics per group: what one pattern matches.
    #[arg(long, default_value_t = 10)]
    pub group: u32,
    /// Messages per second over all topics, round-robin.
    #[arg(short = 'r', long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Messages per HTTP batch while creating the topics (http.max_body_bytes must take it).
    #[arg(long, default_value_t = 5000)]
    pub batch: usize,
    #[arg(long, default_value = "bench.tp.")]
    pub topic_prefix: String,
    /// Longest wait after publishing for messages in flight (ends early once all arrived).
    #[arg(long, default_value = "3s", value_parser = crate::opts::parse_duration)]
    pub drain: Duration,
}

impl LoadArgs {
    /// The configuration of a run with these options (warmup and duration left at their defaults).
    pub fn config(&self, common: Common) -> TopicsConfig {
        let mut cfg = TopicsConfig::new(common);
        cfg.connections = self.connections;
        cfg.topics = self.topics;
        cfg.subs_per_conn = self.subs_per_conn;
        cfg.patterns_per_conn = self.patterns;
        cfg.group = self.group;
        cfg.rate = self.rate;
        cfg.payload_bytes = self.payload_bytes;
        cfg.batch = self.batch;
        cfg.topic_prefix = self.topic_prefix.clone();
        cfg.drain = self.drain;
        cfg
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicsParams {
    pub connections: usize,
    pub topics: u32,
    pub subs_per_conn: u32,
    pub patterns_per_conn: u32,
    pub group: u32,
    pub rate: f64,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub threads: usize,
    pub source_ips: usize,
    pub topic_prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicsMemory {
    pub rss_empty: Option<f64>,
    pub rss_topics: Option<f64>,
    pub rss_subscribed: Option<f64>,
    /// (RSS after creating the topics − empty RSS) / topics, bytes.
    pub per_topic: Option<f64>,
    /// (RSS after subscribing − RSS after creating) / subscriptions, bytes (connections included).
    pub per_subscription: Option<f64>,
    /// N × K: exact names and patterns.
    pub subscriptions: u64,
    /// (connection, topic) pairs that receive: exact names plus what the patterns match.
    pub streams: u64,
    /// Seconds to create the topics.
    pub create_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicsReport {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub params: TopicsParams,
    pub connect: ConnectOutcome,
    pub handshake_ms: Option<LatencySummary>,
    pub publish: PublisherResult,
    pub publish_rate: f64,
    /// R × the mean subscribers per topic: the delivery rate the publisher offers. The one-topic
    /// fan-out baseline is `fanout -n N -r offered/N`.
    pub offered_deliveries_per_s: f64,
    /// Updates stamped in the window and received before the drain ended, per second.
    pub deliveries_per_s: f64,
    pub delivered_in_window: u64,
    pub expected_in_window: u64,
    pub latency_ms: Option<LatencySummary>,
    /// `lost` must be 0; `out_of_order` counts duplicates.
    pub gaps: GapCounts,
    pub receive: RecvCounters,
    pub closed_early: usize,
    pub memory: TopicsMemory,
    /// Server CPU over the window, % of one core.
    pub server_cpu_pct: Option<f64>,
    pub server_rss_end: Option<f64>,
    pub client: ClientUsage,
    pub other_cpu_pct: Option<f64>,
    pub errors: Vec<String>,
    pub interrupted: bool,
}

pub fn run(cfg: &TopicsConfig) -> anyhow::Result<TopicsReport> {
    let plan = cfg.plan();
    plan.check().context("the subscription plan")?;
    opts::check_topic_prefix(&cfg.topic_prefix)?;
    if cfg.duration.is_zero() || !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        bail!("--duration and --rate must be positive");
    }
    let c = &cfg.common;
    let mut progress = Progress::new(c.progress);
    let mut warned = false;
    let api = opts::endpoint(&c.target, "/api/v1/publish");
    let names: Vec<String> = (0..cfg.topics).map(|t| plan.name(&cfg.topic_prefix, t)).collect();

    let srv_empty = c.scrape(&progress, &mut warned);
    progress.update(|| format!("creating {} topics", cfg.topics));
    let created = std::time::Instant::now();
    let base = publisher::create_topics(&api, &names, cfg.batch)?;
    let create_s = created.elapsed().as_secs_f64();
    let srv_topics = c.scrape(&progress, &mut warned);

    let mut pool_cfg = c.pool_config(cfg.connections, plan, &cfg.topic_prefix);
    pool_cfg.recovery = false;
    let pool = Pool::start(pool_cfg)?;
    let outcome = pool.wait_ready(c.connect_timeout, |p| progress.update(|| connect_progress(p)));
    if outcome.ready == 0 {
        let errors = pool.shared().first_errors();
        pool.finish(now_us());
        bail!("no connection became ready: {}", errors.join("; "));
    }
    let srv_subscribed = c.scrape(&progress, &mut warned);
    let subs = plan.subscribers_per_topic(cfg.connections);
    let streams: u64 = subs.iter().sum();

    let t_start = now_us();
    let t0 = t_start + cfg.warmup.as_micros() as u64;
    let t1 = t0 + cfg.duration.as_micros() as u64;
    pool.shared().set_window(t0, t1);
    let pcfg = PublisherConfig {
        endpoint: api.clone(),
        topics: names.clone(),
        rate: cfg.rate,
        payload_bytes: cfg.payload_bytes,
        payloads: None,
        interval: Duration::from_millis(5),
        batch_max: 10_000,
        t0,
        t1,
        grace: cfg.drain.max(Duration::from_millis(500)),
        lockstep: None,
        stop: None,
    };
    let publisher = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || publisher::run(pcfg))?;
    let shared = pool.shared();
    let wait_until = |until: u64, phase: &str, progress: &mut Progress| {
        while now_us() < until && !sys::abort_requested() {
            std::thread::sleep(Duration::from_micros((until - now_us()).min(100_000)));
            progress.update(|| {
                format!(
                    "{phase} {:5.1}s  received {}",
                    now_us().saturating_sub(t_start) as f64 / 1e6,
                    shared.updates.load(Relaxed)
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
    let final_seq = pub_result.final_seqs(&base);
    let expected_total: u64 = if outcome.ready == cfg.connections {
        (0..names.len()).map(|t| (final_seq[t] - base[t]) * subs[t]).sum()
    } else {
        u64::MAX
    };
    let drain_end = now_us() + cfg.drain.as_micros() as u64;
    while now_us() < drain_end && !sys::abort_requested() && shared.updates.load(Relaxed) < expected_total {
        std::thread::sleep(Duration::from_millis(5));
    }
    errors.extend(shared.first_errors());
    let result = pool.finish(now_us());
    progress.finish();

    let mut gaps = GapCounts::default();
    let mut subscribers = vec![0u64; names.len()];
    for (t, track) in &result.tracks {
        let t = *t as usize;
        subscribers[t] += 1;
        gaps += track.finish(base[t], final_seq[t]);
    }
    let expected_in_window: u64 = (0..names.len())
        .map(|t| pub_result.in_window_per_topic[t] * subscribers[t])
        .sum();
    let duration_s = secs(cfg.duration);
    let delivered = result.counters.delivered_in_window;
    let rss = |s: Option<crate::server::ServerSnap>| s.and_then(|s| s.rss_bytes);
    let per = |a: Option<f64>, b: Option<f64>, n: u64| match (a, b) {
        (Some(a), Some(b)) if n > 0 => Some((b - a) / n as f64),
        _ => None,
    };
    let subscriptions = result.connected as u64 * u64::from(cfg.subs_per_conn);
    let client = ClientUsage::between(&cpu_a, &cpu_b);
    let server_cpu = srv_a.zip(srv_b).and_then(|(a, b)| a.cpu_pct(&b));
    let other_cpu_pct =
        server_cpu.map(|s| (client.machine_busy_pct * client.ncpu as f64 - s - client.cpu_pct).max(0.0));
    Ok(TopicsReport {
        scenario: "topics",
        label: c.label.clone(),
        url: c.target.url.clone(),
        params: TopicsParams {
            connections: cfg.connections,
            topics: cfg.topics,
            subs_per_conn: cfg.subs_per_conn,
            patterns_per_conn: cfg.patterns_per_conn,
            group: cfg.group,
            rate: cfg.rate,
            payload_bytes: cfg.payload_bytes,
            warmup_s: secs(cfg.warmup),
            duration_s,
            drain_s: secs(cfg.drain),
            threads: c.threads,
            source_ips: c.source_ips.len().max(1),
            topic_prefix: cfg.topic_prefix.clone(),
        },
        connect: outcome,
        handshake_ms: LatencySummary::of(&result.handshake),
        publish_rate: pub_result.sent_in_window as f64 / duration_s,
        offered_deliveries_per_s: cfg.rate * streams as f64 / f64::from(cfg.topics),
        deliveries_per_s: delivered as f64 / duration_s,
        delivered_in_window: delivered,
        expected_in_window,
        latency_ms: LatencySummary::of(&result.latency),
        gaps,
        receive: result.counters,
        closed_early: result.closed_early,
        memory: TopicsMemory {
            rss_empty: rss(srv_empty),
            rss_topics: rss(srv_topics),
            rss_subscribed: rss(srv_subscribed),
            per_topic: per(rss(srv_empty), rss(srv_topics), u64::from(cfg.topics)),
            per_subscription: per(rss(srv_topics), rss(srv_subscribed), subscriptions),
            subscriptions,
            streams,
            create_s,
        },
        server_cpu_pct: server_cpu,
        server_rss_end: rss(srv_b),
        client,
        other_cpu_pct,
        publish: pub_result,
        errors,
        interrupted,
    })
}
