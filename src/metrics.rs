//! Prometheus metrics, in the server's own registry (no global state: every server instance,
//! and so every test, has its own).
//!
//! Hot-path cost: deliveries are counted once per socket write (`inc_by` of the frames and
//! bytes written), not once per frame. The delivery latency and queue size histograms are
//! sampled once per socket write too: the latency observed is that of the oldest publication in
//! the write, the queue size is the bytes the write took. Publishing counts one atomic add per
//! publication plus one per conflation.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::protocol::disconnect::Disconnect;

/// Where a publication came from (`source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Http,
    Client,
    Feed,
}

impl Source {
    const ALL: [Source; 3] = [Source::Http, Source::Client, Source::Feed];

    fn label(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Client => "client",
            Source::Feed => "feed",
        }
    }
}

/// Which transport carries a connection (`transport` label of the connection metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `GET /ws`: a WebSocket.
    Ws,
    /// `GET /sse`: a Server-Sent Events stream.
    Sse,
}

impl Transport {
    const ALL: [Transport; 2] = [Transport::Ws, Transport::Sse];

    fn label(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }
}

/// Reasons a connection attempt is refused (`reason` label of the rejected counter).
pub const REJECT_LIMIT: &str = "limit";
pub const REJECT_HANDSHAKE_TIMEOUT: &str = "handshake_timeout";
pub const REJECT_BAD_HANDSHAKE: &str = "bad_handshake";
pub const REJECT_AUTH: &str = "auth";
pub const REJECT_ORIGIN: &str = "origin";
pub const REJECT_IP_LIMIT: &str = "ip_limit";
/// A TLS handshake that failed (a timed-out one counts as `handshake_timeout`).
pub const REJECT_TLS: &str = "tls";
/// A connection from a trusted proxy without a valid PROXY header (`server.proxy_protocol`; a
/// header that does not arrive in time counts as `handshake_timeout`).
pub const REJECT_PROXY_PROTOCOL: &str = "proxy_protocol";
const REJECT_REASONS: [&str; 8] = [
    REJECT_LIMIT,
    REJECT_HANDSHAKE_TIMEOUT,
    REJECT_BAD_HANDSHAKE,
    REJECT_AUTH,
    REJECT_ORIGIN,
    REJECT_IP_LIMIT,
    REJECT_TLS,
    REJECT_PROXY_PROTOCOL,
];

const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];
const QUEUE_BUCKETS: [f64; 10] = [
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];
const HTTP_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

pub struct Metrics {
    registry: Registry,
    /// Open connections, by transport: read through [`Metrics::connections`].
    connections: [IntGauge; 2],
    /// Connections accepted, by transport: [`Metrics::connections_accepted`].
    connections_accepted: [IntCounter; 2],
    pub connections_rejected: IntCounterVec,
    disconnects: IntCounterVec,
    pub subscriptions: IntGauge,
    pub topics: IntGauge,
    pub topics_evicted: IntCounter,
    published: [IntCounter; 3],
    pub delivered: IntCounter,
    pub conflated: IntCounter,
    /// `update` frames queued as a Fossil delta instead of the full data.
    pub delta_frames: IntCounter,
    /// `tickwire_bytes_saved_total{by="delta"}`: bytes of full frames not queued thanks to deltas.
    pub bytes_saved_delta: IntCounter,
    /// Frames queued compressed (permessage-deflate).
    pub compressed_frames: IntCounter,
    /// `tickwire_bytes_saved_total{by="deflate"}`.
    pub bytes_saved_deflate: IntCounter,
    pub bytes_sent: IntCounter,
    pub bytes_received: IntCounter,
    pub delivery_latency: Histogram,
    pub queue_bytes: Histogram,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub history_messages: IntGauge,
    pub history_bytes: IntGauge,
    recoveries: [IntCounter; 2],
    pub broker_up: IntGauge,
    pub broker_publish_duration: Histogram,
    pub broker_reconnects: IntCounter,
    pub broker_receive_dropped: IntCounter,
    pub idempotent_replays: IntCounter,
    pub idempotency_keys: IntGauge,
    pub idempotency_bytes: IntGauge,
    /// Fetches of `auth.jwt.jwks_url`: [error, ok].
    jwks_refreshes: [IntCounter; 2],
    pub jwks_keys: IntGauge,
    /// Reloads (SIGHUP or a changed file): [error, ok].
    config_reloads: [IntCounter; 2],
    /// Members of presence rooms on this node.
    pub presence_members: IntGauge,
    pub presence_changes_dropped: IntCounter,
    /// Topics this node's occupancy events count as occupied (cluster-wide in a cluster).
    pub occupied_topics: IntGauge,
    /// `tickwire_webhook_requests_total{event,result}`.
    webhook_requests: IntCounterVec,
    pub webhook_queue_dropped: IntCounter,
}

/// The `result` of one webhook request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    /// A 2xx response.
    Ok,
    /// Another status: retried while attempts remain.
    Status,
    /// No response (connection refused, timeout).
    Error,
}

fn reg<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> prometheus::Result<C> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help)?);
        let gauge = |name: &str, help: &str| reg(&r, IntGauge::new(name, help)?);
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(&r, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            reg(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?,
            )
        };

        let published_vec = counter_vec(
            "tickwire_messages_published_total",
            "Publications accepted, by source.",
            &["source"],
        )?;
        let published = Source::ALL.map(|s| published_vec.with_label_values(&[s.label()]));
        let bytes_saved = counter_vec(
            "tickwire_bytes_saved_total",
            "Bytes not sent compared with the full uncompressed frames, by what saved them.",
            &["by"],
        )?;
        // Every transport's series exists from start-up, so that sums over them never miss one.
        let connections = reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "tickwire_connections",
                    "Open connections, by transport (ws, sse).",
                ),
                &["transport"],
            )?,
        )?;
        let connections = Transport::ALL.map(|t| connections.with_label_values(&[t.label()]));
        let connections_accepted = counter_vec(
            "tickwire_connections_accepted_total",
            "Connections accepted, by transport (ws, sse).",
            &["transport"],
        )?;
        let connections_accepted =
            Transport::ALL.map(|t| connections_accepted.with_label_values(&[t.label()]));
        let connections_rejected = counter_vec(
            "tickwire_connections_rejected_total",
            "Connection attempts refused before the WebSocket session started, by reason.",
            &["reason"],
        )?;
        for reason in REJECT_REASONS {
            connections_rejected.with_label_values(&[reason]);
        }
        let disconnects = counter_vec(
            "tickwire_disconnects_total",
            "WebSocket connections ended, by reason.",
            &["reason"],
        )?;
        for reason in Disconnect::LABELS {
            disconnects.with_label_values(&[reason]);
        }
        let http_duration = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "tickwire_http_request_duration_seconds",
                    "HTTP request handling time, by route.",
                )
                .buckets(HTTP_BUCKETS.to_vec()),
                &["route"],
            )?,
        )?;
        let recoveries = counter_vec(
            "tickwire_recoveries_total",
            "Subscriptions with `since`, by result: recovered (missed publications replayed) or reset \
             (snapshot instead).",
            &["result"],
        )?;
        let recoveries = ["reset", "recovered"].map(|r| recoveries.with_label_values(&[r]));
        let jwks_refreshes = counter_vec(
            "tickwire_jwks_refresh_total",
            "Fetches of auth.jwt.jwks_url, by result; an error keeps the last good key set.",
            &["result"],
        )?;
        let jwks_refreshes = ["error", "ok"].map(|r| jwks_refreshes.with_label_values(&[r]));
        let config_reloads = counter_vec(
            "tickwire_config_reload_total",
            "Reloads of the TLS certificate, API keys and JWT key files (SIGHUP or a changed file), by \
             result; an error keeps what was in use.",
            &["result"],
        )?;
        let config_reloads = ["error", "ok"].map(|r| config_reloads.with_label_values(&[r]));
        let webhook_requests = counter_vec(
            "tickwire_webhook_requests_total",
            "Webhook requests sent, by event and result (ok: 2xx; status: another status; error: no \
             response).",
            &["event", "result"],
        )?;
        Ok(Metrics {
            presence_members: gauge(
                "tickwire_presence_members",
                "Members of presence rooms (presence.patterns) connected to this node.",
            )?,
            presence_changes_dropped: counter(
                "tickwire_presence_changes_dropped_total",
                "Joins and leaves not passed on to the cluster and webhooks because their queue was full.",
            )?,
            occupied_topics: gauge(
                "tickwire_occupied_topics",
                "Topics occupied (a subscriber anywhere in the cluster), as this node's occupancy \
                 events count them (a vacated topic leaves after occupancy.vacate_delay).",
            )?,
            webhook_requests,
            webhook_queue_dropped: counter(
                "tickwire_webhook_queue_dropped_total",
                "Webhook events dropped because their endpoint's queue was full.",
            )?,
            history_messages: gauge(
                "tickwire_history_messages",
                "Publications held in topic histories.",
            )?,
            history_bytes: gauge(
                "tickwire_history_bytes",
                "Approximate memory held by topic histories (payload plus per-entry overhead).",
            )?,
            recoveries,
            connections,
            connections_accepted,
            connections_rejected,
            disconnects,
            subscriptions: gauge(
                "tickwire_subscriptions",
                "Subscriptions (topics and patterns) held by open connections.",
            )?,
            topics: gauge("tickwire_topics", "Topics known to the hub.")?,
            topics_evicted: counter(
                "tickwire_topics_evicted_total",
                "Topics dropped (with last value and history) after topics.idle_ttl without \
                 subscribers or publications.",
            )?,
            published,
            delivered: counter(
                "tickwire_messages_delivered_total",
                "Frames written to WebSocket connections.",
            )?,
            conflated: counter(
                "tickwire_messages_conflated_total",
                "Updates replaced by a newer one of the same topic while waiting in a queue, or skipped by a max_rate.",
            )?,
            delta_frames: counter(
                "tickwire_delta_frames_total",
                "Update frames queued as a Fossil delta of the previous publication instead of the full data.",
            )?,
            bytes_saved_delta: bytes_saved.with_label_values(&["delta"]),
            compressed_frames: counter(
                "tickwire_compressed_frames_total",
                "Frames queued compressed with permessage-deflate (each publication is compressed once).",
            )?,
            bytes_saved_deflate: bytes_saved.with_label_values(&["deflate"]),
            bytes_sent: counter(
                "tickwire_bytes_sent_total",
                "Bytes written to WebSocket connections.",
            )?,
            bytes_received: counter(
                "tickwire_bytes_received_total",
                "WebSocket payload bytes received from clients.",
            )?,
            delivery_latency: histogram(
                "tickwire_delivery_latency_seconds",
                "Publish accepted to frame written to the socket; sampled once per socket write \
                 (the oldest publication in the write).",
                &LATENCY_BUCKETS,
            )?,
            queue_bytes: histogram(
                "tickwire_outbound_queue_bytes",
                "Bytes waiting in a connection's outbound queue, sampled at each socket write.",
                &QUEUE_BUCKETS,
            )?,
            http_requests: counter_vec(
                "tickwire_http_requests_total",
                "HTTP requests, by route and status.",
                &["route", "status"],
            )?,
            http_duration,
            broker_up: gauge(
                "tickwire_broker_up",
                "1 while the cluster broker (Redis) is connected, 0 while it is not; always 1 with \
                 broker.kind = \"memory\".",
            )?,
            broker_publish_duration: histogram(
                "tickwire_broker_publish_duration_seconds",
                "Round trip of one publish (or batch) to the cluster broker.",
                &HTTP_BUCKETS,
            )?,
            broker_reconnects: counter(
                "tickwire_broker_reconnects_total",
                "Times the connection to the cluster broker was re-established after being lost.",
            )?,
            broker_receive_dropped: counter(
                "tickwire_broker_receive_dropped_total",
                "Messages from the cluster broker dropped because broker.receive_queue was full; \
                 their topics are resynchronised (caught up, or reset with a snapshot).",
            )?,
            idempotent_replays: counter(
                "tickwire_http_idempotent_replays_total",
                "HTTP publishes answered with the reply of an earlier request with the same \
                 Idempotency-Key (nothing published).",
            )?,
            idempotency_keys: gauge(
                "tickwire_http_idempotency_keys",
                "Idempotency keys remembered by this node (broker.kind = \"memory\"; in a cluster \
                 they live in Redis).",
            )?,
            idempotency_bytes: gauge(
                "tickwire_http_idempotency_bytes",
                "Approximate memory held by the remembered idempotency keys and their seqs.",
            )?,
            jwks_refreshes,
            jwks_keys: gauge(
                "tickwire_jwks_keys",
                "Keys in the JWKS fetched from auth.jwt.jwks_url (0 until a fetch succeeds).",
            )?,
            config_reloads,
            registry: r,
        })
    }

    pub fn published(&self, source: Source) -> &IntCounter {
        &self.published[source as usize]
    }

    /// The open connections of `transport`.
    pub fn connections(&self, transport: Transport) -> &IntGauge {
        &self.connections[transport as usize]
    }

    /// The connections of `transport` accepted so far.
    pub fn connections_accepted(&self, transport: Transport) -> &IntCounter {
        &self.connections_accepted[transport as usize]
    }

    pub fn recovery(&self, recovered: bool) {
        self.recoveries[usize::from(recovered)].inc();
    }

    pub fn jwks_refresh(&self, ok: bool) {
        self.jwks_refreshes[usize::from(ok)].inc();
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads[usize::from(ok)].inc();
    }

    pub fn webhook_request(&self, event: &str, result: WebhookResult) {
        let result = match result {
            WebhookResult::Ok => "ok",
            WebhookResult::Status => "status",
            WebhookResult::Error => "error",
        };
        self.webhook_requests.with_label_values(&[event, result]).inc();
    }

    pub fn disconnected(&self, reason: Disconnect) {
        self.disconnects.with_label_values(&[reason.label()]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 << 10);
        // Encoding into a Vec only fails on invalid metric families, which registration rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
