//! `tickwire-loadtest report`: turns a directory of saved results (our `--json` reports and
//! peerbench's JSON lines) into the generated section of `docs/benchmarks.md` and the
//! latency-vs-throughput chart.
//!
//! The directory is what `loadtest/run-benchmarks.sh` writes: one `<label>.json` per run of this
//! tool, `<label>.peerbench.json` per peerbench run against tickwire and `<label>.rawfan.json`
//! per peerbench run against rawfan (each peerbench's last output line), `machine.json` and
//! `commands.txt`. A peerbench line says which server it measured (`adapter`): rawfan rows
//! only ever meet tickwire rows in the "against rawfan" table, never in the cross-check pairs
//! of the two load tools. The page section lives between [`BEGIN`] and [`END`]; everything
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
    /// The server measured: tickwire-loadtest only talks to tickwire; peerbench says which.
    pub server: Server,
    pub n: u64,
    pub rate: f64,
    pub topics: u64,
    pub deliveries_per_s: f64,
    pub delivered: u64,
    pub expected: u64,
    /// Failed publish requests (0 published means the run measured nothing).
    pub pub_errors: Option<u64>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Server {
    /// The limit reference: the thinnest fan-out server on our stack (peerbench's `rawfan`).
    Rawfan,
    Tickwire,
}

impl Server {
    /// The server a peerbench line measured (its `adapter`); `None` for the other peers.
    pub fn of_peerbench(v: &Value) -> Option<Server> {
        match v.get("adapter")?.as_str()? {
            "rawfan" => Some(Server::Rawfan),
            "tickwire" => Some(Server::Tickwire),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Server::Rawfan => "rawfan",
            Server::Tickwire => "tickwire",
        }
    }
}

impl FanoutRow {
    /// CPU used by everything else on the machine, % of one core.
    pub fn background_cpu(&self) -> Option<f64> {
        // machine_busy is % of all cores; the others are % of one core.
        Some((self.machine_busy? * self.ncpu? - self.server_cpu? - self.client_cpu?).max(0.0))
    }

    /// Loss in the window, %: 1 − delivered / expected (peerbench's `loss_pct`).
    pub fn loss_pct(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            100.0 * (1.0 - self.delivered as f64 / self.expected as f64)
        }
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
        server: Server::Tickwire,
        n: f(v, &["params", "connections"])? as u64,
        rate: f(v, &["params", "rate"])?,
        topics: f(v, &["params", "topics"])? as u64,
        deliveries_per_s: f(v, &["deliveries", "deliveries_per_s"])?,
        delivered: f(v, &["deliveries", "delivered_in_window"])? as u64,
        expected: f(v, &["deliveries", "expected_in_window"])? as u64,
        pub_errors: f(v, &["publish", "errors"]).map(|x| x as u64),
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

/// Reads one peerbench JSON line (a run against tickwire or rawfan).
pub fn peerbench_fanout(v: &Value) -> Option<FanoutRow> {
    let server = Server::of_peerbench(v)?;
    let lat = |k: &str| f(v, &["lat_ms", k]).unwrap_or(f64::NAN);
    Some(FanoutRow {
        label: s(v, "label"),
        tool: Tool::Peerbench,
        server,
        n: f(v, &["n"])? as u64,
        rate: f(v, &["rate"])?,
        topics: 1,
        deliveries_per_s: f(v, &["deliveries_per_s"])?,
        delivered: f(v, &["delivered"])? as u64,
        expected: f(v, &["expected"])? as u64,
        pub_errors: f(v, &["pub_errors"]).map(|x| x as u64),
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
    /// Fan-out runs against tickwire, by both tools.
    pub fanout: Vec<FanoutRow>,
    /// Fan-out runs against rawfan (peerbench).
    pub rawfan: Vec<FanoutRow>,
    /// Our idle runs.
    pub idle: Vec<Value>,
    /// peerbench idle runs (`-r 0`), against either server.
    pub peer_idle: Vec<Value>,
    pub connect: Vec<Value>,
    pub publish: Vec<Value>,
    /// `topics` and `reconnect` runs (issue 16).
    pub topics: Vec<Value>,
    pub reconnect: Vec<Value>,
    /// `connect` and `reconnect` runs against rawstorm, the storm's reference (labels with
    /// `-rawstorm`): kept out of tickwire's tables.
    pub storm_reference: Vec<Value>,
    /// `bandwidth` runs (issue 18).
    pub bandwidth: Vec<Value>,
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
        let label = v.get("label").and_then(Value::as_str).unwrap_or_default();
        if label.contains("-rawstorm") {
            r.storm_reference.push(v);
            continue;
        }
        match v.get("scenario").and_then(Value::as_str) {
            Some("fanout") => r.fanout.extend(ours_fanout(&v)),
            Some("idle") => r.idle.push(v),
            Some("connect") => r.connect.push(v),
            Some("publish") => r.publish.push(v),
            Some("topics") => r.topics.push(v),
            Some("reconnect") => r.reconnect.push(v),
            Some("bandwidth") => r.bandwidth.push(v),
            _ => match (Server::of_peerbench(&v), f(&v, &["rate"])) {
                (Some(_), Some(0.0)) => r.peer_idle.push(v),
                (Some(_), _) => match peerbench_fanout(&v) {
                    Some(x) if x.server == Server::Rawfan => r.rawfan.push(x),
                    Some(x) => r.fanout.push(x),
                    None => eprintln!("report: skipping {name}: incomplete peerbench line"),
                },
                (None, _) => eprintln!(
                    "report: skipping {name}: not a run of ours or of peerbench against tickwire or rawfan"
                ),
            },
        }
    }
    let order = |a: &FanoutRow, b: &FanoutRow| {
        (b.n.cmp(&a.n))
            .then(a.rate.total_cmp(&b.rate))
            .then(a.tool.cmp(&b.tool))
            .then(a.label.cmp(&b.label))
    };
    r.fanout.sort_by(order);
    r.rawfan.sort_by(order);
    let n = |v: &Value, path: &[&str]| f(v, path).unwrap_or(0.0) as u64;
    r.idle.sort_by_key(|v| n(v, &["params", "connections"]));
    r.peer_idle
        .sort_by_key(|v| (n(v, &["n"]), Server::of_peerbench(v), s(v, "label")));
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

fn rate_s(r: f64) -> String {
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
    // Only tickwire runs: rawfan is another server, not a check of our tool.
    for r in rows.iter().filter(|r| r.server == Server::Tickwire) {
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

/// The issue's targets against rawfan, each at one scenario (N, R).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// tickwire's deliveries/s ≥ 0.9 × rawfan's, with < 1 % loss in every tickwire run.
    Throughput { n: u64, rate: f64 },
    /// tickwire's p99 ≤ 1.1 × rawfan's.
    P99 { n: u64, rate: f64 },
}

pub const TARGETS: [Target; 3] = [
    Target::Throughput {
        n: 10_000,
        rate: 200.0,
    },
    Target::P99 {
        n: 10_000,
        rate: 20.0,
    },
    Target::P99 {
        n: 1_000,
        rate: 200.0,
    },
];

/// The ≤ 4 KiB per idle subscribed connection target, at these N (tickwire-loadtest idle).
pub const IDLE_TARGET_B: f64 = 4096.0;
pub const IDLE_TARGET_N: [u64; 2] = [10_000, 19_000];

fn same_scenario(x: &FanoutRow, n: u64, rate: f64) -> bool {
    x.n == n && x.rate == rate
}

/// The runs of one scenario: rawfan's and tickwire's, both measured by peerbench.
pub fn against_rawfan(r: &Results, n: u64, rate: f64) -> (Vec<&FanoutRow>, Vec<&FanoutRow>) {
    let raw = (r.rawfan.iter()).filter(|x| same_scenario(x, n, rate)).collect();
    let tw = (r.fanout.iter())
        .filter(|x| x.tool == Tool::Peerbench && x.server == Server::Tickwire)
        .filter(|x| same_scenario(x, n, rate))
        .collect();
    (raw, tw)
}

/// The runs that measured something: a publisher that published nothing in the window (for
/// example because it could not reach the server) leaves nothing to compare.
pub fn valid<'a>(rows: &[&'a FanoutRow]) -> Vec<&'a FanoutRow> {
    rows.iter().copied().filter(|x| x.expected > 0).collect()
}

fn loss_cell(x: &FanoutRow) -> String {
    let errors = match x.pub_errors {
        Some(e) if e > 0 => format!(" ({e} publish errors)"),
        _ => String::new(),
    };
    if x.expected == 0 {
        format!("nothing published{errors}")
    } else {
        format!("{:.2} %{errors}", x.loss_pct())
    }
}

/// Mean of `q` over the runs (NaN when there are none or one has no value).
pub fn mean(rows: &[&FanoutRow], q: fn(&FanoutRow) -> f64) -> f64 {
    if rows.is_empty() {
        return f64::NAN;
    }
    rows.iter().map(|x| q(x)).sum::<f64>() / rows.len() as f64
}

/// `a / b` as `1.23×` with `digits` decimals; `-` when either is missing.
fn ratio(a: f64, b: f64, digits: usize) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.digits$}×", a / b)
    } else {
        "-".into()
    }
}

/// One line per target: the figures and whether it holds (`None`: not measured in this run).
pub fn target_verdict(r: &Results, t: Target) -> (String, Option<bool>) {
    let (n, rate) = match t {
        Target::Throughput { n, rate } | Target::P99 { n, rate } => (n, rate),
    };
    let (all_raw, all_tw) = against_rawfan(r, n, rate);
    let (raw, tw) = (valid(&all_raw), valid(&all_tw));
    let skipped = all_raw.len() + all_tw.len() - raw.len() - tw.len();
    let what = match t {
        Target::Throughput { .. } => format!(
            "deliveries/s ≥ 0.9 × rawfan at N = {}, R = {} with < 1 % loss",
            thousands(n),
            rate_s(rate)
        ),
        Target::P99 { .. } => format!(
            "p99 ≤ 1.1 × rawfan at N = {}, R = {} ({} deliveries/s)",
            thousands(n),
            rate_s(rate),
            si(n as f64 * rate)
        ),
    };
    if raw.is_empty() || tw.is_empty() {
        return (
            format!(
                "{what}: not measured in this run ({} rawfan and {} tickwire peerbench runs{})",
                all_raw.len(),
                all_tw.len(),
                if skipped > 0 {
                    format!(", {skipped} of them published nothing")
                } else {
                    String::new()
                }
            ),
            None,
        );
    }
    let what = if skipped > 0 {
        format!("{what} ({skipped} run(s) that published nothing left out)")
    } else {
        what
    };
    let worst_loss = tw.iter().map(|x| x.loss_pct()).fold(0.0, f64::max);
    match t {
        Target::Throughput { .. } => {
            let dps = |x: &FanoutRow| x.deliveries_per_s;
            let (a, b) = (mean(&tw, dps), mean(&raw, dps));
            let ok = a >= 0.9 * b && worst_loss < 1.0;
            (
                format!(
                    "{what}: tickwire {}/s vs rawfan {}/s = {:.3}×, tickwire loss at most {:.2} %: {}",
                    thousands(a.round() as u64),
                    thousands(b.round() as u64),
                    a / b.max(1e-9),
                    worst_loss,
                    if ok { "**met**" } else { "**not met**" }
                ),
                Some(ok),
            )
        }
        Target::P99 { .. } => {
            let (a, b) = (mean(&tw, |x| x.p99), mean(&raw, |x| x.p99));
            if !(a.is_finite() && b.is_finite() && b > 0.0) {
                return (format!("{what}: no latency figures"), None);
            }
            let ok = a <= 1.1 * b;
            (
                format!(
                    "{what}: tickwire {} ms vs rawfan {} ms = {:.2}× (tickwire loss at most {:.2} %): {}",
                    ms(a),
                    ms(b),
                    a / b,
                    worst_loss,
                    if ok { "**met**" } else { "**not met**" }
                ),
                Some(ok),
            )
        }
    }
}

/// The "against rawfan" section: fan-out per scenario and idle memory, all from peerbench runs
/// of the same suite (plus our own idle runs).
fn rawfan_markdown(r: &Results, o: &mut String) {
    if r.rawfan.is_empty() && r.peer_idle.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "### Against rawfan (same run, same client: peerbench)\n\n\
         rawfan is the thinnest fan-out server on our stack (hyper 1 + fastwebsockets 0.10, from \
         `../shared/tools/peerbench`), run with tokio's default runtime (one worker per core), \
         like tickwire. Both \
         servers are measured with the same peerbench flags, each run against a freshly started \
         server, in ABBA order (rawfan, tickwire, tickwire, rawfan; tickwire-loadtest's runs of \
         the scenario sit in the middle).\n"
    );
    let mut keys: Vec<(u64, f64)> = r.rawfan.iter().map(|x| (x.n, x.rate)).collect();
    keys.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.total_cmp(&b.1)));
    keys.dedup();
    if !keys.is_empty() {
        let _ = writeln!(
            o,
            "| N | R msg/s | server | runs | deliveries/s | loss | p50 (ms) | p99 (ms) | CPU server / client / other |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
        for &(n, rate) in &keys {
            let (raw, tw) = against_rawfan(r, n, rate);
            let (vraw, vtw) = (valid(&raw), valid(&tw));
            let join = |rows: &[&FanoutRow], cell: &dyn Fn(&FanoutRow) -> String| -> String {
                if rows.is_empty() {
                    "-".into()
                } else {
                    rows.iter().map(|x| cell(x)).collect::<Vec<_>>().join("; ")
                }
            };
            for (server, rows) in [("rawfan", &raw), ("tickwire", &tw)] {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    thousands(n),
                    rate_s(rate),
                    server,
                    rows.len(),
                    join(rows, &|x| thousands(x.deliveries_per_s.round() as u64)),
                    join(rows, &loss_cell),
                    join(rows, &|x| ms(x.p50)),
                    join(rows, &|x| ms(x.p99)),
                    join(rows, &|x| format!(
                        "{} / {} / {}",
                        pct(x.server_cpu),
                        pct(x.client_cpu),
                        pct(x.background_cpu())
                    )),
                );
            }
            let _ = writeln!(
                o,
                "| {} | {} | **tickwire / rawfan** | | **{}** | | **{}** | **{}** | |",
                thousands(n),
                rate_s(rate),
                ratio(
                    mean(&vtw, |x| x.deliveries_per_s),
                    mean(&vraw, |x| x.deliveries_per_s),
                    3
                ),
                ratio(mean(&vtw, |x| x.p50), mean(&vraw, |x| x.p50), 2),
                ratio(mean(&vtw, |x| x.p99), mean(&vraw, |x| x.p99), 2),
            );
        }
        let _ = writeln!(
            o,
            "\nPer-run figures are in run order (a; b). The ratios divide the mean of tickwire's \
             runs by the mean of rawfan's runs of the same scenario (not run by run; runs that \
             published nothing are left out): with ABBA order a drift that is linear in time \
             moves both means alike. Loss is 1 − delivered / \
             expected in the window (late deliveries count as lost). CPU is % of one core; *other* \
             is the rest of the machine.\n"
        );
        let _ = writeln!(o, "Targets (ratios to rawfan, measured in this run):\n");
        for t in TARGETS {
            let _ = writeln!(o, "- {}", target_verdict(r, t).0);
        }
        let _ = writeln!(o);
    }

    // --- idle memory, both servers, both tools
    let idle_rows = idle_memory_rows(r);
    if !idle_rows.is_empty() {
        let _ = writeln!(o, "#### Idle connections against rawfan\n");
        let _ = writeln!(
            o,
            "| N | server | client | run | held | connected | server RSS before → end of hold | per connection after connect | per connection at end |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
        let b = |x: Option<f64>| x.map_or("-".into(), |b| format!("{} B", thousands(b.max(0.0) as u64)));
        let mib = |x: Option<f64>| x.map_or("-".into(), |b| format!("{:.1}", b / 1048576.0));
        for x in &idle_rows {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} s | {} | {} → {} MiB | {} | **{}** |",
                thousands(x.n),
                x.server.name(),
                x.client,
                x.label,
                x.hold_s,
                thousands(x.connected),
                mib(x.rss_before),
                mib(x.rss_end),
                b(x.per_conn_connect),
                b(x.per_conn_end),
            );
        }
        let _ = writeln!(
            o,
            "\npeerbench idle runs: `-r 0 --warmup 0 --duration <held> --drain 0` (connect, hold, \
             no publishing); per connection = (VmRSS at the end − VmRSS before connecting) / \
             connected, VmRSS read from `/proc`. tickwire-loadtest's idle runs read the same \
             from the server's `/metrics` (RSS of the empty server). Every connection is \
             subscribed to one topic (rawfan: every connection receives every message).\n"
        );
        let mut ns: Vec<u64> = idle_rows.iter().map(|x| x.n).collect();
        ns.dedup();
        for n in ns {
            let end = |server: Server| -> Vec<f64> {
                (idle_rows.iter())
                    .filter(|x| x.n == n && x.server == server && x.client == "peerbench")
                    .filter_map(|x| x.per_conn_end)
                    .collect()
            };
            let (raw, tw) = (end(Server::Rawfan), end(Server::Tickwire));
            if raw.is_empty() || tw.is_empty() {
                continue;
            }
            let m = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let _ = writeln!(
                o,
                "- N = {}, peerbench: tickwire {} B vs rawfan {} B per idle connection = {} (means of {} tickwire and {} rawfan runs)",
                thousands(n),
                thousands(m(&tw).round() as u64),
                thousands(m(&raw).round() as u64),
                ratio(m(&tw), m(&raw), 2),
                tw.len(),
                raw.len()
            );
        }
        let _ = writeln!(o, "- {}", idle_target_verdict(r).0);
        let _ = writeln!(o);
    }
}

/// One idle measurement, from either tool.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleRow {
    pub n: u64,
    pub server: Server,
    pub client: &'static str,
    pub label: String,
    pub connected: u64,
    pub hold_s: f64,
    pub rss_before: Option<f64>,
    pub rss_end: Option<f64>,
    pub per_conn_connect: Option<f64>,
    pub per_conn_end: Option<f64>,
}

/// Idle rows of both tools, by N, then rawfan, tickwire (peerbench), tickwire (ours).
pub fn idle_memory_rows(r: &Results) -> Vec<IdleRow> {
    let mut rows: Vec<IdleRow> = Vec::new();
    for v in &r.peer_idle {
        let Some(server) = Server::of_peerbench(v) else {
            continue;
        };
        rows.push(IdleRow {
            n: f(v, &["n"]).unwrap_or(0.0) as u64,
            server,
            client: "peerbench",
            label: s(v, "label"),
            connected: f(v, &["connected"]).unwrap_or(0.0) as u64,
            hold_s: f(v, &["duration_s"]).unwrap_or(f64::NAN),
            rss_before: f(v, &["rss_kib", "before"]).map(|k| k * 1024.0),
            rss_end: f(v, &["rss_kib", "end"]).map(|k| k * 1024.0),
            per_conn_connect: f(v, &["rss_per_conn_b", "after_connect"]),
            per_conn_end: f(v, &["rss_per_conn_b", "end"]),
        });
    }
    for v in &r.idle {
        rows.push(IdleRow {
            n: f(v, &["params", "connections"]).unwrap_or(0.0) as u64,
            server: Server::Tickwire,
            client: "tickwire-loadtest",
            label: s(v, "label"),
            connected: f(v, &["connect", "ready"]).unwrap_or(0.0) as u64,
            hold_s: f(v, &["params", "hold_s"]).unwrap_or(f64::NAN),
            rss_before: f(v, &["server", "rss_empty"]),
            rss_end: f(v, &["server", "rss_end"]),
            per_conn_connect: f(v, &["server", "rss_per_conn_after_connect"]),
            per_conn_end: f(v, &["server", "rss_per_conn_end"]),
        });
    }
    rows.sort_by(|a, b| {
        (a.n.cmp(&b.n))
            .then(a.server.cmp(&b.server))
            .then(a.client.cmp(b.client))
            .then(a.label.cmp(&b.label))
    });
    rows
}

/// ≤ 4 KiB per idle subscribed connection at 10,000 and 19,000 (tickwire-loadtest idle, end).
pub fn idle_target_verdict(r: &Results) -> (String, Option<bool>) {
    let rows = idle_memory_rows(r);
    let mut parts = Vec::new();
    let mut ok = Some(true);
    for n in IDLE_TARGET_N {
        let v: Vec<f64> = (rows.iter())
            .filter(|x| x.n == n && x.client == "tickwire-loadtest")
            .filter_map(|x| x.per_conn_end)
            .collect();
        if v.is_empty() {
            parts.push(format!("{}: not measured", thousands(n)));
            ok = None;
        } else {
            let worst = v.iter().copied().fold(0.0, f64::max);
            parts.push(format!("{}: {} B", thousands(n), thousands(worst as u64)));
            ok = ok.map(|o| o && worst <= IDLE_TARGET_B);
        }
    }
    let verdict = match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not fully measured in this run",
    };
    (
        format!(
            "≤ 4 KiB ({} B) per idle subscribed connection at 10,000 and 19,000 \
             (tickwire-loadtest idle, per connection at end): {}: {verdict}",
            thousands(IDLE_TARGET_B as u64),
            parts.join(", ")
        ),
        ok,
    )
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
                rate_s(x.rate),
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
                    rate_s(x.rate),
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

    // --- against rawfan (fan-out and idle memory)
    rawfan_markdown(r, &mut o);

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

    // --- many topics and reconnect storms (issue 16)
    let baselines: Vec<crate::scale::Baseline> = (r.fanout.iter())
        .filter(|x| x.tool == Tool::Loadtest)
        .map(|x| crate::scale::Baseline {
            label: x.label.clone(),
            deliveries_per_s: x.deliveries_per_s,
            lost: x.lost,
        })
        .collect();
    crate::scale::topics_markdown(&r.topics, &baselines, &mut o);
    crate::scale::reconnect_markdown(&r.reconnect, &r.connect, &r.storm_reference, &mut o);
    crate::bench_bandwidth::markdown(&r.bandwidth, &mut o);

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
    if r.fanout.is_empty()
        && r.rawfan.is_empty()
        && r.idle.is_empty()
        && r.peer_idle.is_empty()
        && r.connect.is_empty()
        && r.publish.is_empty()
        && r.topics.is_empty()
        && r.reconnect.is_empty()
        && r.bandwidth.is_empty()
    {
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
        let mut raw = peer.clone();
        raw["adapter"] = "rawfan".into();
        let c = peerbench_fanout(&raw).unwrap();
        assert_eq!((b.server, c.server), (Server::Tickwire, Server::Rawfan));
        let mut nats = peer.clone();
        nats["adapter"] = "nats".into();
        assert!(peerbench_fanout(&nats).is_none());
        // A rawfan run of the same scenario is not a partner for our tool.
        let p = pairs(&[a.clone(), c.clone(), b.clone()]).len();
        assert_eq!(p, 1);
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
        assert!(!md.contains("Against rawfan"), "no rawfan runs, no section: {md}");
        let with_rawfan = Results {
            fanout: rows.clone(),
            rawfan: vec![c],
            ..Results::default()
        };
        let md = markdown(&with_rawfan, "chart.svg");
        assert!(
            md.contains("| 100 | 20 | **tickwire / rawfan** | | **1.000×** | | **1.00×** | **1.00×** | |"),
            "{md}"
        );
        let dir = std::env::temp_dir().join(format!("lt-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svg = dir.join("c.svg");
        chart(&results, &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("peerbench p99"));
        std::fs::remove_dir_all(&dir).ok();
    }

    // Real lines from a smoke run of loadtest/run-benchmarks.sh (N = 400, R = 20, 1 s + 4 s + 1 s;
    // idle: -r 0, 4 s hold), as peerbench and tickwire-loadtest wrote them.
    const RAWFAN_FANOUT: &str = r#"{"adapter":"rawfan","busy_poll":false,"client":"raw","closed_early":0,"connect_s":0.033756796,"connected":400,"cpu_pct":{"client":3.75,"machine_busy":54.52261306532663,"ncpu":2,"server":4.0,"server_each":[4.0]},"delivered":32000,"deliveries_per_s":8000.0,"drain_s":1.0,"duration_s":4.0,"expected":32000,"expected_nominal":32000,"failed":0,"label":"fanout-n400-r20","lat_ms":{"max":4.135,"p50":2.955,"p90":3.517,"p99":3.905,"p999":4.081},"loss_pct":0.0,"n":400,"nats_err":0,"payload_bytes":100,"pub_errors":0,"pub_in_window":80,"pub_max_send_ms":3.9034880000000003,"pub_rate":20.0,"pub_unconfirmed":0,"pub_url":"http://127.0.0.1:28491/pub","rate":20.0,"received_total":39600,"rss_kib":{"after_connect":6428,"before":3176,"end":6872,"end_each":[6872]},"rss_per_conn_b":{"after_connect":8325.12,"end":9461.76},"server_pid":[28505],"source_ips":32,"threads":2,"unparsed":0,"url":"ws://127.0.0.1:28491/ws","warmup_s":1.0}"#;
    const TICKWIRE_FANOUT: &str = r#"{"adapter":"tickwire","busy_poll":false,"client":"raw","closed_early":0,"connect_s":0.022538022,"connected":400,"cpu_pct":{"client":6.25,"machine_busy":11.907810499359796,"ncpu":2,"server":7.5,"server_each":[7.5]},"delivered":32000,"deliveries_per_s":8000.0,"drain_s":1.0,"duration_s":4.0,"expected":32000,"expected_nominal":32000,"failed":0,"label":"fanout-n400-r20","lat_ms":{"max":9.831,"p50":2.625,"p90":3.683,"p99":5.223,"p999":9.743},"loss_pct":0.0,"n":400,"nats_err":0,"payload_bytes":100,"pub_errors":0,"pub_in_window":80,"pub_max_send_ms":9.870203,"pub_rate":20.0,"pub_unconfirmed":0,"pub_url":"http://127.0.0.1:28481/api/v1/publish","rate":20.0,"received_total":40000,"rss_kib":{"after_connect":12212,"before":7692,"end":12292,"end_each":[12292]},"rss_per_conn_b":{"after_connect":11571.2,"end":11776.0},"server_pid":[28901],"source_ips":32,"threads":2,"unparsed":400,"url":"ws://127.0.0.1:28481/ws","warmup_s":1.0}"#;
    const RAWFAN_IDLE: &str = r#"{"adapter":"rawfan","busy_poll":false,"client":"raw","closed_early":0,"connect_s":0.030841709,"connected":400,"cpu_pct":{"client":0.5,"machine_busy":4.924242424242424,"ncpu":2,"server":0.0,"server_each":[0.0]},"delivered":0,"deliveries_per_s":0.0,"drain_s":0.0,"duration_s":4.0,"expected":0,"expected_nominal":0,"failed":0,"label":"idle-n400","lat_ms":null,"loss_pct":0.0,"n":400,"nats_err":0,"payload_bytes":100,"pub_errors":0,"pub_in_window":0,"pub_max_send_ms":0.0,"pub_rate":0.0,"pub_unconfirmed":0,"pub_url":"http://127.0.0.1:28491/pub","rate":0.0,"received_total":0,"rss_kib":{"after_connect":6588,"before":3148,"end":6588,"end_each":[6588]},"rss_per_conn_b":{"after_connect":8806.4,"end":8806.4},"server_pid":[6597],"source_ips":32,"threads":2,"unparsed":0,"url":"ws://127.0.0.1:28491/ws","warmup_s":0.0}"#;
    const TICKWIRE_IDLE: &str = r#"{"adapter":"tickwire","busy_poll":false,"client":"raw","closed_early":0,"connect_s":0.026210307,"connected":400,"cpu_pct":{"client":0.25,"machine_busy":8.776266996291719,"ncpu":2,"server":0.0,"server_each":[0.0]},"delivered":0,"deliveries_per_s":0.0,"drain_s":0.0,"duration_s":4.0,"expected":0,"expected_nominal":0,"failed":0,"label":"idle-n400","lat_ms":null,"loss_pct":0.0,"n":400,"nats_err":0,"payload_bytes":100,"pub_errors":0,"pub_in_window":0,"pub_max_send_ms":0.0,"pub_rate":0.0,"pub_unconfirmed":0,"pub_url":"http://127.0.0.1:28481/api/v1/publish","rate":0.0,"received_total":400,"rss_kib":{"after_connect":10876,"before":7528,"end":10876,"end_each":[10876]},"rss_per_conn_b":{"after_connect":8570.88,"end":8570.88},"server_pid":[6642],"source_ips":32,"threads":2,"unparsed":400,"url":"ws://127.0.0.1:28481/ws","warmup_s":0.0}"#;
    const OURS_IDLE: &str = r#"{"scenario":"idle","label":"idle-n400","url":"ws://127.0.0.1:28481/ws","params":{"connections":400,"topics":1,"subs_per_conn":1,"hold_s":4.0,"threads":2,"source_ips":32},"connect":{"requested":400,"connected":400,"ready":400,"failed":0,"seconds":0.038954,"timed_out":false},"handshake_ms":{"count":400,"p50":14.191,"p90":29.231,"p99":29.359,"p999":29.407,"max":29.407,"mean":15.74183},"server":{"rss_empty":7872512.0,"rss_after_connect":11673600.0,"rss_end":11673600.0,"connections_before":0.0,"connections_end":400.0,"rss_per_conn_after_connect":9502.72,"rss_per_conn_end":9502.72,"cpu_pct_hold":0.24962016080193775},"client":{"cpu_pct":0.49923768888614584,"machine_busy_pct":51.693851944792975,"ncpu":2,"rss_bytes":5132288},"closed_early":0,"errors":[],"interrupted":false}"#;

    /// A sample line moved to another scenario (the targets are at N = 10,000 and 1,000).
    fn at(line: &str, n: u64, rate: f64, label: &str, scale_p99: f64) -> Value {
        let mut v: Value = serde_json::from_str(line).unwrap();
        v["n"] = n.into();
        v["rate"] = rate.into();
        v["label"] = label.into();
        let p99 = v["lat_ms"]["p99"].as_f64().unwrap();
        v["lat_ms"]["p99"] = (p99 * scale_p99).into();
        v
    }

    #[test]
    fn rawfan_runs_stay_out_of_the_cross_check() {
        let ours = serde_json::json!({
            "scenario": "fanout", "label": "fanout-n400-r20",
            "params": {"connections": 400, "rate": 20.0, "topics": 1},
            "deliveries": {"deliveries_per_s": 8000.0, "delivered_in_window": 32000, "expected_in_window": 32000},
            "latency_ms": {"p50": 2.9, "p90": 4.5, "p99": 5.6, "p999": 7.7, "max": 7.7}
        });
        let dir = std::env::temp_dir().join(format!("lt-rawfan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in [
            ("fanout-n400-r20.json", ours.to_string()),
            ("fanout-n400-r20.peerbench.json", TICKWIRE_FANOUT.to_string()),
            ("fanout-n400-r20.rawfan.json", RAWFAN_FANOUT.to_string()),
            ("idle-n400.json", OURS_IDLE.to_string()),
            ("idle-n400.peerbench.json", TICKWIRE_IDLE.to_string()),
            ("idle-n400.rawfan.json", RAWFAN_IDLE.to_string()),
            ("broken.rawfan.json", "peerbench: connect timeout".to_string()),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let r = load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(r.rawfan.len(), 1);
        assert_eq!(r.rawfan[0].server, Server::Rawfan);
        assert_eq!(r.fanout.len(), 2);
        assert!(r.fanout.iter().all(|x| x.server == Server::Tickwire));
        assert_eq!((r.idle.len(), r.peer_idle.len()), (1, 2));
        // The cross-check pairs our tool with peerbench-against-tickwire only.
        let mut all = r.fanout.clone();
        all.extend(r.rawfan.iter().cloned());
        let p = pairs(&all);
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].0.server, p[0].1.server),
            (Server::Tickwire, Server::Tickwire)
        );

        let (raw, tw) = against_rawfan(&r, 400, 20.0);
        assert_eq!((raw.len(), tw.len()), (1, 1));
        assert!((mean(&tw, |x| x.p99) / mean(&raw, |x| x.p99) - 5.223 / 3.905).abs() < 1e-9);
        let md = markdown(&r, "chart.svg");
        assert!(
            md.contains("### Against rawfan (same run, same client: peerbench)"),
            "{md}"
        );
        assert!(
            md.contains("| 400 | 20 | rawfan | 1 | 8,000 | 0.00 % | 3.0 | 3.9 | 4 / 4 / 101 |"),
            "{md}"
        );
        assert!(
            md.contains("| 400 | 20 | tickwire | 1 | 8,000 | 0.00 % | 2.6 | 5.2 | 8 / 6 / 10 |"),
            "{md}"
        );
        assert!(
            md.contains("| 400 | 20 | **tickwire / rawfan** | | **1.000×** | | **0.89×** | **1.34×** | |"),
            "{md}"
        );
        assert!(md.contains("not measured in this run (0 rawfan and 0 tickwire peerbench runs)"));
        // Idle: both servers from peerbench, ours from tickwire-loadtest, and their ratio.
        assert!(md.contains("| 400 | rawfan | peerbench | idle-n400 | 4 s | 400 | 3.1 → 6.4 MiB | 8,806 B | **8,806 B** |"), "{md}");
        assert!(md.contains("| 400 | tickwire | peerbench | idle-n400 | 4 s | 400 | 7.4 → 10.6 MiB | 8,570 B | **8,570 B** |"), "{md}");
        assert!(md.contains("| 400 | tickwire | tickwire-loadtest | idle-n400 | 4 s | 400 | 7.5 → 11.1 MiB | 9,502 B | **9,502 B** |"), "{md}");
        assert!(
            md.contains("tickwire 8,571 B vs rawfan 8,806 B per idle connection = 0.97× (means of 1 tickwire and 1 rawfan runs)"),
            "{md}"
        );
        assert!(md.contains("10,000: not measured, 19,000: not measured"), "{md}");
    }

    #[test]
    fn targets_against_rawfan() {
        // ABBA at each target scenario: rawfan a, tickwire a, tickwire b, rawfan b.
        let mut r = Results::default();
        fn add(r: &mut Results, line: &str, n: u64, rate: f64, label: &str, scale: f64) {
            let row = peerbench_fanout(&at(line, n, rate, label, scale)).unwrap();
            match row.server {
                Server::Rawfan => r.rawfan.push(row),
                Server::Tickwire => r.fanout.push(row),
            }
        }
        // N = 10k, R = 20: tickwire p99 5.223 × {1, 0.8} vs rawfan 3.905 × {1.3, 1.2}: 0.96×, met.
        add(&mut r, RAWFAN_FANOUT, 10_000, 20.0, "a", 1.3);
        add(&mut r, TICKWIRE_FANOUT, 10_000, 20.0, "a", 1.0);
        add(&mut r, TICKWIRE_FANOUT, 10_000, 20.0, "b", 0.8);
        add(&mut r, RAWFAN_FANOUT, 10_000, 20.0, "b", 1.2);
        // N = 1k, R = 200: tickwire 5.223 vs rawfan 3.905: 1.34×, not met.
        add(&mut r, RAWFAN_FANOUT, 1_000, 200.0, "a", 1.0);
        add(&mut r, TICKWIRE_FANOUT, 1_000, 200.0, "a", 1.0);
        let verdicts: Vec<(String, Option<bool>)> = TARGETS.iter().map(|&t| target_verdict(&r, t)).collect();
        assert_eq!(verdicts[0].1, None, "{}", verdicts[0].0); // N = 10k, R = 200 not run
        assert_eq!(verdicts[1].1, Some(true), "{}", verdicts[1].0);
        assert!(verdicts[1].0.contains("= 0.96×"), "{}", verdicts[1].0);
        assert_eq!(verdicts[2].1, Some(false), "{}", verdicts[2].0);

        // N = 10k, R = 200: same deliveries/s and no loss: met; 5 % loss in one run: not met.
        add(&mut r, RAWFAN_FANOUT, 10_000, 200.0, "a", 1.0);
        add(&mut r, TICKWIRE_FANOUT, 10_000, 200.0, "a", 1.0);
        let (text, ok) = target_verdict(&r, TARGETS[0]);
        assert_eq!(ok, Some(true), "{text}");
        assert!(
            text.contains("= 1.000×") && text.contains("loss at most 0.00 %"),
            "{text}"
        );
        let mut lossy = at(TICKWIRE_FANOUT, 10_000, 200.0, "b", 1.0);
        lossy["delivered"] = 30_400.into();
        lossy["deliveries_per_s"] = 7_600.0.into();
        r.fanout.push(peerbench_fanout(&lossy).unwrap());
        let (text, ok) = target_verdict(&r, TARGETS[0]);
        assert_eq!(ok, Some(false), "{text}");
        assert!(text.contains("loss at most 5.00 %"), "{text}");

        // A rawfan run whose publisher reached nothing is left out, and said so.
        let mut dead = at(RAWFAN_FANOUT, 1_000, 200.0, "b", 1.0);
        dead["expected"] = 0.into();
        dead["delivered"] = 0.into();
        dead["pub_errors"] = 1.into();
        r.rawfan.push(peerbench_fanout(&dead).unwrap());
        let (text, ok) = target_verdict(&r, TARGETS[2]);
        assert_eq!(ok, Some(false), "{text}");
        assert!(
            text.contains("1 run(s) that published nothing left out"),
            "{text}"
        );
        let md = markdown(&r, "c.svg");
        assert!(md.contains("nothing published (1 publish errors)"), "{md}");
    }

    #[test]
    fn idle_target() {
        let mut r = Results::default();
        for (n, per_conn) in [(10_000, 3_700.0), (19_000, 3_650.0)] {
            let mut v: Value = serde_json::from_str(OURS_IDLE).unwrap();
            v["params"]["connections"] = n.into();
            v["server"]["rss_per_conn_end"] = per_conn.into();
            r.idle.push(v);
        }
        let (text, ok) = idle_target_verdict(&r);
        assert_eq!(ok, Some(true), "{text}");
        assert!(
            text.contains("10,000: 3,700 B, 19,000: 3,650 B: **met**"),
            "{text}"
        );
        r.idle[1]["server"]["rss_per_conn_end"] = 4_200.0.into();
        assert_eq!(idle_target_verdict(&r).1, Some(false));
    }
}
