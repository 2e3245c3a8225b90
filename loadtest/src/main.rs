//! The `tickwire-loadtest` binary: options, the hard deadline, output.
//!
//! Exit codes: 0 done, 1 the run failed, 2 bad options, 3 hard deadline reached,
//! 130 second Ctrl-C.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tickwire_loadtest::opts::{self, parse_duration};
use tickwire_loadtest::scenario::{
    bandwidth, connect, fanout, idle, patterns, publish, reconnect, topics, Common,
};
use tickwire_loadtest::{bench, report, sys};

#[derive(Parser)]
#[command(
    name = "tickwire-loadtest",
    version,
    about = "Load generator and benchmarks for the tickwire push server (loopback targets only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N subscribers over T topics (K each), one HTTP publisher at R msg/s: end-to-end latency,
    /// deliveries/s, conflation and loss.
    Fanout(FanoutArgs),
    /// N subscribed connections held open: server RSS per connection.
    Idle(IdleArgs),
    /// Open N connections: handshake rate and handshake time percentiles.
    Connect(ConnectArgs),
    /// HTTP publish ingest rate, single messages and batches.
    Publish(PublishArgs),
    /// T topics, then subscribe/unsubscribe round trips of patterns matching K of them each.
    Patterns(PatternsArgs),
    /// Many topics, many subscriptions (exact and patterns), a publisher spread over them:
    /// deliveries/s, loss, latency, server memory per topic and per subscription.
    Topics(TopicsArgs),
    /// A reconnect storm: every connection drops at once and recovers with `since`.
    Reconnect(ReconnectArgs),
    /// N subscribers of one topic whose payload changes a little per update (tick, book, doc),
    /// plain, with deltas or a max rate: bytes per delivery, every update's data checked.
    Bandwidth(BandwidthArgs),
    /// Build the benchmark page section and chart from saved JSON results.
    Report(bench::ReportArgs),
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// WebSocket endpoint; the HTTP API and /metrics are on the same host and port.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Where the server's Prometheus metrics are (default: /metrics on the --url host).
    #[arg(long)]
    metrics_url: Option<String>,
    /// WebSocket endpoints of several nodes of one cluster, comma-separated: connection i
    /// opens on the (i mod n)-th, so subscribers spread evenly over the nodes. Publishing,
    /// `/metrics` and the server's CPU stay on --url's node (cross-node fan-out when that node
    /// is not in the list). Default: --url alone.
    #[arg(long, value_delimiter = ',')]
    subscribe_urls: Vec<String>,
    /// Local source addresses, bound round-robin: addresses and ranges, e.g.
    /// 127.0.0.1-127.0.0.16,127.0.1.1 (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    source_ips: String,
    /// Receiver threads (each a single-threaded runtime).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Attempts per connection before it counts as failed.
    #[arg(long, default_value_t = 3)]
    connect_attempts: u32,
    /// Give up waiting for connections after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// The server's process id, for precise CPU figures (default: found from the listening
    /// socket; /metrics only has whole CPU seconds).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Hard limit on the whole run; the process exits (code 3) when it is reached.
    /// Default: every phase's time plus 30 s.
    #[arg(long, value_parser = parse_duration)]
    deadline: Option<Duration>,
    /// Print the report as JSON on stdout (the human summary goes to stderr).
    #[arg(long)]
    json: bool,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Free text copied into the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Offer permessage-deflate in every WebSocket upgrade (a connection the server does not
    /// accept it on fails) and inflate compressed updates before reading them.
    #[arg(long)]
    deflate: bool,
}

impl CommonArgs {
    fn common(&self) -> anyhow::Result<Common> {
        let target = opts::parse_ws_url(&self.url)?;
        let mut c = Common::new(target);
        if let Some(m) = &self.metrics_url {
            c.metrics = opts::parse_http_url(m)?;
        }
        c.source_ips = opts::parse_source_ips(&self.source_ips)?;
        c.spread = (self.subscribe_urls.iter())
            .map(|u| opts::parse_ws_url(u))
            .collect::<anyhow::Result<_>>()?;
        let nodes = std::iter::once(&c.target).chain(&c.spread);
        if (nodes.map(|t| t.addr.is_ipv4())).any(|v4| c.source_ips.iter().any(|ip| ip.is_ipv4() != v4)) {
            anyhow::bail!(
                "--source-ips must be of the same address family as the server ({})",
                c.target.addr
            );
        }
        c.threads = self.threads.max(1);
        c.connect_concurrency = self.connect_concurrency.max(1);
        c.connect_attempts = self.connect_attempts.max(1);
        c.connect_timeout = self.connect_timeout;
        c.progress = !self.quiet;
        c.label = self.label.clone();
        c.deflate = self.deflate;
        if self.server_pid.is_some() {
            c.server_pid = self.server_pid;
        }
        Ok(c)
    }
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Subscriber connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: usize,
    /// Topics (named <topic-prefix>0 … <topic-prefix>T-1).
    #[arg(short = 't', long, default_value_t = 1)]
    topics: u32,
    /// Topics each connection subscribes to.
    #[arg(short = 'k', long, default_value_t = 1)]
    subs_per_conn: u32,
    /// Messages per second published (over all topics, round-robin).
    #[arg(short = 'r', long, default_value_t = 10.0)]
    rate: f64,
    /// Size of each message's `data` JSON.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Measurement window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Publishing before the window (not measured).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Longest wait after the window for messages in flight (ends early once all arrived).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    drain: Duration,
    #[arg(long, default_value = "bench.t")]
    topic_prefix: String,
    /// Publisher tick: everything due is sent as one batch per tick.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub_interval: Duration,
    /// Publish to this node instead of the --url one (cross-node runs in a cluster), e.g.
    /// http://127.0.0.1:8081 (loopback only).
    #[arg(long)]
    publish_url: Option<String>,
    /// Publish N messages one at a time, each once every subscriber has received the previous
    /// one (ignores --rate, --pub-interval and --warmup; --duration is an upper bound): the same
    /// server work in every run, for instruction counts.
    #[arg(long, value_name = "N")]
    lockstep: Option<u64>,
    /// Subscribe over Server-Sent Events: each subscriber opens `GET /sse?topics=<its topics>`
    /// on the --url's host and port (its path is not used) instead of a WebSocket.
    #[arg(long)]
    sse: bool,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: usize,
    #[arg(short = 't', long, default_value_t = 1)]
    topics: u32,
    #[arg(short = 'k', long, default_value_t = 1)]
    subs_per_conn: u32,
    /// How long to hold the connections once all are subscribed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "bench.idle")]
    topic_prefix: String,
}

#[derive(Args)]
struct ConnectArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: usize,
    /// Keep the connections open this long once all are up.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    duration: Duration,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Single,
    Batch,
    Both,
}

#[derive(Args)]
struct PublishArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, value_enum, default_value_t = ModeArg::Both)]
    mode: ModeArg,
    /// Messages per request in batch mode.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// HTTP connections publishing at once (each waits for its answer before the next).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(short = 't', long, default_value_t = 1)]
    topics: u32,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Measurement window (per mode).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "bench.pub")]
    topic_prefix: String,
}

#[derive(Args)]
struct PatternsArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Topics created before the measurement (the server's max_topics must allow them).
    #[arg(short = 't', long, default_value_t = 100_000)]
    topics: usize,
    /// Topics each pattern matches.
    #[arg(short = 'k', long, default_value_t = 10)]
    per_pattern: usize,
    /// Subscribe round trips measured (each followed by its unsubscribe).
    #[arg(long, default_value_t = 1000)]
    subscribes: usize,
    /// Messages per HTTP batch while creating the topics (the server's http.max_body_bytes
    /// must take a batch: about 40 bytes per message).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    #[arg(long, default_value = "bench.p")]
    topic_prefix: String,
}

#[derive(Args)]
struct TopicsArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    plan: topics::LoadArgs,
    /// Measurement window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Publishing before the window (not measured).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
}

#[derive(Args)]
struct ReconnectArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    plan: topics::LoadArgs,
    /// Publishing before every connection drops.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    before: Duration,
    /// Publishing after every connection is back.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    after: Duration,
    /// Longest wait for every connection to come back.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    recover_timeout: Duration,
}

#[derive(Args)]
struct BandwidthArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    run: bandwidth::Args,
}

/// Context of every error in the options (exit code 2).
const INVALID_OPTIONS: &str = "invalid options";

/// Exits the process if the run is still going at `deadline`.
fn watchdog(deadline: Duration) {
    std::thread::Builder::new()
        .name("deadline".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            eprintln!(
                "tickwire-loadtest: hard deadline of {:.0} s reached, exiting",
                deadline.as_secs_f64()
            );
            std::process::exit(3);
        })
        .expect("spawning the deadline thread");
}

fn emit<T: Serialize>(json: bool, value: &T, human: String) -> anyhow::Result<()> {
    if json {
        eprint!("{human}");
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{human}");
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let limit = sys::raise_nofile();
    let common_args = match &cli.command {
        Command::Fanout(a) => Some(&a.common),
        Command::Idle(a) => Some(&a.common),
        Command::Connect(a) => Some(&a.common),
        Command::Publish(a) => Some(&a.common),
        Command::Patterns(a) => Some(&a.common),
        Command::Topics(a) => Some(&a.common),
        Command::Reconnect(a) => Some(&a.common),
        Command::Bandwidth(a) => Some(&a.common),
        Command::Report(_) => None,
    };
    if let Some(c) = common_args {
        match limit {
            Ok(n) if !c.quiet && n < 4096 => eprintln!("note: open files limit is only {n}"),
            Ok(_) => {}
            Err(e) => eprintln!("warning: cannot raise the open files limit: {e}"),
        }
    }
    let extra = Duration::from_secs(30);
    match cli.command {
        Command::Fanout(a) => {
            let common = a.common.common().context(INVALID_OPTIONS)?;
            let mut cfg = fanout::FanoutConfig::new(common);
            cfg.connections = a.connections;
            cfg.topics = a.topics;
            cfg.subs_per_conn = a.subs_per_conn;
            cfg.rate = a.rate;
            cfg.payload_bytes = a.payload_bytes;
            cfg.duration = a.duration;
            cfg.warmup = a.warmup;
            cfg.drain = a.drain;
            cfg.topic_prefix = a.topic_prefix;
            cfg.pub_interval = a.pub_interval;
            cfg.lockstep = a.lockstep;
            cfg.sse = a.sse;
            if let Some(url) = &a.publish_url {
                let node = opts::parse_http_url(url).context(INVALID_OPTIONS)?;
                cfg.publish_to = Some(opts::HttpEndpoint {
                    path: "/api/v1/publish".into(),
                    ..node
                });
            }
            let budget = cfg.common.connect_timeout + cfg.warmup + cfg.duration + cfg.drain + extra;
            watchdog(a.common.deadline.unwrap_or(budget));
            let r = fanout::run(&cfg)?;
            emit(a.common.json, &r, report::fanout(&r))
        }
        Command::Idle(a) => {
            let common = a.common.common().context(INVALID_OPTIONS)?;
            let mut cfg = idle::IdleConfig::new(common);
            cfg.connections = a.connections;
            cfg.topics = a.topics;
            cfg.subs_per_conn = a.subs_per_conn;
            cfg.hold = a.duration;
            cfg.topic_prefix = a.topic_prefix;
            watchdog(
                a.common
                    .deadline
                    .unwrap_or(cfg.common.connect_timeout + cfg.hold + extra),
            );
            let r = idle::run(&cfg)?;
            emit(a.common.json, &r, report::idle(&r))
        }
        Command::Connect(a) => {
            let common = a.common.common().context(INVALID_OPTIONS)?;
            let cfg = connect::ConnectConfig {
                common,
                connections: a.connections,
                hold: a.duration,
            };
            watchdog(
                a.common
                    .deadline
                    .unwrap_or(cfg.common.connect_timeout + cfg.hold + extra),
            );
            let r = connect::run(&cfg)?;
            emit(a.common.json, &r, report::connect(&r))
        }
        Command::Publish(a) => {
            let common = a.common.common().context(INVALID_OPTIONS)?;
            let modes = match a.mode {
                ModeArg::Single => vec![publish::Mode::Single],
                ModeArg::Batch => vec![publish::Mode::Batch],
                ModeArg::Both => vec![publish::Mode::Single, publish::Mode::Batch],
            };
            let per_mode = a.warmup + a.duration;
            let cfg = publish::PublishConfig {
                common,
                batch_size: a.batch_size,
                concurrency: a.concurrency,
                topics: a.topics,
                payload_bytes: a.payload_bytes,
                warmup: a.warmup,
                duration: a.duration,
                topic_prefix: a.topic_prefix,
                modes,
            };
            watchdog(
                a.common
                    .deadline
                    .unwrap_or(per_mode * cfg.modes.len() as u32 + extra),
            );
            let r = publish::run(&cfg)?;
            emit(a.common.json, &r, report::publish(&r))
        }
        Command::Patterns(a) => {
            let common = a.common.common().context(INVALID_OPTIONS)?;
            let cfg = patterns::PatternsConfig {
                common,
                topics: a.topics,
                per_pattern: a.per_pattern,
                subscribes: a.subscribes,
                topic_prefix: a.topic_prefix,
                batch: a.batch,
            };
            watchdog(a.common.deadline.unwrap_or(Duration::from_secs(600)));
            let r = patterns::run(&cfg)?;
            emit(a.common.json, &r, report::patterns(&r))
        }
        Command::Topics(a) => {
            let common = a.common.common().context(INVALID_OPTIONS)?;
            let mut cfg = a.plan.config(common);
            cfg.warmup = a.warmup;
            cfg.duration = a.duration;
            let budget = Duration::from_secs(120) + cfg.warmup + cfg.duration + cfg.drain + extra;
            watchdog(a.common.deadline.unwrap_or(budget + cfg.common.connect_timeout));
            let r = topics::run(&cfg)?;
            emit(a.common.json, &r, report::topics(&r))
        }
        Command::Reconnect(a) => {
            let common = a.common.common().context(INVALID_OPTIONS)?;
            let mut load = a.plan.config(common);
            load.warmup = a.before;
            load.duration = a.after;
            let cfg = reconnect::ReconnectConfig {
                load,
                recover_timeout: a.recover_timeout,
            };
            let l = &cfg.load;
            let budget = Duration::from_secs(60) + l.common.connect_timeout + l.warmup + cfg.recover_timeout;
            watchdog(a.common.deadline.unwrap_or(budget + l.duration + l.drain + extra));
            let r = reconnect::run(&cfg)?;
            emit(a.common.json, &r, report::reconnect(&r))
        }
        Command::Bandwidth(a) => {
            let common = a.common.common().context(INVALID_OPTIONS)?;
            let cfg = a.run.config(common);
            let budget = cfg.common.connect_timeout + cfg.warmup + cfg.duration + cfg.drain() + extra;
            watchdog(a.common.deadline.unwrap_or(budget));
            let r = bandwidth::run(&cfg)?;
            emit(a.common.json, &r, bandwidth::summary::text(&r))?;
            // Printed first, so a failed run still leaves its figures.
            match r.failures.is_empty() {
                true => Ok(()),
                false => Err(anyhow::anyhow!("the run failed: {}", r.failures.join("; "))),
            }
        }
        Command::Report(a) => bench::run(&a).context("building the benchmark report"),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    sys::install_ctrl_c();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tickwire-loadtest: {e:#}");
            let bad_options = e.chain().any(|c| c.to_string() == INVALID_OPTIONS);
            ExitCode::from(if bad_options { 2 } else { 1 })
        }
    }
}
