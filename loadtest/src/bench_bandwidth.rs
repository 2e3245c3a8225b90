//! The issue-18 tables of the benchmark page, from `bandwidth` runs: bytes per delivery of each
//! payload shape plain, with deltas, compressed and both (the ratio to plain, the CPU), and the
//! max-rate runs (the rate bound and the newest value last).
//!
//! Runs pair by (shape, N, R): the `plain` run is the reference of every other mode of the
//! same scenario, and each mode is a row of its own under it.

use std::fmt::Write as _;

use serde_json::Value;

use crate::report::thousands;

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return "",
        }
    }
    cur.as_str().unwrap_or_default()
}

fn n(v: &Value, path: &[&str]) -> u64 {
    f(v, path).unwrap_or(0.0).max(0.0) as u64
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn bytes(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| {
        format!("{} B", thousands(x.max(0.0).round() as u64))
    })
}

/// A rate as given (`1`, `0.5`).
fn given(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| x.to_string())
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.0} %"))
}

fn p50_p99(v: &Value) -> String {
    format!(
        "{} / {}",
        num(f(v, &["latency_ms", "p50"]), 1),
        num(f(v, &["latency_ms", "p99"]), 1)
    )
}

/// The scenario a run measured, whatever its mode.
fn key(v: &Value) -> (String, u64, u64) {
    (
        s(v, &["params", "shape"]).to_string(),
        n(v, &["params", "connections"]),
        (f(v, &["params", "rate"]).unwrap_or(0.0) * 1000.0) as u64,
    )
}

fn failed(v: &Value) -> Option<String> {
    let failures: Vec<&str> = (v.get("failures").and_then(Value::as_array))
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    (!failures.is_empty()).then(|| failures.join("; "))
}

/// The bandwidth tables (nothing when there is no run).
pub fn markdown(runs: &[Value], o: &mut String) {
    let (paced, unpaced): (Vec<&Value>, Vec<&Value>) =
        runs.iter().partition(|v| f(v, &["params", "max_rate"]).is_some());
    if !unpaced.is_empty() {
        modes_table(&unpaced, o);
    }
    if !paced.is_empty() {
        max_rate_table(&paced, o);
    }
    for v in runs {
        if let Some(why) = failed(v) {
            let _ = writeln!(o, "- Run `{}` **failed**: {why}.", s(v, &["label"]));
        }
    }
    if runs.iter().any(|v| failed(v).is_some()) {
        let _ = writeln!(o);
    }
}

/// The modes in the order of a scenario's rows: plain first, the reference of the others.
const MODES: [&str; 4] = ["plain", "delta", "deflate", "delta+deflate"];

fn modes_table(runs: &[&Value], o: &mut String) {
    let _ = writeln!(
        o,
        "### Bandwidth: bytes per delivery, plain, with deltas, compressed (issue 18)\n"
    );
    let _ = writeln!(
        o,
        "| shape | N | R msg/s | data | mode | bytes/delivery | plain / mode | whole run | \
         delta frames | compressed frames | mismatches | p50 / p99 (ms) | CPU server |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut keys: Vec<(String, u64, u64)> = runs.iter().map(|v| key(v)).collect();
    keys.sort_by(|a, b| (b.1.cmp(&a.1)).then(shape_order(&a.0).cmp(&shape_order(&b.0))));
    keys.dedup();
    let per = |v: &Value| f(v, &["bytes", "window", "wire_per_delivery"]);
    for k in keys {
        let of = |mode: &str| {
            runs.iter()
                .copied()
                .find(|v| key(v) == k && s(v, &["params", "mode"]) == mode)
        };
        let plain = of("plain").and_then(per);
        for (mode, v) in MODES.iter().filter_map(|m| Some((*m, of(m)?))) {
            let frames = |count: &str, share: &str| match n(v, &["bytes", count]) {
                0 => "-".to_string(),
                c => format!("{} ({} %)", thousands(c), num(f(v, &["bytes", share]), 0)),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {mode} | {} | {} | {} ({}×) | {} | {} | {} | {} | {} |",
                k.0,
                thousands(k.1),
                num(f(v, &["params", "rate"]), 0),
                bytes(f(v, &["bytes", "data_per_delivery"])),
                bytes(per(v)),
                match (plain, per(v)) {
                    (Some(p), Some(d)) if d > 0.0 && mode == "plain" => format!("{:.1}×", p / d),
                    (Some(p), Some(d)) if d > 0.0 => format!("**{:.1}×**", p / d),
                    _ => "-".into(),
                },
                bytes(f(v, &["bytes", "wire_per_delivery"])),
                num(f(v, &["bytes", "full_over_wire"]), 1),
                frames("delta_frames", "delta_share_pct"),
                frames("compressed_frames", "compressed_share_pct"),
                thousands(n(v, &["mismatches"])),
                p50_p99(v),
                pct(f(v, &["server", "cpu_pct"])),
            );
        }
    }
    let _ = writeln!(
        o,
        "\nOne topic, N subscribers, one publisher at R msg/s whose payload changes a little per \
         update: `tick` (the feed's price tick, 2–3 numbers change), `book` (a 50-level order book, \
         2–4 levels change), `doc` (a JSON document with multi-byte UTF-8, one field changes). \
         Modes: `delta` subscribes with `\"delta\":\"fossil\"`, `deflate` negotiates \
         permessage-deflate (`--deflate`), `delta+deflate` both. *Bytes/delivery*: the update \
         frames as read from the sockets (compressed as they came), WebSocket headers included, \
         per update received, for the updates published in the window (the steady state); \
         *plain / mode* divides the plain run's figure by it. *Whole run*: every update, the \
         warmup's too, so each subscriber's first update, always whole, counts; in brackets the \
         same updates as plain full frames (computed from the rebuilt data) over what came. Every \
         subscriber rebuilds every update (inflating, applying the deltas) and compares it with \
         what was published for its `seq`: *mismatches* must be 0. Data under `delta.min_bytes` \
         (128 B) always comes whole, so `tick` gets no deltas; frames under `compression.min_bytes` \
         (256 B) come plain, so `tick` and small deltas are not compressed.\n"
    );
}

fn shape_order(shape: &str) -> usize {
    ["tick", "book", "doc"]
        .iter()
        .position(|s| *s == shape)
        .unwrap_or(3)
}

fn max_rate_table(runs: &[&Value], o: &mut String) {
    let _ = writeln!(o, "### Max rate per subscription (issue 18)\n");
    let _ = writeln!(
        o,
        "| shape | mode | N | R msg/s | max_rate | updates per subscriber (min–max) | most within 1 s (bound) | \
         over the bound | last update is the newest | mismatches | bytes/delivery | CPU server |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for v in runs {
        let newest = n(v, &["deliveries", "newest_last"]);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {}–{} | {} ({}) | {} | {} of {} | {} | {} | {} |",
            s(v, &["params", "shape"]),
            s(v, &["params", "mode"]),
            thousands(n(v, &["params", "connections"])),
            num(f(v, &["params", "rate"]), 0),
            given(f(v, &["params", "max_rate"])),
            n(v, &["deliveries", "per_subscriber_min"]),
            n(v, &["deliveries", "per_subscriber_max"]),
            n(v, &["max_rate", "max_in_1s"]),
            given(f(v, &["max_rate", "bound"])),
            thousands(n(v, &["max_rate", "over_bound"])),
            thousands(newest),
            thousands(newest + n(v, &["deliveries", "newest_not_last"])),
            thousands(n(v, &["mismatches"])),
            bytes(f(v, &["bytes", "window", "wire_per_delivery"])),
            pct(f(v, &["server", "cpu_pct"])),
        );
    }
    let _ = writeln!(
        o,
        "\nSubscribed with `\"max_rate\": R`: at most R updates a second per topic, the newest \
         publication always last. *Most within 1 s*: the most updates one subscriber received \
         within any second of arrival times (must stay ≤ R + 1: an interval's two ends). *Last \
         update is the newest*: subscribers whose last update was the last publication once \
         publishing stopped (must be all).\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(shape: &str, mode: &str, per: f64, max_rate: Option<f64>) -> Value {
        let (deltas, compressed) = (mode.contains("delta"), mode.contains("deflate"));
        json!({"scenario":"bandwidth","label":format!("bw-{shape}-{mode}"),
            "params":{"shape":shape,"mode":mode,"connections":10000,"rate":10.0,"max_rate":max_rate},
            "bytes":{"wire_per_delivery":per + 50.0,"data_per_delivery":3241.0,"full_over_wire":3324.0 / (per + 50.0),
                "delta_frames":if deltas { 99 } else { 0 },"delta_share_pct":99.0,
                "compressed_frames":if compressed { 1200 } else { 0 },"compressed_share_pct":12.0,
                "window":{"wire_per_delivery":per}},
            "deliveries":{"per_subscriber_min":5,"per_subscriber_max":6,"newest_last":10000,"newest_not_last":0},
            "max_rate":{"max_in_1s":2,"bound":2.0,"over_bound":0},
            "mismatches":0,"failures":[],"server":{"cpu_pct":42.0},"latency_ms":{"p50":1.0,"p99":2.5}})
    }

    #[test]
    fn each_mode_is_a_row_against_plain() {
        let runs = [
            run("doc", "delta", 140.0, None),
            run("book", "delta+deflate", 150.0, None),
            run("book", "plain", 3324.0, None),
            run("book", "deflate", 831.0, None),
            run("book", "delta", 195.0, None),
            run("tick", "plain", 94.0, Some(1.0)),
        ];
        let mut o = String::new();
        markdown(&runs, &mut o);
        // book first (by shape), plain then the modes in their order, each against plain; doc
        // has no plain run.
        let book: Vec<&str> = o.lines().filter(|l| l.starts_with("| book")).collect();
        let want = [
            "| plain | 3,324 B | 1.0× | 3,374 B (1.0×) | - | - |",
            "| delta | 195 B | **17.0×** | 245 B (13.6×) | 99 (99 %) | - |",
            "| deflate | 831 B | **4.0×** | 881 B (3.8×) | - | 1,200 (12 %) |",
            "| delta+deflate | 150 B | **22.2×** | 200 B (16.6×) | 99 (99 %) | 1,200 (12 %) |",
        ];
        assert_eq!(book.len(), want.len(), "{o}");
        for (row, want) in book.iter().zip(want) {
            assert!(row.contains(want), "{row}\n  wants {want}");
        }
        let doc = o.lines().find(|l| l.starts_with("| doc")).unwrap();
        assert!(doc.contains("| delta | 140 B | - |"), "{o}");
        assert!(o.find("| book").unwrap() < o.find("| doc").unwrap());
        let paced = o.lines().find(|l| l.starts_with("| tick")).unwrap();
        assert!(
            paced.contains("| 1 | 5–6 | 2 (2) | 0 | 10,000 of 10,000 |"),
            "{o}"
        );
        assert!(!o.contains("failed"));
        let mut bad = run("doc", "delta", 140.0, None);
        bad["failures"] = json!(["3 updates did not rebuild"]);
        let mut o = String::new();
        markdown(&[bad], &mut o);
        assert!(
            o.contains("Run `bw-doc-delta` **failed**: 3 updates did not rebuild."),
            "{o}"
        );
    }
}
