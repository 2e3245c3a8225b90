//! `tickwire-loadtest report`: turns a directory of saved results (our `--json` reports and
//! peerbench's JSON lines) into the generated section of `docs/benchmarks.md` and the
//! latency-vs-throughput chart.
//!
//! The directory is what `loadtest/run-benchmarks.sh` writes: one `<label>.json` per run of this
//! tool, `<label>.peerbench.json` per peerbench run (its last output line), `machine.json`
//! and `commands.txt`. The page section lives between [`BEGIN`] and [`END`]; everything
//! outside the markers is left alone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::report::thousands;

pub const BEGIN: &str = "<!-- loadtest:results:begin -->";
pub const END: &str = "<!-- loadtest:results:end -->";

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Directory with the saved results.
    #[arg(long)]
    pub dir: PathBuf,
    /// Page whose generated section (between the markers) is rewritten.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub doc: PathBuf,
    /// Where to write the chart.
    #[arg(long, default_value = "docs/latency-vs-throughput.svg")]
    pub svg: PathBuf,
}

/// One fan-out measurement, from either tool.
#[derive(Debug, Clone, PartialEq)]
pub struct FanoutRow {
    pub label: String,
    pub tool: Tool,
    pub n: u64,
    pub rate: f64,
    pub topics: u64,
    pub deliveries_per_s: f64,
    pub delivered: u64,
    pub expected: u64,
    /// Whole-run sequence accounting (ours only).
    pub conflated: Option<u64>,
    pub lost: Option<u64>,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub server_cpu: Option<f64>,
    pub client_cpu: Option<f64>,
    pub machine_busy: Option<f64>,
    pub ncpu: Option<f64>,
    pub rss_per_conn: Option<f64>,
    pub connect_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tool {
    Loadtest,
    Peerbench,
}

impl FanoutRow {
    /// CPU used by everything else on the machine, % of one core.
    pub fn background_cpu(&self) -> Option<f64> {
        // machine_busy is % of all cores; the others are % of one core.
        Some((self.machine_busy? * self.ncpu? - self.server_cpu? - self.client_cpu?).max(0.0))
    }
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn s(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// Reads one of our fan-out reports.
pub fn ours_fanout(v: &Value) -> Option<FanoutRow> {
    if v.get("scenario")?.as_str()? != "fanout" {
        return None;
    }
    let lat = |k: &str| f(v, &["latency_ms", k]).unwrap_or(f64::NAN);
    Some(FanoutRow {
        label: s(v, "label"),
        tool: Tool::Loadtest,
        n: f(v, &["params", "connections"])? as u64,
        rate: f(v, &["params", "rate"])?,
        topics: f(v, &["params", "topics"])? as u64,
        deliveries_per_s: f(v, &["deliveries", "deliveries_per_s"])?,
        delivered: f(v, &["deliveries", "delivered_in_window"])? as u64,
        expected: f(v, &["deliveries", "expected_in_window"])? as u64,
        conflated: f(v, &["gaps", "conflated"]).map(|x| x as u64),
        lost: f(v, &["gaps", "lost"]).map(|x| x as u64),
        p50: lat("p50"),
        p90: lat("p90"),
        p99: lat("p99"),
        p999: lat("p999"),
        max: lat("max"),
        server_cpu: f(v, &["server", "cpu_pct"]),
        client_cpu: f(v, &["client", "cpu_pct"]),
        machine_busy: f(v, &["client", "machine_busy_pct"]),
        ncpu: f(v, &["client", "ncpu"]),
        rss_per_conn: f(v, &["server", "rss_per_conn_end"]),
        connect_s: f(v, &["connect", "seconds"]),
    })
}

/// Reads one peerbench JSON line.
pub fn peerbench_fanout(v: &Value) -> Option<FanoutRow> {
    v.get("adapter")?;
    let lat = |k: &str| f(v, &["lat_ms", k]).unwrap_or(f64::NAN);
    Some(FanoutRow {
        label: s(v, "label"),
        tool: Tool::Peerbench,
        n: f(v, &["n"])? as u64,
        rate: f(v, &["rate"])?,
        topics: 1,
        deliveries_per_s: f(v, &["deliveries_per_s"])?,
        delivered: f(v, &["delivered"])? as u64,
        expected: f(v, &["expected"])? as u64,
        conflated: None,
        lost: None,
        p50: lat("p50"),
        p90: lat("p90"),
        p99: lat("p99"),
        p999: lat("p999"),
        max: lat("max"),
        server_cpu: f(v, &["cpu_pct", "server"]),
        client_cpu: f(v, &["cpu_pct", "client"]),
        machine_busy: f(v, &["cpu_pct", "machine_busy"]),
        ncpu: f(v, &["cpu_pct", "ncpu"]),
        rss_per_conn: f(v, &["rss_per_conn_b", "end"]),
        connect_s: f(v, &["connect_s"]),
    })
}

/// Everything read from a results directory.
#[derive(Default)]
pub struct Results {
    pub fanout: Vec<FanoutRow>,
    pub idle: Vec<Value>,
    pub connect: Vec<Value>,
    pub publish: Vec<Value>,
    pub machine: Option<Value>,
    pub commands: String,
}

pub fn load(dir: &Path) -> anyhow::Result<Results> {
    let mut r = Results::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name == "commands.txt" {
            r.commands = std::fs::read_to_string(&path)?;
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            eprintln!("report: skipping {name}: not JSON (a failed run?)");
            continue;
        };
        if name == "machine.json" {
            r.machine = Some(v);
            continue;
        }
        match v.get("scenario").and_then(Value::as_str) {
            Some("fanout") => r.fanout.extend(ours_fanout(&v)),
            Some("idle") => r.idle.push(v),
            Some("connect") => r.connect.push(v),
            Some("publish") => r.publish.push(v),
            _ => r.fanout.extend(peerbench_fanout(&v)),
        }
    }
    r.fanout.sort_by(|a, b| {
        (b.n.cmp(&a.n))
            .then(a.rate.total_cmp(&b.rate))
            .then(a.tool.cmp(&b.tool))
            .then(a.label.cmp(&b.label))
    });
    Ok(r)
}

fn ms(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.0}"))
}

fn rate(r: f64) -> String {
    if r.fract() == 0.0 {
        thousands(r as u64)
    } else {
        format!("{r}")
    }
}

/// Pairs of (ours, peerbench) runs of the same scenario (same N and R).
pub fn pairs(rows: &[FanoutRow]) -> Vec<(&FanoutRow, &FanoutRow)> {
    type Runs<'a> = Vec<&'a FanoutRow>;
    let mut by_key: BTreeMap<(u64, u64), (Runs<'_>, Runs<'_>)> = BTreeMap::new();
    for r in rows {
        let e = by_key.entry((r.n, (r.rate * 1000.0) as u64)).or_default();
        match r.tool {
            Tool::Loadtest if r.topics == 1 => e.0.push(r),
            Tool::Peerbench => e.1.push(r),
            Tool::Loadtest => {}
        }
    }
    let mut out = Vec::new();
    for (ours, peer) in by_key.into_values() {
        out.extend(ours.into_iter().zip(peer));
    }
    out.sort_by(|a, b| (b.0.n.cmp(&a.0.n)).then(a.0.rate.total_cmp(&b.0.rate)));
    out
}

/// Whether two deliveries/s figures agree within `tolerance` (a fraction).
pub fn agree(a: f64, b: f64, tolerance: f64) -> bool {
    let hi = a.max(b);
    hi == 0.0 || (a - b).abs() / hi <= tolerance
}

fn machine_text(m: &Option<Value>) -> String {
    let Some(m) = m else {
        return "(machine.json missing)".into();
    };
    let g = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    format!(
        "{} vCPU ({}), {} RAM, Linux {}, {}; rustc {}; tickwire commit `{}`; run {}",
        g("nproc"),
        g("cpu_model"),
        g("memory"),
        g("kernel"),
        g("os"),
        g("rustc"),
        g("commit"),
        g("date")
    )
}

/// The generated page section (markers included).
pub fn markdown(r: &Results, svg_name: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{BEGIN}");
    let _ = writeln!(
        o,
        "<!-- Generated by `loadtest/run-benchmarks.sh` (`tickwire-loadtest report`); edits inside \
         the markers are overwritten. -->\n"
    );
    let _ = writeln!(o, "## tickwire-loadtest suite\n");
    let _ = writeln!(o, "Machine: {}.\n", machine_text(&r.machine));
    let _ = writeln!(
        o,
        "Client and server share the machine's cores: every table gives the server's and the \
         client's CPU (% of one core), and *other* is what the rest of the machine used during the \
         window (other processes; it competes with both and inflates latency). Each scenario runs \
         against a freshly started server (release build, feed disabled, default settings \
         otherwise). Latency is publisher send → subscriber receive, measured in the client \
         (both sides read the same clock), for messages sent inside the window.\n"
    );

    // --- fan-out
    let ours: Vec<&FanoutRow> = r.fanout.iter().filter(|x| x.tool == Tool::Loadtest).collect();
    if !ours.is_empty() {
        let _ = writeln!(
            o,
            "### Fan-out: N subscribers, one publisher at R msg/s (100-byte payloads)\n"
        );
        let _ = writeln!(
            o,
            "| N | topics | R msg/s | deliveries/s | delivered / expected (window) | conflated | lost | \
             p50 | p90 | p99 | p99.9 | max (ms) | CPU server / client / other | server RSS per conn |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for x in &ours {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} |",
                thousands(x.n),
                x.topics,
                rate(x.rate),
                thousands(x.deliveries_per_s.round() as u64),
                thousands(x.delivered),
                thousands(x.expected),
                x.conflated.map_or("-".into(), thousands),
                x.lost.map_or("-".into(), thousands),
                ms(x.p50),
                ms(x.p90),
                ms(x.p99),
                ms(x.p999),
                ms(x.max),
                pct(x.server_cpu),
                pct(x.client_cpu),
                pct(x.background_cpu()),
                x.rss_per_conn
                    .map_or("-".into(), |b| format!("{} B", thousands(b.max(0.0) as u64))),
            );
        }
        let _ = writeln!(
            o,
            "\n*conflated*: messages a subscriber never saw because a newer update of the topic \
             replaced them while it was behind (the stream went on); *lost*: messages missing at \
             the end of the stream after the drain. Both count every message of the run, warmup \
             included.\n"
        );
        let _ = writeln!(o, "![Latency vs throughput]({svg_name})\n");
    }

    // --- cross-check
    let pairs = pairs(&r.fanout);
    if !pairs.is_empty() {
        let _ = writeln!(
            o,
            "### Cross-check with peerbench (same build, same scenario, runs back to back)\n"
        );
        let _ = writeln!(
            o,
            "| N | R | tool | deliveries/s | delivered / expected | p50 | p90 | p99 | p99.9 | max (ms) | \
             CPU server / client / other | deliveries/s ratio | p50 / p99 ratio |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut all_agree = true;
        for (a, b) in &pairs {
            let ok = agree(a.deliveries_per_s, b.deliveries_per_s, 0.10);
            all_agree &= ok;
            for (x, tool, ratio, lat) in [
                (
                    a,
                    "tickwire-loadtest",
                    format!(
                        "{:.3} ({})",
                        a.deliveries_per_s / b.deliveries_per_s.max(1e-9),
                        if ok { "within 10 %" } else { "**differs**" }
                    ),
                    format!("{:.2} / {:.2}", a.p50 / b.p50, a.p99 / b.p99),
                ),
                (b, "peerbench", String::new(), String::new()),
            ] {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} |",
                    thousands(x.n),
                    rate(x.rate),
                    tool,
                    thousands(x.deliveries_per_s.round() as u64),
                    thousands(x.delivered),
                    thousands(x.expected),
                    ms(x.p50),
                    ms(x.p90),
                    ms(x.p99),
                    ms(x.p999),
                    ms(x.max),
                    pct(x.server_cpu),
                    pct(x.client_cpu),
                    pct(x.background_cpu()),
                    ratio,
                    lat
                );
            }
        }
        let _ = writeln!(
            o,
            "\nDeliveries/s {} within 10 % in every pair. Ratios are tickwire-loadtest / peerbench. \
             Both tools stamp the send time just before the HTTP batch is written and take the \
             receive time once per `read(2)`; both run two receiver threads with a raw frame \
             parser. On a shared 2-core machine the latency of back-to-back runs varies with \
             what else runs (the *other* column), so compare percentiles across the repeats, \
             not within one pair.\n",
            if all_agree {
                "agree"
            } else {
                "do **not** all agree"
            }
        );
    }

    // --- idle
    if !r.idle.is_empty() {
        let _ = writeln!(o, "### Idle connections: server memory per connection\n");
        let _ = writeln!(
            o,
            "| N | held | connected | server RSS empty | after connect | end of hold | per connection after connect | per connection at end |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
        for v in &r.idle {
            let mib = |x: Option<f64>| x.map_or("-".into(), |b| format!("{:.1} MiB", b / 1048576.0));
            let b = |x: Option<f64>| x.map_or("-".into(), |b| format!("{} B", thousands(b.max(0.0) as u64)));
            let _ = writeln!(
                o,
                "| {} | {} s | {} | {} | {} | {} | {} | **{}** |",
                thousands(f(v, &["params", "connections"]).unwrap_or(0.0) as u64),
                f(v, &["params", "hold_s"]).unwrap_or(0.0),
                thousands(f(v, &["connect", "ready"]).unwrap_or(0.0) as u64),
                mib(f(v, &["server", "rss_empty"])),
                mib(f(v, &["server", "rss_after_connect"])),
                mib(f(v, &["server", "rss_end"])),
                b(f(v, &["server", "rss_per_conn_after_connect"])),
                b(f(v, &["server", "rss_per_conn_end"])),
            );
        }
        let _ = writeln!(
            o,
            "\nPer connection = (`process_resident_memory_bytes` − RSS of the empty server) / \
             `tickwire_connections`, all from the server's `/metrics`; each connection holds one \
             subscription.\n"
        );
    }

    // --- connect
    if !r.connect.is_empty() {
        let _ = writeln!(o, "### Connection rate\n");
        let _ = writeln!(
            o,
            "| N | at once | connected | time | handshakes/s | handshake p50 | p90 | p99 | max (ms) | CPU server / client |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
        for v in &r.connect {
            let h = |k: &str| ms(f(v, &["handshake_ms", k]).unwrap_or(f64::NAN));
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.2} s | {} | {} | {} | {} | {} | {} / {} |",
                thousands(f(v, &["params", "connections"]).unwrap_or(0.0) as u64),
                f(v, &["params", "concurrency"]).unwrap_or(0.0),
                thousands(f(v, &["connect", "connected"]).unwrap_or(0.0) as u64),
                f(v, &["connect", "seconds"]).unwrap_or(0.0),
                thousands(f(v, &["handshakes_per_s"]).unwrap_or(0.0).round() as u64),
                h("p50"),
                h("p90"),
                h("p99"),
                h("max"),
                pct(f(v, &["server_cpu_pct"])),
                pct(f(v, &["client", "cpu_pct"])),
            );
        }
        let _ = writeln!(
            o,
            "\nHandshake time: TCP connect to a validated `101 Switching Protocols`, with that many \
             handshakes in flight.\n"
        );
    }

    // --- publish
    if !r.publish.is_empty() {
        let _ = writeln!(o, "### HTTP publish ingest\n");
        let _ = writeln!(
            o,
            "| mode | messages / request | connections | requests/s | messages/s | request p50 | p99 (ms) | errors | CPU server / client |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
        for v in &r.publish {
            let conc = f(v, &["params", "concurrency"]).unwrap_or(0.0);
            for run in v.get("runs").and_then(Value::as_array).into_iter().flatten() {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                    run.get("mode").and_then(Value::as_str).unwrap_or("?"),
                    f(run, &["messages_per_request"]).unwrap_or(0.0),
                    conc,
                    thousands(f(run, &["requests_per_s"]).unwrap_or(0.0).round() as u64),
                    thousands(f(run, &["messages_per_s"]).unwrap_or(0.0).round() as u64),
                    ms(f(run, &["latency_ms", "p50"]).unwrap_or(f64::NAN)),
                    ms(f(run, &["latency_ms", "p99"]).unwrap_or(f64::NAN)),
                    f(run, &["errors"]).unwrap_or(0.0),
                    pct(f(run, &["server_cpu_pct"])),
                    pct(f(run, &["client", "cpu_pct"])),
                );
            }
        }
        let _ = writeln!(
            o,
            "\nClosed loop: each connection sends its next request when the previous one is \
             answered; nothing is subscribed, so this is the cost of accepting, sequencing and \
             encoding publications.\n"
        );
    }

    if !r.commands.trim().is_empty() {
        let _ = writeln!(o, "### Commands\n");
        let _ = writeln!(o, "```\n{}\n```\n", r.commands.trim_end());
    }
    let _ = writeln!(o, "{END}");
    o
}

/// Replaces the marked section of `doc` with `section` (appends it when the markers are absent).
pub fn splice(doc: &str, section: &str) -> anyhow::Result<String> {
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => {
            let after = &doc[e + END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            Ok(format!("{}{}{}", &doc[..b], section, after))
        }
        (None, None) => Ok(format!("{}\n\n{}", doc.trim_end(), section)),
        _ => bail!("the page has a broken marker pair ({BEGIN} … {END})"),
    }
}

/// Draws p50/p99 latency against deliveries/s for the N = 10,000 (or largest N) runs.
pub fn chart(r: &Results, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let n = r.fanout.iter().map(|x| x.n).max().unwrap_or(0);
    let series = |tool: Tool, n: u64| -> Vec<&FanoutRow> {
        let mut v: Vec<&FanoutRow> = (r.fanout.iter())
            .filter(|x| x.tool == tool && x.n == n && x.topics == 1 && x.p50.is_finite())
            .collect();
        v.sort_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s));
        v
    };
    let ours = series(Tool::Loadtest, n);
    let peer = series(Tool::Peerbench, n);
    let small_n = (r.fanout.iter()).map(|x| x.n).filter(|&m| m < n).max();
    let small = small_n.map(|m| series(Tool::Loadtest, m)).unwrap_or_default();
    let all: Vec<&&FanoutRow> = ours.iter().chain(&peer).chain(&small).collect();
    if all.is_empty() {
        bail!("no fan-out results to chart");
    }
    let xmin = all
        .iter()
        .map(|x| x.deliveries_per_s)
        .fold(f64::MAX, f64::min)
        .max(1.0)
        / 1.5;
    let xmax = all.iter().map(|x| x.deliveries_per_s).fold(0.0, f64::max) * 1.5;
    let ymin = all.iter().map(|x| x.p50).fold(f64::MAX, f64::min).max(0.01) / 1.5;
    let ymax = all.iter().map(|x| x.p99).fold(0.0, f64::max) * 1.5;

    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(&root)
        .caption(
            format!(
                "tickwire fan-out: latency vs deliveries/s (one topic, N = {})",
                thousands(n)
            ),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())?;
    c.configure_mesh()
        .x_desc("deliveries per second (log)")
        .y_desc("end-to-end latency, ms (log)")
        .x_labels(6)
        .y_labels(10)
        .light_line_style(RGBColor(242, 242, 242))
        .x_label_formatter(&|x| si(*x))
        .y_label_formatter(&|y| {
            if *y >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        })
        .draw()?;

    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(230, 120, 20);
    let green = RGBColor(44, 160, 44);
    let pts = |v: &[&FanoutRow], q: fn(&FanoutRow) -> f64| -> Vec<(f64, f64)> {
        v.iter().map(|x| (x.deliveries_per_s, q(x))).collect()
    };
    for (q, name, p99) in [
        ((|x: &FanoutRow| x.p50) as fn(&FanoutRow) -> f64, "p50", false),
        (|x: &FanoutRow| x.p99, "p99", true),
    ] {
        // The line goes through the mean of repeated runs at each rate; every run is a dot.
        let style = blue.stroke_width(if p99 { 1 } else { 3 });
        c.draw_series(LineSeries::new(mean_by_rate(&ours, q), style))?
            .label(format!("tickwire-loadtest {name}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        c.draw_series(
            pts(&ours, q)
                .into_iter()
                .map(|p| Circle::new(p, 4, blue.filled())),
        )?;
        let pstyle = orange.stroke_width(2);
        if p99 {
            c.draw_series(pts(&peer, q).into_iter().map(|p| Circle::new(p, 6, pstyle)))?
                .label(format!("peerbench {name}"))
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, pstyle));
        } else {
            c.draw_series(pts(&peer, q).into_iter().map(|p| Cross::new(p, 6, pstyle)))?
                .label(format!("peerbench {name}"))
                .legend(move |(x, y)| Cross::new((x + 10, y), 5, pstyle));
        }
        if let Some(m) = small_n.filter(|_| !small.is_empty()) {
            let gstyle = if p99 {
                green.stroke_width(2)
            } else {
                green.filled()
            };
            c.draw_series(
                pts(&small, q)
                    .into_iter()
                    .map(|p| TriangleMarker::new(p, 7, gstyle)),
            )?
            .label(format!("tickwire-loadtest {name}, N = {}", thousands(m)))
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, gstyle));
        }
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}

/// `50000` → `50k`, `2000000` → `2M`.
fn si(x: f64) -> String {
    let (v, unit) = if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    if (v - v.round()).abs() < 0.05 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// One point per rate (repeated runs averaged): (mean deliveries/s, mean of `q`), by rate.
fn mean_by_rate(rows: &[&FanoutRow], q: fn(&FanoutRow) -> f64) -> Vec<(f64, f64)> {
    let mut groups: Vec<(f64, f64, f64, u32)> = Vec::new(); // rate, Σx, Σy, n
    for r in rows {
        match groups.iter_mut().find(|g| g.0 == r.rate) {
            Some(g) => {
                g.1 += r.deliveries_per_s;
                g.2 += q(r);
                g.3 += 1;
            }
            None => groups.push((r.rate, r.deliveries_per_s, q(r), 1)),
        }
    }
    groups.sort_by(|a, b| a.0.total_cmp(&b.0));
    (groups.into_iter())
        .map(|(_, x, y, n)| (x / f64::from(n), y / f64::from(n)))
        .collect()
}

pub fn run(a: &ReportArgs) -> anyhow::Result<()> {
    let r = load(&a.dir)?;
    if r.fanout.is_empty() && r.idle.is_empty() && r.connect.is_empty() && r.publish.is_empty() {
        bail!("no results in {}", a.dir.display());
    }
    let svg_name = relative_name(&a.svg, &a.doc);
    if !r.fanout.is_empty() {
        chart(&r, &a.svg)?;
        eprintln!("wrote {}", a.svg.display());
    }
    let doc = std::fs::read_to_string(&a.doc).unwrap_or_default();
    let new = splice(&doc, &markdown(&r, &svg_name))?;
    std::fs::write(&a.doc, new).with_context(|| format!("writing {}", a.doc.display()))?;
    eprintln!("updated {}", a.doc.display());
    Ok(())
}

/// The chart's path as the page links it (relative to the page's folder when possible).
fn relative_name(svg: &Path, doc: &Path) -> String {
    match (svg.parent(), doc.parent()) {
        (Some(s), Some(d)) if s == d => svg.file_name().map(|n| n.to_string_lossy().into_owned()),
        _ => None,
    }
    .unwrap_or_else(|| svg.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_between_markers() {
        let doc = format!("# T\n\nintro\n\n{BEGIN}\nold\n{END}\n\n## History\n");
        let out = splice(&doc, &format!("{BEGIN}\nnew\n{END}\n")).unwrap();
        assert_eq!(
            out,
            format!("# T\n\nintro\n\n{BEGIN}\nnew\n{END}\n\n## History\n")
        );
        let appended = splice("# T\n", &format!("{BEGIN}\nx\n{END}\n")).unwrap();
        assert!(appended.starts_with("# T\n\n") && appended.contains("x\n"));
        assert!(splice(&format!("{END}\n{BEGIN}"), "x").is_err());
    }

    #[test]
    fn chart_helpers() {
        assert_eq!(si(50_000.0), "50k");
        assert_eq!(si(2_000_000.0), "2M");
        assert_eq!(si(1_500.0), "1.5k");
        assert_eq!(si(20.0), "20");
    }

    #[test]
    fn agreement() {
        assert!(agree(200_000.0, 190_000.0, 0.10));
        assert!(!agree(200_000.0, 170_000.0, 0.10));
        assert!(agree(0.0, 0.0, 0.10));
    }

    #[test]
    fn reads_both_tools_and_pairs_them() {
        let ours = serde_json::json!({
            "scenario": "fanout", "label": "x",
            "params": {"connections": 100, "rate": 20.0, "topics": 1},
            "deliveries": {"deliveries_per_s": 2000.0, "delivered_in_window": 20000, "expected_in_window": 20000},
            "gaps": {"conflated": 0, "lost": 0},
            "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "p999": 4.0, "max": 5.0},
            "server": {"cpu_pct": 50.0}, "client": {"cpu_pct": 30.0, "machine_busy_pct": 50.0, "ncpu": 2},
            "connect": {"seconds": 0.1}
        });
        let peer = serde_json::json!({
            "adapter": "tickwire", "label": "x", "n": 100, "rate": 20.0, "deliveries_per_s": 1950.0,
            "delivered": 19500, "expected": 20000,
            "lat_ms": {"p50": 1.1, "p90": 2.0, "p99": 3.3, "p999": 4.0, "max": 5.0},
            "cpu_pct": {"server": 50.0, "client": 20.0, "machine_busy": 40.0, "ncpu": 2}
        });
        let a = ours_fanout(&ours).unwrap();
        let b = peerbench_fanout(&peer).unwrap();
        assert_eq!(a.background_cpu(), Some(20.0));
        assert_eq!(b.background_cpu(), Some(10.0));
        let rows = vec![a, b];
        let p = pairs(&rows);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].0.tool, p[0].1.tool), (Tool::Loadtest, Tool::Peerbench));
        let results = Results {
            fanout: rows.clone(),
            ..Results::default()
        };
        let md = markdown(&results, "chart.svg");
        assert!(md.starts_with(BEGIN) && md.trim_end().ends_with(END));
        assert!(md.contains("within 10 %"), "{md}");
        let dir = std::env::temp_dir().join(format!("lt-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svg = dir.join("c.svg");
        chart(&results, &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("peerbench p99"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
