//! The human summary of a bandwidth run (the JSON report has every figure).

use std::fmt::Write as _;

use super::BandwidthReport;
use crate::report::{bytes, label, latency, opt, thousands, Table};

pub fn text(r: &BandwidthReport) -> String {
    let p = &r.params;
    let d = &r.deliveries;
    let b = &r.bytes;
    let s = &r.server;
    let mut t = Table::new();
    t.row(
        "scenario",
        format!(
            "bandwidth{}: N={} shape={} mode={}{} R={} msg/s on {}, warmup {}s + window {}s + drain ≤{}s",
            label(&r.label),
            p.connections,
            p.shape.name(),
            p.mode,
            p.max_rate.map_or(String::new(), |m| format!(" max_rate={m}")),
            p.rate,
            p.topic,
            p.warmup_s,
            p.duration_s,
            p.drain_s
        ),
    )
    .row(
        "connect",
        r.connect.line(),
    )
    .row(
        "publish",
        format!(
            "{:.1} msg/s in window, {} in all (seq {} → {}), {} errors",
            r.publish_rate,
            thousands(r.publish.sent),
            r.base_seq,
            r.final_seq,
            r.publish.errors
        ),
    )
    .row(
        "deliveries",
        format!(
            "{} updates of {} published × subscribers; per subscriber {:.1} (min {}, max {}); \
             {}/s in window; last one is the newest for {} of {}",
            thousands(d.updates_received),
            thousands(d.expected),
            d.per_subscriber,
            d.per_subscriber_min,
            d.per_subscriber_max,
            thousands(d.deliveries_per_s.round() as u64),
            d.newest_last,
            d.newest_last + d.newest_not_last
        ),
    )
    .row(
        "bytes/delivery",
        format!(
            "in window: wire {:.1} B, as full frames {:.1} B: full/wire {:.2}× ({} updates)",
            b.window.wire_per_delivery,
            b.window.full_per_delivery,
            b.window.full_over_wire,
            thousands(b.window.updates)
        ),
    )
    .row(
        "",
        format!(
            "whole run: wire {:.1} B, as full frames {:.1} B: full/wire {:.2}×; data {:.1} B; all socket bytes {:.1} B",
            b.wire_per_delivery, b.full_per_delivery, b.full_over_wire, b.data_per_delivery, b.socket_per_delivery
        ),
    )
    .row(
        "deltas",
        format!(
            "{} frames ({:.1} %), {} saved; server: {} delta frames, {} saved, {} sent",
            thousands(b.delta_frames),
            b.delta_share_pct,
            // What the deltas saved alone: compression's share of full − wire taken out.
            bytes(Some(b.saved_bytes.saturating_sub(b.deflate_saved_bytes) as f64)),
            opt(s.delta_frames, 0, ""),
            bytes(s.bytes_saved_delta),
            bytes(s.bytes_sent)
        ),
    )
    .row(
        "compression",
        format!(
            "{} frames ({:.1} %), {} saved; server: {} compressed frames, {} saved",
            thousands(b.compressed_frames),
            b.compressed_share_pct,
            bytes(Some(b.deflate_saved_bytes as f64)),
            opt(s.compressed_frames, 0, ""),
            bytes(s.bytes_saved_deflate)
        ),
    )
    .row("check", {
        let k = &r.mismatch_kinds;
        format!(
            "{} mismatches (data differs {}, bad delta {}, delta without its base {}, unknown seq {}, unreadable {})",
            r.mismatches, k.differs, k.bad_delta, k.no_base, k.unknown_seq, k.unreadable
        )
    });
    if let Some(m) = &r.max_rate {
        t.row(
            "max rate",
            format!(
                "at most {} updates within 1 s per subscriber (bound {}), {} over it",
                m.max_in_1s, m.bound, m.over_bound
            ),
        );
    }
    t.row("latency", latency(&r.latency_ms))
        .row(
            "sequence",
            format!(
                "received {} + skipped {} + lost {} of {}",
                thousands(r.gaps.received),
                thousands(r.gaps.conflated),
                thousands(r.gaps.lost),
                thousands(r.gaps.expected)
            ),
        )
        .row(
            "CPU",
            format!(
                "server {}, client {:.0} %, other processes {} (of one core); server conflated {}",
                opt(s.cpu_pct, 0, " %"),
                r.client.cpu_pct,
                opt(r.other_cpu_pct, 0, " %"),
                opt(s.conflated, 0, "")
            ),
        );
    let mut out = t.render("tickwire-loadtest bandwidth");
    for e in &r.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    for f in &r.failures {
        let _ = writeln!(out, "  FAILED: {f}");
    }
    out
}
