//! The bandwidth scenario, as a library call, against a tickwire server running in this
//! process: every shape plain and with deltas, book and doc also compressed (permessage-deflate)
//! with and without deltas, and under a max rate.

use std::time::Duration;

use tickwire_loadtest::opts::parse_ws_url;
use tickwire_loadtest::scenario::bandwidth::shapes::Shape;
use tickwire_loadtest::scenario::bandwidth::{self, BandwidthConfig, BandwidthReport};
use tickwire_loadtest::scenario::Common;

/// A tickwire server on a free loopback port of `rt`, and what stops it.
struct InProcess {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    fn start(rt: &tokio::runtime::Runtime) -> anyhow::Result<InProcess> {
        let any_port: std::net::SocketAddr = "127.0.0.1:0".parse()?;
        let listener = rt.block_on(async { tickwire::server::bind(any_port) })?;
        let addr = listener.local_addr()?;
        let settings = tickwire::settings::Settings::from_toml("[feed]\nenabled = false\n")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            Ok(tickwire::server::run(listener, settings, shutdown).await?)
        });
        Ok(InProcess { addr, stop, server })
    }

    fn stop(self, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        self.stop.send(()).ok();
        rt.block_on(self.server)?
    }

    /// A short run of `n` subscribers on `shape` at `rate` msg/s (topic `it.bw.<name>.0`).
    fn config(&self, name: &str, shape: Shape, n: usize, rate: f64) -> anyhow::Result<BandwidthConfig> {
        let mut cfg = BandwidthConfig::new(
            Common::new(parse_ws_url(&format!("ws://{}/ws", self.addr))?),
            shape,
        );
        cfg.connections = n;
        cfg.rate = rate;
        cfg.warmup = Duration::from_millis(300);
        cfg.duration = Duration::from_millis(1500);
        cfg.drain = Duration::from_secs(3);
        cfg.topic_prefix = Some(format!("it.bw.{name}."));
        Ok(cfg)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// What every run must show: all connected, every update of every publication arrived and
/// rebuilt to exactly the published data, the last one everywhere.
fn assert_complete(r: &BandwidthReport) {
    let what = format!("{} {}", r.params.shape.name(), r.params.mode);
    assert!(r.errors.is_empty(), "{what}: {:?}", r.errors);
    assert!(r.failures.is_empty(), "{what}: {:?}", r.failures);
    assert_eq!(r.mismatches, 0, "{what}: {:?}", r.mismatch_kinds);
    let n = r.params.connections as u64;
    assert_eq!((r.connect.ready as u64, r.closed_early), (n, 0), "{what}");
    assert_eq!(r.publish.confirmed, r.publish.sent, "{what}");
    assert!(r.publish.sent >= 20, "{what}: published only {}", r.publish.sent);
    assert_eq!(r.final_seq - r.base_seq, r.publish.sent, "{what}");
    let d = &r.deliveries;
    assert_eq!(d.updates_received, r.publish.sent * n, "{what}: {:?}", r.gaps);
    assert_eq!(
        (d.per_subscriber_min, d.per_subscriber_max),
        (r.publish.sent, r.publish.sent)
    );
    assert_eq!((d.newest_last, d.newest_not_last), (n, 0), "{what}");
    assert_eq!((r.gaps.lost, r.gaps.conflated), (0, 0), "{what}");
    assert_eq!(
        r.latency_ms.expect("latencies").count,
        d.delivered_in_window,
        "{what}"
    );
    assert!(d.delivered_in_window > 0, "{what}");
    // The wire counts every update frame; the socket carried them and a little more.
    assert!(r.bytes.socket_bytes > r.bytes.wire_bytes, "{what}: {:?}", r.bytes);
    assert_eq!(r.bytes.window.updates, d.delivered_in_window, "{what}");
}

/// The runs of one shape on one server: plain, with deltas and, with `compressed`, also
/// `deflate` and `delta+deflate`, in that order.
fn modes(shape: Shape, n: usize, rate: f64, compressed: bool) -> anyhow::Result<Vec<BandwidthReport>> {
    let rt = runtime()?;
    let server = InProcess::start(&rt)?;
    let name = shape.name();
    let modes = [(false, false), (true, false), (false, true), (true, true)];
    let mut runs = Vec::new();
    for (delta, deflate) in modes.into_iter().take(if compressed { 4 } else { 2 }) {
        let prefix = format!("{name}.{}{}", if delta { "d" } else { "p" }, u8::from(deflate));
        let mut cfg = server.config(&prefix, shape, n, rate)?;
        cfg.delta = delta;
        cfg.common.deflate = deflate;
        runs.push(bandwidth::run(&cfg)?);
    }
    server.stop(&rt)?;
    for r in &runs {
        assert_complete(r);
    }
    let (plain, delta) = (&runs[0], &runs[1]);
    // Without deltas every update is whole: what came is what a full frame is.
    assert_eq!(plain.params.mode, "plain");
    assert_eq!(plain.bytes.delta_frames, 0);
    assert_eq!(plain.bytes.wire_bytes, plain.bytes.full_wire_bytes);
    assert_eq!(plain.server.delta_frames, Some(0.0));
    for r in [plain, delta] {
        assert_eq!(r.bytes.compressed_frames, 0, "{}", r.params.mode);
        assert_eq!(r.receive.compressed, 0, "{}", r.params.mode);
        assert_eq!(r.server.compressed_frames, Some(0.0), "{}", r.params.mode);
    }
    Ok(runs)
}

/// Book and doc with permessage-deflate: every update whole is compressed, the client inflates
/// and checks each one, counts the same compressed frames and savings as the server, and pays
/// at least `at_least` times fewer bytes than plain; with deltas too, fewer than with deltas
/// alone (a subscription's first update, whole, comes compressed).
fn assert_compression_pays(runs: &[BandwidthReport], at_least: f64) {
    let [plain, delta, deflate, both] = runs else {
        panic!("four runs expected, got {}", runs.len());
    };
    assert_eq!(
        (deflate.params.mode, both.params.mode),
        ("deflate", "delta+deflate")
    );
    let n = plain.params.connections as u64;
    for r in [deflate, both] {
        let (b, s, what) = (&r.bytes, &r.server, r.params.mode);
        assert!(b.compressed_frames >= n, "{what}: {b:?}");
        assert_eq!(s.compressed_frames, Some(b.compressed_frames as f64), "{what}");
        // Nothing else came compressed: no reply, no snapshot.
        assert_eq!(r.receive.compressed, b.compressed_frames, "{what}");
        assert_eq!(
            s.bytes_saved_deflate,
            Some(b.deflate_saved_bytes as f64),
            "{what}"
        );
        let saved = s.bytes_saved_delta.unwrap_or(0.0) + s.bytes_saved_deflate.unwrap_or(0.0);
        assert_eq!(
            saved, b.saved_bytes as f64,
            "{what}: full − wire is what both saved"
        );
        let (pd, dd) = (plain.bytes.data_per_delivery, b.data_per_delivery);
        assert!((pd - dd).abs() < pd * 0.05, "{what}: data {pd} vs {dd}");
        assert!(
            b.wire_per_delivery < plain.bytes.wire_per_delivery,
            "{what}: {b:?}"
        );
    }
    let b = &deflate.bytes;
    assert_eq!(b.compressed_frames, deflate.deliveries.updates_received);
    assert_eq!((b.delta_frames, deflate.server.bytes_saved_delta), (0, Some(0.0)));
    assert_eq!(b.deflate_saved_bytes, b.saved_bytes);
    assert!(
        b.wire_per_delivery * at_least < plain.bytes.wire_per_delivery,
        "deflate: {:.0} B vs {:.0} B plain",
        b.wire_per_delivery,
        plain.bytes.wire_per_delivery
    );
    assert!(b.window.wire_per_delivery * at_least < plain.bytes.window.wire_per_delivery);
    let b = &both.bytes;
    assert_eq!(b.delta_frames, both.deliveries.updates_received - n);
    assert!(
        b.wire_per_delivery < delta.bytes.wire_per_delivery,
        "delta+deflate: {:.0} B vs {:.0} B with deltas alone",
        b.wire_per_delivery,
        delta.bytes.wire_per_delivery
    );
}

/// Book and doc: every update after the first is a delta (each subscriber got the seq before
/// it), far smaller than the data, and the server's metrics count the same frames and bytes.
fn assert_deltas_pay(shape: Shape, plain: &BandwidthReport, delta: &BandwidthReport, at_least: f64) {
    let n = delta.params.connections as u64;
    let b = &delta.bytes;
    assert_eq!(b.delta_frames, delta.deliveries.updates_received - n, "{shape:?}");
    assert_eq!(
        delta.server.delta_frames,
        Some(b.delta_frames as f64),
        "{shape:?}"
    );
    // The full-frame size is computed from the rebuilt data: the server's count of the bytes
    // the deltas replaced must be the same.
    assert_eq!(
        delta.server.bytes_saved_delta,
        Some(b.saved_bytes as f64),
        "{shape:?}"
    );
    assert!(
        b.wire_per_delivery * at_least < plain.bytes.wire_per_delivery,
        "{shape:?}: {:.0} B with deltas vs {:.0} B plain",
        b.wire_per_delivery,
        plain.bytes.wire_per_delivery
    );
    assert!(b.full_over_wire > at_least, "{shape:?}: {b:?}");
    // In the window every update is a delta (the first, whole, went out in the warmup): the
    // steady state saves more than the whole run.
    assert!(b.window.full_over_wire > b.full_over_wire, "{shape:?}: {b:?}");
    assert!(b.window.wire_per_delivery * at_least < plain.bytes.window.wire_per_delivery);
    // The same data either way: only the frames differ.
    let (pd, dd) = (plain.bytes.data_per_delivery, b.data_per_delivery);
    assert!((pd - dd).abs() < pd * 0.05, "{shape:?}: data {pd} vs {dd}");
    assert!((plain.bytes.full_per_delivery - b.full_per_delivery).abs() < 0.05 * pd);
}

#[test]
fn book_deltas_and_compression_rebuild_exactly_and_save_bytes() -> anyhow::Result<()> {
    let runs = modes(Shape::Book, 20, 40.0, true)?;
    let (plain, delta) = (&runs[0], &runs[1]);
    assert!((2_900.0..3_600.0).contains(&plain.bytes.data_per_delivery));
    assert_deltas_pay(Shape::Book, plain, delta, 5.0);
    assert_compression_pays(&runs, 2.0);
    Ok(())
}

#[test]
fn doc_deltas_and_compression_rebuild_exactly_and_save_bytes() -> anyhow::Result<()> {
    let runs = modes(Shape::Doc, 20, 40.0, true)?;
    let (plain, delta) = (&runs[0], &runs[1]);
    assert!((4_500.0..5_600.0).contains(&plain.bytes.data_per_delivery));
    assert_deltas_pay(Shape::Doc, plain, delta, 10.0);
    assert_compression_pays(&runs, 2.0);
    Ok(())
}

#[test]
fn tick_is_too_small_for_deltas() -> anyhow::Result<()> {
    let runs = modes(Shape::Tick, 20, 100.0, false)?;
    let (plain, delta) = (&runs[0], &runs[1]);
    // ~90 B of data is under the server's delta.min_bytes (128): always whole.
    assert!(plain.bytes.data_per_delivery < 128.0);
    assert_eq!(delta.bytes.delta_frames, 0);
    assert_eq!(delta.bytes.wire_bytes, delta.bytes.full_wire_bytes);
    // The two runs publish for the same time, but not always the same number of times on a
    // busy machine, and a longer run has longer seqs and timestamps in its frames: close, not
    // equal (172.3966 against 172.3933 B was seen).
    let (a, b) = (delta.bytes.wire_per_delivery, plain.bytes.wire_per_delivery);
    assert!((a - b).abs() <= 0.01 * b, "{a} against {b}");
    Ok(())
}

#[test]
fn max_rate_bounds_each_second_and_ends_on_the_newest() -> anyhow::Result<()> {
    let rt = runtime()?;
    let server = InProcess::start(&rt)?;
    let mut runs = Vec::new();
    for (shape, delta) in [(Shape::Tick, false), (Shape::Book, true)] {
        let mut cfg = server.config(&format!("{}.rate", shape.name()), shape, 20, 100.0)?;
        cfg.max_rate = Some(2.0);
        cfg.delta = delta;
        cfg.duration = Duration::from_secs(2);
        runs.push(bandwidth::run(&cfg)?);
    }
    server.stop(&rt)?;
    for r in &runs {
        let what = format!("{} {}", r.params.shape.name(), r.params.mode);
        assert!(r.failures.is_empty(), "{what}: {:?}", r.failures);
        assert_eq!(r.mismatches, 0, "{what}: {:?}", r.mismatch_kinds);
        let m = r.max_rate.as_ref().expect("max-rate figures");
        assert_eq!((m.bound, m.over_bound), (3.0, 0), "{what}");
        assert!((2..=3).contains(&m.max_in_1s), "{what}: {m:?}");
        let d = &r.deliveries;
        assert_eq!((d.newest_last, d.newest_not_last), (20, 0), "{what}");
        // ~2.3 s of publishing at 100/s, at most 2 a second (and the first at once) arrive.
        assert!(r.publish.sent >= 150, "{what}: {}", r.publish.sent);
        assert!(d.per_subscriber_max <= 8, "{what}: {d:?}");
        assert!(d.per_subscriber_min >= 4, "{what}: {d:?}");
        assert!(r.gaps.conflated > 0 && r.gaps.lost == 0, "{what}: {:?}", r.gaps);
    }
    // Each update after skipped ones comes whole: a delta needs the seq before it.
    assert_eq!(runs[1].bytes.delta_frames, 0);
    Ok(())
}
