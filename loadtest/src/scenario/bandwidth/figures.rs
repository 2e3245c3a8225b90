//! The bandwidth report: what a run measured, as the JSON gives it, and what makes it fail.

use serde::Serialize;

use super::check::{Mismatches, Totals};
use super::shapes::Shape;
use super::BandwidthConfig;
use crate::gaps::GapCounts;
use crate::pool::{ConnectOutcome, RecvCounters};
use crate::publisher::PublisherResult;
use crate::scenario::{secs, ClientUsage, LatencySummary};

#[derive(Debug, Clone, Serialize)]
pub struct BandwidthParams {
    pub connections: usize,
    pub shape: Shape,
    /// `plain`, `delta`, `deflate` or `delta+deflate`.
    pub mode: &'static str,
    pub max_rate: Option<f64>,
    pub rate: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub threads: usize,
    pub source_ips: usize,
    pub topic: String,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deliveries {
    /// Updates received over the run, all subscribers.
    pub updates_received: u64,
    /// Publications of the run × subscribers (what arrives without a max rate or conflation).
    pub expected: u64,
    /// Updates per subscriber: mean, fewest, most.
    pub per_subscriber: f64,
    pub per_subscriber_min: u64,
    pub per_subscriber_max: u64,
    /// Updates stamped in the window (their latency is measured), and per second of it.
    pub delivered_in_window: u64,
    pub deliveries_per_s: f64,
    /// Subscribers whose last update was the last publication, and the others.
    pub newest_last: u64,
    pub newest_not_last: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WireFigures {
    /// Update frames as read from the socket (WebSocket header included, compressed as they
    /// came) per update received.
    pub wire_per_delivery: f64,
    /// The same updates as plain full frames (`data` instead of `delta`, not compressed) per
    /// update received.
    pub full_per_delivery: f64,
    /// full / wire: what deltas and compression saved together (1 with neither).
    pub full_over_wire: f64,
    /// The data (rebuilt) per update.
    pub data_per_delivery: f64,
    /// Everything read from the sockets (subscribe replies, snapshots, pings too) per update.
    pub socket_per_delivery: f64,
    pub wire_bytes: u64,
    pub full_wire_bytes: u64,
    pub socket_bytes: u64,
    /// Updates that came as deltas, and their share of all updates (%).
    pub delta_frames: u64,
    pub delta_share_pct: f64,
    /// Updates that came compressed (permessage-deflate), and their share of all updates (%).
    pub compressed_frames: u64,
    pub compressed_share_pct: f64,
    /// What compression saved: each compressed frame inflated, less the frame as it came
    /// (compare with the server's `tickwire_bytes_saved_total{by="deflate"}`).
    pub deflate_saved_bytes: u64,
    /// full − wire: the bytes deltas and compression saved (compare with the server's
    /// `tickwire_bytes_saved_total`, both labels).
    pub saved_bytes: u64,
    /// The same for the updates stamped in the window alone: the steady state, once every
    /// subscriber has had the full frame its subscription starts with.
    pub window: WindowFigures,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowFigures {
    pub updates: u64,
    pub wire_per_delivery: f64,
    pub full_per_delivery: f64,
    pub full_over_wire: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateFigures {
    pub max_rate: f64,
    /// Most updates a subscriber may get within any 1 s: R + 1.
    pub bound: f64,
    /// Most updates one subscriber got within any 1 s of arrival times.
    pub max_in_1s: u64,
    /// Subscribers over the bound (must be 0).
    pub over_bound: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerFigures {
    /// Over the window, % of one core.
    pub cpu_pct: Option<f64>,
    /// Over the run: `tickwire_delta_frames_total`, `tickwire_bytes_saved_total{by="delta"}`,
    /// `tickwire_compressed_frames_total`, `tickwire_bytes_saved_total{by="deflate"}`,
    /// `tickwire_bytes_sent_total`, `tickwire_messages_conflated_total`.
    pub delta_frames: Option<f64>,
    pub bytes_saved_delta: Option<f64>,
    pub compressed_frames: Option<f64>,
    pub bytes_saved_deflate: Option<f64>,
    pub bytes_sent: Option<f64>,
    pub conflated: Option<f64>,
    pub rss_end: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BandwidthReport {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub params: BandwidthParams,
    pub connect: ConnectOutcome,
    pub handshake_ms: Option<LatencySummary>,
    pub publish: PublisherResult,
    pub publish_rate: f64,
    pub base_seq: u64,
    pub final_seq: u64,
    pub deliveries: Deliveries,
    pub bytes: WireFigures,
    /// Updates whose data did not rebuild to what was published for their seq (must be 0).
    pub mismatches: u64,
    pub mismatch_kinds: Mismatches,
    pub max_rate: Option<RateFigures>,
    pub latency_ms: Option<LatencySummary>,
    pub gaps: GapCounts,
    pub receive: RecvCounters,
    pub closed_early: usize,
    pub server: ServerFigures,
    pub client: ClientUsage,
    pub other_cpu_pct: Option<f64>,
    /// Why the run failed (the tool then exits with 1): mismatches, and with a max rate
    /// subscribers over the bound or not ending on the last publication.
    pub failures: Vec<String>,
    pub errors: Vec<String>,
    pub interrupted: bool,
}

pub(super) fn wire_figures(t: &Totals, socket_bytes: u64) -> WireFigures {
    let per = |bytes: u64| bytes as f64 / t.updates.max(1) as f64;
    WireFigures {
        wire_per_delivery: per(t.wire_bytes),
        full_per_delivery: per(t.full_wire_bytes),
        full_over_wire: t.full_wire_bytes as f64 / t.wire_bytes.max(1) as f64,
        data_per_delivery: per(t.data_bytes),
        socket_per_delivery: per(socket_bytes),
        wire_bytes: t.wire_bytes,
        full_wire_bytes: t.full_wire_bytes,
        socket_bytes,
        delta_frames: t.delta_frames,
        delta_share_pct: 100.0 * t.delta_frames as f64 / t.updates.max(1) as f64,
        compressed_frames: t.compressed_frames,
        compressed_share_pct: 100.0 * t.compressed_frames as f64 / t.updates.max(1) as f64,
        deflate_saved_bytes: t.deflate_saved_bytes,
        saved_bytes: t.full_wire_bytes.saturating_sub(t.wire_bytes),
        window: WindowFigures {
            updates: t.window_updates,
            wire_per_delivery: t.window_wire_bytes as f64 / t.window_updates.max(1) as f64,
            full_per_delivery: t.window_full_wire_bytes as f64 / t.window_updates.max(1) as f64,
            full_over_wire: t.window_full_wire_bytes as f64 / t.window_wire_bytes.max(1) as f64,
        },
    }
}

/// What makes the run fail: wrong data always; with a max rate, the rate bound and the newest
/// publication not arriving last (the two promises of `max_rate`).
pub(super) fn failures(
    cfg: &BandwidthConfig,
    t: &Totals,
    d: &Deliveries,
    rate: Option<&RateFigures>,
) -> Vec<String> {
    let mut out = Vec::new();
    if t.mismatches.total() > 0 {
        out.push(format!(
            "{} updates did not rebuild to the data published for their seq: {:?}",
            t.mismatches.total(),
            t.mismatches
        ));
    }
    if d.expected > 0 && t.updates == 0 {
        out.push("no update arrived".into());
    }
    if let Some(r) = rate {
        if r.over_bound > 0 {
            out.push(format!(
                "{} subscribers got more than {} updates within 1 s (at most {})",
                r.over_bound, r.bound, r.max_in_1s
            ));
        }
        if d.newest_not_last > 0 && d.expected > 0 {
            out.push(format!(
                "{} subscribers did not end on the last publication within the {:.1} s drain",
                d.newest_not_last,
                secs(cfg.drain())
            ));
        }
    }
    out
}
