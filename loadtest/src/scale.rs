//! The issue-16 tables of the benchmark page: many topics (`topics`, against its one-topic
//! fan-out baseline) and reconnect storms (`reconnect`, against the plain `connect` of as many
//! clients), with the targets judged from the same run.
//!
//! The baseline of a `topics` run labelled `L` is our fan-out run labelled `L-baseline`: one
//! topic, N subscribers, at the topics run's offered delivery rate (`run-benchmarks.sh` runs it
//! right after, at `offered_deliveries_per_s / N` msg/s).

use std::fmt::Write as _;

use serde_json::Value;

use crate::report::thousands;

/// Deliveries/s of `topics` ≥ this × the one-topic fan-out at the same delivery rate.
pub const TOPICS_RATIO_TARGET: f64 = 0.8;
/// Bytes per topic with no subscriber and one value.
pub const PER_TOPIC_TARGET: f64 = 300.0;
/// Reconnect storm time ≤ this × the `connect` time of as many clients.
pub const STORM_RATIO_TARGET: f64 = 1.5;
/// `/healthz` during the storm.
pub const HEALTHZ_TARGET_MS: f64 = 100.0;

/// A fan-out run of ours, as the tables need it: label, deliveries/s, lost.
pub struct Baseline {
    pub label: String,
    pub deliveries_per_s: f64,
    pub lost: Option<u64>,
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn n(v: &Value, path: &[&str]) -> u64 {
    f(v, path).unwrap_or(0.0).max(0.0) as u64
}

fn ms(x: Option<f64>) -> String {
    match x {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

fn bytes(x: Option<f64>) -> String {
    x.map_or("-".into(), |b| {
        format!("{} B", thousands(b.max(0.0).round() as u64))
    })
}

fn mib(x: Option<f64>) -> String {
    x.map_or("-".into(), |b| format!("{:.0} MiB", b / 1048576.0))
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// The `topics` table (nothing when there is no run).
pub fn topics_markdown(runs: &[Value], baselines: &[Baseline], o: &mut String) {
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(o, "### Many topics, many subscriptions (issue 16)\n");
    let _ = writeln!(
        o,
        "| N | topics | subs/conn (patterns) | R msg/s | deliveries/s | one-topic fan-out at the same rate | ratio | \
         delivered / expected (window) | lost | duplicates | p50 | p99 (ms) | per topic | per subscription | CPU server |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut verdicts = Vec::new();
    for v in runs {
        let label = v.get("label").and_then(Value::as_str).unwrap_or_default();
        let dps = f(v, &["deliveries_per_s"]).unwrap_or(0.0);
        let lost = n(v, &["gaps", "lost"]);
        let base = baselines.iter().find(|b| b.label == format!("{label}-baseline"));
        let ratio = base.map(|b| dps / b.deliveries_per_s.max(1e-9));
        let per_topic = f(v, &["memory", "per_topic"]);
        let _ = writeln!(
            o,
            "| {} | {} | {} ({}) | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(n(v, &["params", "connections"])),
            thousands(n(v, &["params", "topics"])),
            n(v, &["params", "subs_per_conn"]),
            n(v, &["params", "patterns_per_conn"]),
            thousands(n(v, &["params", "rate"])),
            thousands(dps.round() as u64),
            base.map_or("-".into(), |b| format!(
                "{} (lost {})",
                thousands(b.deliveries_per_s.round() as u64),
                b.lost.map_or("-".into(), thousands)
            )),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
            thousands(n(v, &["delivered_in_window"])),
            thousands(n(v, &["expected_in_window"])),
            thousands(lost),
            thousands(n(v, &["gaps", "out_of_order"])),
            ms(f(v, &["latency_ms", "p50"])),
            ms(f(v, &["latency_ms", "p99"])),
            bytes(per_topic),
            bytes(f(v, &["memory", "per_subscription"])),
            f(v, &["server_cpu_pct"]).map_or("-".into(), |c| format!("{c:.0} %")),
        );
        verdicts.push(format!(
            "deliveries/s ≥ {TOPICS_RATIO_TARGET}× the one-topic fan-out with 0 lost: {}; \
             ≤ {PER_TOPIC_TARGET} B per topic: {}",
            verdict(ratio.map(|r| {
                r >= TOPICS_RATIO_TARGET && lost == 0 && base.is_some_and(|b| b.lost == Some(0))
            })),
            verdict(per_topic.map(|b| b <= PER_TOPIC_TARGET)),
        ));
    }
    let _ = writeln!(
        o,
        "\nT topics in groups of 10 (`<prefix><g>.<j>`), each created with one value and no subscriber; \
         each connection names consecutive topics and subscribes to group patterns (`<prefix><g>.*`, \
         10 topics each); one publisher round-robin over all T. *Per topic*: (RSS after creating the \
         topics − RSS of the empty server) / T. *Per subscription*: (RSS after subscribing − RSS \
         after creating) / (N × subscriptions per connection), connections' own memory included. \
         *Duplicates*: updates whose `seq` did not increase. The baseline is `fanout` with one topic \
         and N subscribers at the same deliveries/s offered, on a fresh server, in the same run.\n"
    );
    for v in verdicts {
        let _ = writeln!(o, "- Targets: {v}.");
    }
    let _ = writeln!(o);
}

/// The `connect` run to set a `reconnect` run against: the one labelled alike
/// (`reconnect-n10000-b` and `connect-n10000-b`), else the first of as many clients.
fn connect_of<'a>(run: &Value, connect: &'a [Value]) -> Option<&'a Value> {
    let conns = n(run, &["params", "connections"]);
    let label = run.get("label").and_then(Value::as_str).unwrap_or_default();
    let twin = label
        .strip_prefix("reconnect")
        .map(|rest| format!("connect{rest}"));
    let label_of = |c: &Value| c.get("label").and_then(Value::as_str).map(str::to_owned);
    (twin.and_then(|t| {
        connect
            .iter()
            .find(|c| label_of(c).as_deref() == Some(t.as_str()))
    }))
    .or_else(|| connect.iter().find(|c| n(c, &["params", "connections"]) == conns))
}

/// The `reconnect` table (nothing when there is no run): tickwire's runs, then those against
/// the reference (`reference`: rawstorm's `connect` and `reconnect` runs), which does the
/// socket work of a storm and nothing else, so its ratio is the least this machine allows.
pub fn reconnect_markdown(runs: &[Value], connect: &[Value], reference: &[Value], o: &mut String) {
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(o, "### Reconnect storm (issue 16)\n");
    let _ = writeln!(
        o,
        "| server | N | streams/conn | R msg/s | all back in | `connect` of N | ratio | recovered / reset / failed | \
         gaps | duplicates | reconnect handshake p99 | live p99 during storm | `/healthz` max | \
         CPU server | RSS peak | listen overflows / drops |"
    );
    let _ = writeln!(
        o,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let ref_runs: Vec<&Value> = (reference.iter())
        .filter(|v| v.get("scenario").and_then(Value::as_str) == Some("reconnect"))
        .collect();
    let ref_connects: Vec<Value> = (reference.iter())
        .filter(|v| v.get("scenario").and_then(Value::as_str) == Some("connect"))
        .cloned()
        .collect();
    let mut verdicts = Vec::new();
    let (mut ours_s, mut ref_s, mut ref_ratios) = (Vec::new(), Vec::new(), Vec::new());
    let rows = (runs.iter().map(|v| (v, false))).chain(ref_runs.iter().map(|v| (*v, true)));
    for (v, is_ref) in rows {
        let conns = n(v, &["params", "connections"]);
        let storm_s = f(v, &["storm", "seconds"]).unwrap_or(f64::NAN);
        let connect_s = connect_of(v, if is_ref { &ref_connects } else { connect })
            .and_then(|c| f(c, &["connect", "seconds"]));
        let ratio = connect_s.map(|c| storm_s / c.max(1e-9));
        let gaps = n(v, &["gaps", "conflated"]) + n(v, &["gaps", "lost"]);
        let healthz = f(v, &["server", "healthz_max_ms"]);
        let overflows = f(v, &["server", "listen_overflows"]).map(|x| x as u64);
        let drops = f(v, &["server", "listen_drops"]).map(|x| x as u64);
        let streams = f(v, &["gaps", "expected"]).and(Some(
            n(v, &["storm", "topics_recovered"]) + n(v, &["storm", "topics_reset"]),
        ));
        // The reference delivers nothing: its gap and delivery columns would mean nothing.
        let delivered = |s: String| if is_ref { "-".to_string() } else { s };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.2} s | {} | {} | {} / {} / {} | {} | {} | {} ms | {} | {} ms | {} | {} | {} / {} |",
            if is_ref { "rawstorm (reference)" } else { "tickwire" },
            thousands(conns),
            streams.map_or("-".into(), |s| format!("{:.0}", s as f64 / conns.max(1) as f64)),
            thousands(n(v, &["params", "rate"])),
            storm_s,
            connect_s.map_or("-".into(), |c| format!("{c:.2} s")),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
            thousands(n(v, &["storm", "recovered"])),
            thousands(n(v, &["storm", "reset"])),
            thousands(n(v, &["storm", "failed"])),
            delivered(thousands(gaps)),
            delivered(thousands(n(v, &["gaps", "out_of_order"]))),
            ms(f(v, &["rehandshake_ms", "p99"])),
            delivered(format!("{} ms", ms(f(v, &["storm_delivery_ms", "p99"])))),
            ms(healthz),
            f(v, &["server", "cpu_pct"]).map_or("-".into(), |c| format!("{c:.0} %")),
            mib(f(v, &["server", "rss_peak"])),
            overflows.map_or("-".into(), |x| x.to_string()),
            drops.map_or("-".into(), |x| x.to_string()),
        );
        if is_ref {
            ref_s.push(storm_s);
            ref_ratios.extend(ratio);
            continue;
        }
        ours_s.push(storm_s);
        let all_back = n(v, &["storm", "failed"]) == 0 && n(v, &["storm", "reset"]) == 0;
        verdicts.push(format!(
            "back in ≤ {STORM_RATIO_TARGET}× the `connect` time, every client recovered with no gap or \
             duplicate: {}; `/healthz` < {HEALTHZ_TARGET_MS} ms: {}; no listen-queue overflow: {}",
            verdict(ratio.map(|r| {
                r <= STORM_RATIO_TARGET && all_back && gaps == 0 && n(v, &["gaps", "out_of_order"]) == 0
            })),
            verdict(healthz.map(|h| h < HEALTHZ_TARGET_MS)),
            verdict(overflows.map(|x| x == 0)),
        ));
    }
    let _ = writeln!(
        o,
        "\nEvery connection subscribed (exact names and a group pattern), a publisher running; then \
         all drop at once (client side) and reconnect, at most as many at once as `connect` \
         (`--connect-concurrency`), subscribing again with `since` (the last position seen of \
         each topic). *All back*: the drop to the last recovering `subscribed` reply. *Gaps* and \
         *duplicates* over the whole run, every stream. *Live p99*: updates published after a \
         connection was back, to it, while others were still reconnecting. `/healthz` on a new \
         connection every ~20 ms during the storm. Listen overflows / drops: the kernel's \
         `TcpExt` counters over the storm (the whole machine). `connect of N`: the `connect` \
         scenario's time for as many clients against the same server, same run. *rawstorm*: the \
         storm's reference (`loadtest/src/bin/rawstorm.rs`): it accepts, upgrades, answers each \
         subscribe with positions and `recovered` and closes a socket whose client left, with \
         no hub, history or delivery: the socket work every server must do, and nothing else.\n"
    );
    for v in verdicts {
        let _ = writeln!(o, "- Targets: {v}.");
    }
    let mean = |xs: &[f64]| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    if let Some(r) = mean(&ref_ratios) {
        let _ = writeln!(
            o,
            "- The reference's own ratio: {r:.2} (the least any server reaches on this machine and \
             client)."
        );
    }
    if let (Some(a), Some(b)) = (mean(&ours_s), mean(&ref_s)) {
        let _ = writeln!(
            o,
            "- tickwire's storm against the reference's: {:.2}× its time (means of {} and {} runs).",
            a / b.max(1e-9),
            ours_s.len(),
            ref_s.len()
        );
    }
    let _ = writeln!(o);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topics_ratio_uses_the_labelled_baseline() {
        let run = json!({"scenario":"topics","label":"topics-n10","deliveries_per_s":900.0,
            "params":{"connections":10,"topics":100,"subs_per_conn":5,"patterns_per_conn":1,"rate":100.0},
            "gaps":{"lost":0,"out_of_order":0},"memory":{"per_topic":250.0}});
        let base = |l: &str, d: f64| Baseline {
            label: l.into(),
            deliveries_per_s: d,
            lost: Some(0),
        };
        let mut o = String::new();
        topics_markdown(
            std::slice::from_ref(&run),
            &[base("other-baseline", 10.0), base("topics-n10-baseline", 1000.0)],
            &mut o,
        );
        assert!(o.contains("| 0.90 |"), "{o}");
        assert!(o.contains("0 lost: **met**; ≤ 300 B per topic: **met**"), "{o}");
        let mut o = String::new();
        topics_markdown(&[run], &[base("topics-n10-baseline", 1200.0)], &mut o);
        assert!(o.contains("| 0.75 |") && o.contains("0 lost: **missed**"), "{o}");
    }

    #[test]
    fn storm_ratio_uses_the_connect_run_of_as_many_clients() {
        let run = json!({"scenario":"reconnect","params":{"connections":100,"rate":10.0},
            "storm":{"seconds":1.2,"recovered":100,"reset":0,"failed":0},
            "gaps":{"conflated":0,"lost":0,"out_of_order":0},
            "server":{"healthz_max_ms":12.0,"listen_overflows":0,"listen_drops":0}});
        let connect = [
            json!({"params":{"connections":5},"connect":{"seconds":0.1}}),
            json!({"params":{"connections":100},"connect":{"seconds":1.0}}),
        ];
        let mut o = String::new();
        reconnect_markdown(&[run], &connect, &[], &mut o);
        assert!(o.contains("| 1.20 |"), "{o}");
        assert!(
            o.contains("duplicate: **met**; `/healthz` < 100 ms: **met**; no listen-queue overflow: **met**"),
            "{o}"
        );
    }

    #[test]
    fn storm_rows_pair_each_server_with_its_own_connect_run() {
        let storm = |label: &str, secs: f64| {
            json!({"scenario":"reconnect","label":label,"params":{"connections":100,"rate":10.0},
                "storm":{"seconds":secs,"recovered":100,"reset":0,"failed":0},
                "gaps":{"conflated":0,"lost":7,"out_of_order":0},
                "server":{"healthz_max_ms":12.0,"listen_overflows":0,"listen_drops":0}})
        };
        let connect = |label: &str, secs: f64| json!({"scenario":"connect","label":label,"params":{"connections":100},"connect":{"seconds":secs}});
        let ours = [storm("reconnect-n100-b", 3.0)];
        let our_connects = [connect("connect-n100", 9.0), connect("connect-n100-b", 2.0)];
        let reference = [
            connect("connect-n100-rawstorm", 1.0),
            storm("reconnect-n100-rawstorm", 1.6),
            connect("connect-n100-rawstorm-b", 0.5),
            storm("reconnect-n100-rawstorm-b", 1.0),
        ];
        let mut o = String::new();
        reconnect_markdown(&ours, &our_connects, &reference, &mut o);
        // tickwire against its `-b` connect (3.0 / 2.0), each reference run against its own.
        assert!(
            o.contains("| tickwire | 100 |") && o.contains("| 2.00 s | 1.50 |"),
            "{o}"
        );
        assert!(
            o.contains("| 1.00 s | 1.60 |") && o.contains("| 0.50 s | 2.00 |"),
            "{o}"
        );
        // The reference delivers nothing: its lost updates are not shown as gaps.
        assert!(o.contains("| 1.60 | 100 / 0 / 0 | - | - |"), "{o}");
        assert!(o.contains("- Targets: back in ≤ 1.5× the `connect` time, every client recovered with no gap or duplicate: **missed**"), "{o}");
        assert!(o.contains("The reference's own ratio: 1.80"), "{o}");
        assert!(
            o.contains("3.00 / 1.30 = ") || o.contains("2.31× its time"),
            "{o}"
        );
    }
}
