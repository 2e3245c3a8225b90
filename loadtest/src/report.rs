//! Human-readable summaries of the scenario reports.

use std::fmt::Write;

use crate::scenario::connect::ConnectReport;
use crate::scenario::fanout::FanoutReport;
use crate::scenario::idle::IdleReport;
use crate::scenario::patterns::PatternsReport;
use crate::scenario::publish::PublishReport;
use crate::scenario::reconnect::ReconnectReport;
use crate::scenario::topics::TopicsReport;
use crate::scenario::LatencySummary;

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn label(l: &str) -> String {
    if l.is_empty() {
        String::new()
    } else {
        format!(" [{l}]")
    }
}

pub(crate) fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}{unit}"))
}

pub(crate) fn bytes(v: Option<f64>) -> String {
    match v {
        Some(b) if b.abs() >= 1024.0 * 1024.0 => format!("{:.1} MiB", b / 1024.0 / 1024.0),
        Some(b) => format!("{} B", thousands(b.max(0.0).round() as u64)),
        None => "-".into(),
    }
}

pub(crate) fn latency(l: &Option<LatencySummary>) -> String {
    match l {
        Some(l) => format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  (n={})",
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            thousands(l.count)
        ),
        None => "-".into(),
    }
}

pub(crate) struct Table(Vec<(String, String)>);

impl Table {
    pub(crate) fn new() -> Table {
        Table(Vec::new())
    }
    pub(crate) fn row(&mut self, k: &str, v: impl Into<String>) -> &mut Table {
        self.0.push((k.to_string(), v.into()));
        self
    }
    pub(crate) fn render(&self, title: &str) -> String {
        let w = self.0.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("{title}\n");
        for (k, v) in &self.0 {
            let _ = writeln!(out, "  {k:<w$}  {v}");
        }
        out
    }
}

pub fn fanout(r: &FanoutReport) -> String {
    let p = &r.params;
    let g = &r.gaps;
    let d = &r.deliveries;
    let pace = match p.lockstep {
        Some(n) => format!("{n} publications in lockstep"),
        None => format!("R={} msg/s", p.rate),
    };
    let mut t = Table::new();
    t.row(
        "scenario",
        format!(
            "fanout{}: N={} T={} K={} {pace}, {} B payloads, over {}{}, warmup {}s + window {}s + drain ≤{}s",
            label(&r.label), p.connections, p.topics, p.subs_per_conn, p.payload_bytes,
            if p.transport == "sse" { "SSE" } else { "WebSocket" },
            if p.deflate { " (permessage-deflate)" } else { "" }, p.warmup_s, p.duration_s, p.drain_s
        ),
    )
    .row(
        "connect",
        format!(
            "{}; handshake {}",
            r.connect.line(),
            r.handshake_ms.map_or("-".into(), |h| format!("p50 {:.1} p99 {:.1} ms", h.p50, h.p99))
        ),
    )
    .row(
        "publish",
        format!(
            "{:.1} msg/s in window ({} in window, {} total, {} requests, {} errors, {} unconfirmed)",
            r.publish_rate,
            thousands(r.publish.sent_in_window),
            thousands(r.publish.sent),
            thousands(r.publish.requests),
            r.publish.errors,
            r.publish.unconfirmed
        ),
    )
    .row(
        "deliveries",
        format!(
            "{} of {} in window = {}/s, shortfall {:.3} %{}",
            thousands(d.delivered_in_window),
            thousands(d.expected_in_window),
            thousands(d.deliveries_per_s.round() as u64),
            d.shortfall_in_window_pct,
            if d.drained_early { " (drained early: all arrived)" } else { "" }
        ),
    )
    .row("latency", latency(&r.latency_ms))
    .row(
        "sequence",
        format!(
            "expected {} = received {} + conflated {} + lost {}  (jumps {}, streams conflated {}, with loss {}, out of order {})",
            thousands(g.expected),
            thousands(g.received),
            thousands(g.conflated),
            thousands(g.lost),
            thousands(g.conflation_jumps),
            g.streams_with_conflation,
            g.streams_with_loss,
            g.out_of_order
        ),
    )
    .row(
        "server",
        format!(
            "CPU {} of one core; RSS before {} / after connect {} / end {} ({} per connection); conflated (metric) {}",
            opt(r.server.cpu_pct, 0, " %"),
            bytes(r.server.rss_before),
            bytes(r.server.rss_after_connect),
            bytes(r.server.rss_end),
            bytes(r.server.rss_per_conn_end),
            opt(r.server.conflated_metric, 0, "")
        ),
    )
    .row(
        "client",
        format!(
            "CPU {:.0} % of one core; machine {:.0} % busy of {} cores (other processes {}); {} reads, {} compressed messages, {} closed early",
            r.client.cpu_pct,
            r.client.machine_busy_pct,
            r.client.ncpu,
            opt(r.other_cpu_pct, 0, " % of one core"),
            thousands(r.receive.reads),
            thousands(r.receive.compressed),
            r.closed_early
        ),
    );
    let mut out = t.render("tickwire-loadtest fanout");
    for e in &r.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    out
}

pub fn idle(r: &IdleReport) -> String {
    let s = &r.server;
    let mut t = Table::new();
    t.row(
        "scenario",
        format!(
            "idle{}: N={} T={} K={}, held {} s{}",
            label(&r.label),
            r.params.connections,
            r.params.topics,
            r.params.subs_per_conn,
            r.params.hold_s,
            if r.params.deflate {
                ", permessage-deflate"
            } else {
                ""
            }
        ),
    )
    .row(
        "connect",
        format!("{}, {} closed early", r.connect.line(), r.closed_early),
    )
    .row(
        "server RSS",
        format!(
            "empty {} / after connect {} / end {}",
            bytes(s.rss_empty),
            bytes(s.rss_after_connect),
            bytes(s.rss_end)
        ),
    )
    .row(
        "per connection",
        format!(
            "{} after connect, {} at end of hold",
            bytes(s.rss_per_conn_after_connect),
            bytes(s.rss_per_conn_end)
        ),
    )
    .row(
        "connections",
        format!(
            "{} before, {} at end (tickwire_connections)",
            opt(s.connections_before, 0, ""),
            opt(s.connections_end, 0, "")
        ),
    )
    .row(
        "server CPU",
        opt(s.cpu_pct_hold, 1, " % of one core while holding"),
    );
    let mut out = t.render("tickwire-loadtest idle");
    for e in &r.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    out
}

pub fn connect(r: &ConnectReport) -> String {
    let mut t = Table::new();
    t.row(
        "scenario",
        format!(
            "connect{}: N={}, {} at a time, {} threads, {} source addresses{}",
            label(&r.label),
            r.params.connections,
            r.params.concurrency,
            r.params.threads,
            r.params.source_ips,
            if r.params.deflate {
                ", permessage-deflate"
            } else {
                ""
            }
        ),
    )
    .row(
        "connected",
        format!(
            "{} of {} ({} failed) in {:.2} s = {} handshakes/s",
            r.connect.connected,
            r.connect.requested,
            r.connect.failed,
            r.connect.seconds,
            thousands(r.handshakes_per_s.round() as u64)
        ),
    )
    .row("handshake", latency(&r.handshake_ms))
    .row(
        "server",
        format!(
            "CPU {} of one core; {} RSS per connection",
            opt(r.server_cpu_pct, 0, " %"),
            bytes(r.server_rss_per_conn)
        ),
    )
    .row(
        "client",
        format!(
            "CPU {:.0} % of one core; machine {:.0} % busy",
            r.client.cpu_pct, r.client.machine_busy_pct
        ),
    );
    let mut out = t.render("tickwire-loadtest connect");
    for e in &r.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    out
}

pub fn publish(r: &PublishReport) -> String {
    let mut t = Table::new();
    t.row(
        "scenario",
        format!(
            "publish{}: {} connections, {} topics, {} B payloads, warmup {}s + window {}s",
            label(&r.label),
            r.params.concurrency,
            r.params.topics,
            r.params.payload_bytes,
            r.params.warmup_s,
            r.params.duration_s
        ),
    );
    for run in &r.runs {
        t.row(
            &format!("{:?} ×{}", run.mode, run.messages_per_request).to_lowercase(),
            format!(
                "{} req/s, {} msg/s, {} errors; request {}; server CPU {}, client CPU {:.0} %",
                thousands(run.requests_per_s.round() as u64),
                thousands(run.messages_per_s.round() as u64),
                run.errors,
                run.latency_ms
                    .map_or("-".into(), |l| format!("p50 {:.2} p99 {:.2} ms", l.p50, l.p99)),
                opt(run.server_cpu_pct, 0, " %"),
                run.client.cpu_pct
            ),
        );
        if let Some(e) = &run.first_error {
            t.row("  first error", e.clone());
        }
    }
    t.render("tickwire-loadtest publish")
}

fn gaps_row(g: &crate::gaps::GapCounts) -> String {
    format!(
        "expected {} = received {} + conflated {} + lost {}  (streams conflated {}, with loss {}, duplicates {})",
        thousands(g.expected),
        thousands(g.received),
        thousands(g.conflated),
        thousands(g.lost),
        g.streams_with_conflation,
        g.streams_with_loss,
        g.out_of_order
    )
}

pub fn topics(r: &TopicsReport) -> String {
    let p = &r.params;
    let m = &r.memory;
    let mut t = Table::new();
    t.row(
        "scenario",
        format!(
            "topics{}: N={} T={} (groups of {}) K={} ({} patterns) R={} msg/s, {} B payloads, warmup {}s + window {}s",
            label(&r.label), p.connections, p.topics, p.group, p.subs_per_conn, p.patterns_per_conn, p.rate,
            p.payload_bytes, p.warmup_s, p.duration_s
        ),
    )
    .row(
        "connect",
        r.connect.line(),
    )
    .row(
        "deliveries",
        format!(
            "{} of {} in window = {}/s (offered {}/s); publish {:.0} msg/s",
            thousands(r.delivered_in_window),
            thousands(r.expected_in_window),
            thousands(r.deliveries_per_s.round() as u64),
            thousands(r.offered_deliveries_per_s.round() as u64),
            r.publish_rate
        ),
    )
    .row("latency", latency(&r.latency_ms))
    .row("sequence", gaps_row(&r.gaps))
    .row(
        "memory",
        format!(
            "RSS empty {} / {} topics {} / subscribed {}: {} per topic, {} per subscription ({} subscriptions, {} streams); topics created in {:.1} s",
            bytes(m.rss_empty),
            thousands(u64::from(p.topics)),
            bytes(m.rss_topics),
            bytes(m.rss_subscribed),
            bytes(m.per_topic),
            bytes(m.per_subscription),
            thousands(m.subscriptions),
            thousands(m.streams),
            m.create_s
        ),
    )
    .row(
        "server",
        format!(
            "CPU {} of one core; RSS end {}",
            opt(r.server_cpu_pct, 0, " %"),
            bytes(r.server_rss_end)
        ),
    )
    .row(
        "client",
        format!(
            "CPU {:.0} % of one core; other processes {}; {} closed early",
            r.client.cpu_pct,
            opt(r.other_cpu_pct, 0, " % of one core"),
            r.closed_early
        ),
    );
    let mut out = t.render("tickwire-loadtest topics");
    for e in &r.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    out
}

pub fn reconnect(r: &ReconnectReport) -> String {
    let p = &r.params;
    let s = &r.storm;
    let v = &r.server;
    let mut t = Table::new();
    t.row(
        "scenario",
        format!(
            "reconnect{}: N={} T={} (groups of {}) K={} ({} patterns) R={} msg/s, {} at once",
            label(&r.label), p.connections, p.topics, p.group, p.subs_per_conn, p.patterns_per_conn, p.rate,
            p.connect_concurrency
        ),
    )
    .row(
        "first connect",
        format!("{} ready in {:.2} s", r.connect.ready, r.connect.seconds),
    )
    .row(
        "storm",
        format!(
            "all back in {:.2} s: {} recovered, {} reset, {} failed{} (topics: {} recovered, {} reset; {} updates caught up)",
            s.seconds,
            s.recovered,
            s.reset,
            s.failed,
            if s.timed_out { ", TIMED OUT" } else { "" },
            thousands(s.topics_recovered),
            thousands(s.topics_reset),
            thousands(s.caught_up)
        ),
    )
    .row("reconnect handshake", latency(&r.rehandshake_ms))
    .row("live during storm", latency(&r.storm_delivery_ms))
    .row("sequence", gaps_row(&r.gaps))
    .row(
        "server in storm",
        format!(
            "CPU {}; RSS before {} peak {}; /healthz max {} p99 {} ({} samples, {} failed); listen overflows {} drops {}",
            opt(v.cpu_pct, 0, " %"),
            bytes(v.rss_before),
            bytes(v.rss_peak),
            opt(v.healthz_max_ms, 1, " ms"),
            opt(v.healthz_p99_ms, 1, " ms"),
            v.healthz_samples,
            v.healthz_failed,
            v.listen_overflows.map_or("-".into(), |x| x.to_string()),
            v.listen_drops.map_or("-".into(), |x| x.to_string())
        ),
    )
    .row(
        "client in storm",
        format!(
            "CPU {:.0} % of one core; machine {:.0} % busy of {} cores (other processes {})",
            r.client.cpu_pct,
            r.client.machine_busy_pct,
            r.client.ncpu,
            opt(r.other_cpu_pct, 0, " % of one core")
        ),
    );
    let mut out = t.render("tickwire-loadtest reconnect");
    for e in &r.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    out
}

pub fn patterns(r: &PatternsReport) -> String {
    format!(
        "patterns: {} topics created in {:.1} s (server RSS {}), {} subscribes of a pattern matching {}: {}\n",
        r.topics,
        r.create_s,
        r.server_rss_mib.map_or("?".into(), |m| format!("{m:.1} MiB")),
        r.subscribes,
        r.per_pattern,
        r.subscribe_ms.as_ref().map_or("no samples".into(), |l| format!(
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            l.p50, l.p99, l.max
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(20_030_000), "20,030,000");
    }
}
