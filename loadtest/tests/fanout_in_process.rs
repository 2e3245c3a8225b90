//! The fan-out, patterns, topics and reconnect scenarios, as library calls, against a tickwire
//! server running in this process.

use std::time::{Duration, Instant};

use tickwire_loadtest::opts::parse_ws_url;
use tickwire_loadtest::scenario::fanout::{self, FanoutConfig};
use tickwire_loadtest::scenario::patterns::{self, PatternsConfig};
use tickwire_loadtest::scenario::reconnect::{self, ReconnectConfig};
use tickwire_loadtest::scenario::topics::{self, TopicsConfig};
use tickwire_loadtest::scenario::Common;

/// A tickwire server on a free loopback port of `rt`, and what stops it.
struct InProcess {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start_server(rt: &tokio::runtime::Runtime) -> anyhow::Result<InProcess> {
    start_server_with(rt, "")
}

/// [`start_server`] with `extra` settings (TOML) after the feed is disabled.
fn start_server_with(rt: &tokio::runtime::Runtime, extra: &str) -> anyhow::Result<InProcess> {
    let any_port: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let listener = rt.block_on(async { tickwire::server::bind(any_port) })?;
    let addr = listener.local_addr()?;
    let settings = tickwire::settings::Settings::from_toml(&format!("[feed]\nenabled = false\n{extra}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        Ok(tickwire::server::run(listener, settings, shutdown).await?)
    });
    Ok(InProcess { addr, stop, server })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

#[test]
fn fanout_delivers_every_message_to_every_subscriber() -> anyhow::Result<()> {
    let started = Instant::now();
    let rt = runtime()?;
    let InProcess { addr, stop, server } = start_server(&rt)?;

    let mut cfg = FanoutConfig::new(Common::new(parse_ws_url(&format!("ws://{addr}/ws"))?));
    cfg.connections = 50;
    // Two topics, every connection subscribed to both: each message reaches all 50.
    cfg.topics = 2;
    cfg.subs_per_conn = 2;
    cfg.rate = 200.0;
    cfg.warmup = Duration::from_millis(300);
    cfg.duration = Duration::from_secs(2);
    cfg.drain = Duration::from_secs(3);
    cfg.topic_prefix = "it.fanout.t".into();
    let r = fanout::run(&cfg)?;

    assert_eq!(r.connect.ready, 50, "{:?}", r.errors);
    assert_eq!(r.closed_early, 0);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let published = r.publish.confirmed;
    assert_eq!(published, r.publish.sent, "every publish acknowledged");
    assert!(published >= 300, "published only {published}");
    let run_total: u64 = (r.topics_final_seq.iter().zip(&r.topics_base_seq))
        .map(|(f, b)| f - b)
        .sum();
    assert_eq!(run_total, published, "server seqs account for every publish");
    // Zero loss, nothing conflated, and deliveries == published × subscribers.
    assert_eq!(r.gaps.lost, 0, "{:?}", r.gaps);
    assert_eq!(r.gaps.conflated, 0, "{:?}", r.gaps);
    assert_eq!(r.gaps.out_of_order, 0);
    assert_eq!(r.gaps.expected, published * 50);
    assert_eq!(r.gaps.received, published * 50);
    assert_eq!(r.deliveries.updates_received, published * 50);
    assert_eq!(r.receive.foreign + r.receive.unstamped + r.receive.unparsed, 0);
    // The window's share: every message stamped in it arrived, with a latency each.
    let d = &r.deliveries;
    assert_eq!(d.expected_in_window, r.publish.sent_in_window * 50);
    assert_eq!(d.delivered_in_window, d.expected_in_window);
    assert_eq!(r.latency_ms.expect("latencies").count, d.delivered_in_window);
    assert!(d.drained_early);

    stop.send(()).ok();
    rt.block_on(server)??;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn fanout_over_sse_delivers_every_message_to_every_subscriber() -> anyhow::Result<()> {
    let rt = runtime()?;
    let InProcess { addr, stop, server } = start_server(&rt)?;

    let mut cfg = FanoutConfig::new(Common::new(parse_ws_url(&format!("ws://{addr}/ws"))?));
    cfg.sse = true;
    cfg.connections = 20;
    cfg.topics = 2;
    cfg.subs_per_conn = 1;
    cfg.rate = 100.0;
    cfg.warmup = Duration::from_millis(200);
    cfg.duration = Duration::from_secs(1);
    cfg.drain = Duration::from_secs(3);
    cfg.topic_prefix = "it.sse.t".into();
    let r = fanout::run(&cfg)?;

    assert_eq!(r.params.transport, "sse");
    assert_eq!(r.connect.ready, 20, "{:?}", r.errors);
    assert_eq!(r.closed_early, 0);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let published = r.publish.confirmed;
    assert_eq!(published, r.publish.sent, "every publish acknowledged");
    assert!(published >= 100, "published only {published}");
    // Two topics, ten streams each: every message reaches 10 of them, none lost.
    assert_eq!(r.gaps.lost, 0, "{:?}", r.gaps);
    assert_eq!(r.gaps.conflated, 0, "{:?}", r.gaps);
    assert_eq!(r.gaps.out_of_order, 0);
    assert_eq!(r.gaps.received, published * 10);
    assert_eq!(r.deliveries.updates_received, published * 10);
    assert_eq!(r.receive.foreign + r.receive.unstamped + r.receive.unparsed, 0);
    let d = &r.deliveries;
    assert_eq!(d.delivered_in_window, d.expected_in_window);
    assert_eq!(r.latency_ms.expect("latencies").count, d.delivered_in_window);

    stop.send(()).ok();
    rt.block_on(server)??;
    Ok(())
}

#[test]
fn lockstep_publishes_a_fixed_count_and_ends_the_window_when_done() -> anyhow::Result<()> {
    let rt = runtime()?;
    let InProcess { addr, stop, server } = start_server(&rt)?;

    let mut cfg = FanoutConfig::new(Common::new(parse_ws_url(&format!("ws://{addr}/ws"))?));
    cfg.connections = 20;
    // Two topics, one each: every message reaches 10 subscribers.
    cfg.topics = 2;
    cfg.subs_per_conn = 1;
    cfg.lockstep = Some(40);
    cfg.duration = Duration::from_secs(30); // an upper bound only
    cfg.drain = Duration::from_secs(3);
    cfg.topic_prefix = "it.lockstep.t".into();
    let r = fanout::run(&cfg)?;

    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        (r.publish.sent, r.publish.requests, r.publish.confirmed),
        (40, 40, 40)
    );
    assert_eq!(r.publish.sent_in_window, 40, "no warmup in lockstep");
    assert_eq!(r.deliveries.updates_received, 400);
    assert_eq!(r.deliveries.delivered_in_window, 400);
    assert_eq!((r.gaps.lost, r.gaps.conflated), (0, 0));
    assert!(
        r.params.duration_s < 20.0,
        "the window ends with the publications: {}",
        r.params.duration_s
    );

    stop.send(()).ok();
    rt.block_on(server)??;
    Ok(())
}

#[test]
fn fanout_with_deflate_inflates_every_update_without_loss() -> anyhow::Result<()> {
    let rt = runtime()?;
    let InProcess { addr, stop, server } = start_server(&rt)?;
    let mut common = Common::new(parse_ws_url(&format!("ws://{addr}/ws"))?);
    common.deflate = true;

    // Paced: 1,000-byte payloads (over compression.min_bytes) to 30 subscribers.
    let mut cfg = FanoutConfig::new(common.clone());
    cfg.connections = 30;
    cfg.rate = 200.0;
    cfg.payload_bytes = 1000;
    cfg.warmup = Duration::from_millis(300);
    cfg.duration = Duration::from_millis(1500);
    cfg.drain = Duration::from_secs(3);
    cfg.topic_prefix = "it.deflate.t".into();
    let r = fanout::run(&cfg)?;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.params.deflate);
    assert_eq!((r.connect.ready, r.closed_early), (30, 0));
    let published = r.publish.confirmed;
    assert!(published >= 200, "published only {published}");
    assert_eq!(published, r.publish.sent);
    assert_eq!((r.gaps.lost, r.gaps.conflated), (0, 0), "{:?}", r.gaps);
    assert_eq!(r.deliveries.updates_received, published * 30);
    // Every update came compressed and was read after inflating (stamp, topic, seq).
    assert_eq!(r.receive.compressed, published * 30);
    assert_eq!(r.receive.foreign + r.receive.unstamped + r.receive.unparsed, 0);
    let d = &r.deliveries;
    assert_eq!(d.delivered_in_window, d.expected_in_window);
    assert!(d.drained_early);
    // The socket carried less than the updates' plain size (each > 1,000 bytes).
    assert!(
        r.receive.bytes < published * 30 * 1000 / 2,
        "{} bytes",
        r.receive.bytes
    );

    // Lockstep, as callgrind runs it: each publication waits for the compressed updates of
    // the one before, so the count must include them.
    let mut cfg = FanoutConfig::new(common);
    cfg.connections = 20;
    cfg.payload_bytes = 1000;
    cfg.lockstep = Some(40);
    cfg.duration = Duration::from_secs(30); // an upper bound only
    cfg.topic_prefix = "it.deflate.lockstep.t".into();
    let r = fanout::run(&cfg)?;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!((r.publish.sent, r.publish.confirmed), (40, 40));
    assert_eq!(r.deliveries.updates_received, 800);
    assert_eq!(r.receive.compressed, 800);
    assert!(r.params.duration_s < 20.0, "{}", r.params.duration_s);

    stop.send(()).ok();
    rt.block_on(server)??;
    Ok(())
}

#[test]
fn deflate_fails_connections_the_server_does_not_compress() -> anyhow::Result<()> {
    let rt = runtime()?;
    let InProcess { addr, stop, server } = start_server_with(&rt, "[compression]\nenabled = false")?;
    let mut common = Common::new(parse_ws_url(&format!("ws://{addr}/ws"))?);
    common.deflate = true;
    common.connect_attempts = 1;
    let mut cfg = FanoutConfig::new(common);
    cfg.connections = 3;
    cfg.topic_prefix = "it.deflate.off.t".into();
    let e = fanout::run(&cfg)
        .expect_err("no connection may be ready")
        .to_string();
    assert!(e.contains("did not accept permessage-deflate"), "{e}");
    stop.send(()).ok();
    rt.block_on(server)??;
    Ok(())
}

#[test]
fn patterns_creates_the_topics_and_times_every_subscribe() -> anyhow::Result<()> {
    let rt = runtime()?;
    let limits = "[server]\nrequests_per_second = 100000.0\nrequest_burst = 100000";
    let InProcess { addr, stop, server } = start_server_with(&rt, limits)?;
    let cfg = PatternsConfig {
        common: Common::new(parse_ws_url(&format!("ws://{addr}/ws"))?),
        topics: 2_000,
        per_pattern: 10,
        subscribes: 50,
        topic_prefix: "it.patterns.".into(),
        batch: 500,
    };
    // The scenario checks each reply itself: `subscribed` with exactly `per_pattern` positions.
    let r = patterns::run(&cfg)?;
    assert_eq!((r.topics, r.per_pattern, r.subscribes), (2_000, 10, 50));
    let latency = r.subscribe_ms.expect("every subscribe timed");
    assert_eq!(latency.count, 50);
    let (status, body) = tickwire_loadtest::server::get(&cfg.common.metrics, "/metrics")?;
    assert_eq!(status, 200);
    let topics = String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("tickwire_topics ")?.trim().parse::<f64>().ok());
    assert_eq!(topics, Some(2_000.0), "the topics were created");
    stop.send(()).ok();
    rt.block_on(server)??;
    Ok(())
}

/// 200 topics in groups of 10; 40 connections with 5 subscriptions each, one a pattern.
fn small_topics(addr: std::net::SocketAddr, prefix: &str) -> anyhow::Result<TopicsConfig> {
    let mut cfg = TopicsConfig::new(Common::new(parse_ws_url(&format!("ws://{addr}/ws"))?));
    cfg.connections = 40;
    cfg.topics = 200;
    cfg.subs_per_conn = 5;
    cfg.patterns_per_conn = 1;
    cfg.group = 10;
    cfg.rate = 400.0;
    cfg.warmup = Duration::from_millis(300);
    cfg.duration = Duration::from_secs(2);
    cfg.drain = Duration::from_secs(3);
    cfg.topic_prefix = prefix.into();
    cfg.batch = 50;
    Ok(cfg)
}

#[test]
fn topics_delivers_every_message_and_measures_memory() -> anyhow::Result<()> {
    let rt = runtime()?;
    let InProcess { addr, stop, server } = start_server(&rt)?;
    let cfg = small_topics(addr, "it.topics.")?;
    let r = topics::run(&cfg)?;

    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!((r.connect.ready, r.closed_early), (40, 0));
    // 4 exact names + one group of 10 per connection, less the overlaps the plan computes.
    let streams = cfg.plan().subscribers_per_topic(40).iter().sum::<u64>();
    assert_eq!(r.memory.streams, streams);
    assert!(streams > 40 * 10, "the patterns match: {streams}");
    assert_eq!(r.memory.subscriptions, 40 * 5);
    assert_eq!(
        r.receive.snapshots, streams,
        "one snapshot per stream: every topic has a value"
    );
    assert_eq!(r.publish.confirmed, r.publish.sent);
    assert!(r.publish.sent >= 800, "published only {}", r.publish.sent);
    assert_eq!(
        (r.gaps.lost, r.gaps.conflated, r.gaps.out_of_order),
        (0, 0, 0),
        "{:?}",
        r.gaps
    );
    assert_eq!(r.gaps.received, r.gaps.expected);
    assert!(r.gaps.expected > 0);
    assert_eq!(r.receive.foreign + r.receive.unstamped + r.receive.unparsed, 0);
    assert_eq!(r.delivered_in_window, r.expected_in_window);
    assert_eq!(r.latency_ms.expect("latencies").count, r.delivered_in_window);
    // The memory figures are there (their size is for the release benchmark).
    let m = &r.memory;
    assert!(m.rss_empty.is_some() && m.rss_topics.is_some() && m.rss_subscribed.is_some());
    assert!(m.per_topic.is_some() && m.per_subscription.is_some(), "{m:?}");

    stop.send(()).ok();
    rt.block_on(server)??;
    Ok(())
}

#[test]
fn reconnect_recovers_every_client_without_gaps_or_duplicates() -> anyhow::Result<()> {
    let rt = runtime()?;
    let InProcess { addr, stop, server } = start_server(&rt)?;
    let mut load = small_topics(addr, "it.reconnect.")?;
    // Fast enough that every connection's topics get publications while it is away.
    load.rate = 2000.0;
    load.warmup = Duration::from_millis(500); // publishing before the drop
    load.duration = Duration::from_millis(500); // and after everyone is back
    let cfg = ReconnectConfig {
        load,
        recover_timeout: Duration::from_secs(20),
    };
    let r = reconnect::run(&cfg)?;

    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let s = &r.storm;
    assert!(!s.timed_out);
    assert_eq!(
        (s.connections, s.recovered, s.reset, s.failed),
        (40, 40, 0, 0),
        "{s:?}"
    );
    let streams = cfg.load.plan().subscribers_per_topic(40).iter().sum::<u64>();
    assert_eq!(
        s.topics_recovered, streams,
        "every stream named in since recovered"
    );
    assert_eq!(s.topics_reset, 0);
    assert!(
        s.caught_up > 0,
        "the drop missed publications and recovery sent them: {s:?}"
    );
    assert_eq!(r.rehandshake_ms.expect("reconnect handshakes").count, 40);
    // Recovery filled exactly what the drop missed: no gap, no duplicate, nothing lost.
    assert!(r.publish.sent >= 300, "published only {}", r.publish.sent);
    assert_eq!(r.publish.confirmed, r.publish.sent);
    assert_eq!(
        (r.gaps.lost, r.gaps.conflated, r.gaps.out_of_order),
        (0, 0, 0),
        "{:?}",
        r.gaps
    );
    assert_eq!(r.gaps.received, r.gaps.expected);
    assert_eq!(r.closed_early, 0);
    // The server was watched during the storm.
    assert!(r.server.healthz_samples >= 1 && r.server.healthz_max_ms.is_some());
    assert!(r.server.listen_drops.is_some());

    stop.send(()).ok();
    rt.block_on(server)??;
    Ok(())
}
