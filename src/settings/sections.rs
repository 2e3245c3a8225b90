//! The typed configuration: [`Settings`] and one struct per section of the file, the limits
//! their values are checked against, and the shipped defaults (`config/default.toml`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::error::Source;
use crate::settings::values::{addr, duration, optional_addr, optional_path, settings_enum};

/// What an `update` or `snapshot` frame adds to its `data`, at most: the WebSocket header, the
/// longest topic, 20-digit `seq` and `ts`, an epoch and the JSON around them (checked against
/// the encoder by a test in `protocol`).
pub const FRAME_ENVELOPE_BYTES: usize = crate::topic::MAX_TOPIC_BYTES + 128;

/// Largest per-topic history accepted: recovery replays at most this many messages.
pub const MAX_HISTORY_SIZE: usize = 100_000;

/// Longest `http.idempotency_window`: a retry comes within minutes, and Redis keeps every
/// key for the whole window.
pub const MAX_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Most `http.idempotency_max_keys`: the ledger may hold 512 bytes per key (about 512 MB here).
pub const MAX_IDEMPOTENCY_KEYS: usize = 1_000_000;

/// The shipped defaults; the same file users read and copy.
pub const DEFAULTS_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub http: HttpSettings,
    pub queue: QueueSettings,
    pub history: HistorySettings,
    pub limits: LimitsSettings,
    pub topics: TopicsSettings,
    pub tls: TlsSettings,
    pub auth: AuthSettings,
    pub feed: FeedSettings,
    pub web: WebSettings,
    pub delta: DeltaSettings,
    pub compression: CompressionSettings,
    pub log: LogSettings,
    pub broker: BrokerSettings,
    pub presence: PresenceSettings,
    pub occupancy: OccupancySettings,
    /// `[[webhooks]]`: where occupancy and presence events are POSTed (docs/presence.md).
    pub webhooks: Vec<WebhookSettings>,
    /// The `--config` file these were loaded from: a reload (SIGHUP, or the file changing)
    /// reads it again for `auth.api_keys`.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Where each value not left at its default came from, by dotted key: what error
    /// messages and warnings name.
    #[serde(skip)]
    pub(crate) origins: BTreeMap<String, Source>,
}

/// Where publications travel between the nodes of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// One node: everything stays in this process.
    Memory,
    /// Nodes share seqs, last values and history through Redis.
    Redis,
    /// The same through a Redis Cluster, with sharded pub/sub (docs/cluster.md "Redis Cluster").
    RedisCluster,
}

settings_enum!(BrokerKind { Memory => "memory", Redis => "redis", RedisCluster => "redis-cluster" });

/// Which Redis channels a node listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerSubscribe {
    /// Only the topics and patterns its own clients subscribe to.
    Interest,
    /// Every publication of the cluster (one pattern subscription).
    All,
}

settings_enum!(BrokerSubscribe { Interest => "interest", All => "all" });

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    pub kind: BrokerKind,
    /// May carry a password: never printed then.
    #[serde(skip_serializing_if = "Secret::url_has_password")]
    pub redis_url: Secret,
    /// Seed nodes of a Redis Cluster (`kind = "redis-cluster"`); may carry a password: the
    /// list is never printed then.
    #[serde(skip_serializing_if = "any_has_password")]
    pub redis_cluster_urls: Vec<Secret>,
    /// PEM CA certificate(s) that a `rediss://` server's certificate must chain to; `None`
    /// (empty) trusts the system's roots.
    #[serde(with = "optional_path")]
    pub redis_ca_file: Option<PathBuf>,
    pub prefix: String,
    pub subscribe: BrokerSubscribe,
    #[serde(with = "duration")]
    pub timeout: Duration,
    #[serde(with = "duration")]
    pub reconnect_min: Duration,
    #[serde(with = "duration")]
    pub reconnect_max: Duration,
    /// Channel messages waiting for the link, at most; past it they are dropped and their
    /// topics resynchronised.
    pub receive_queue: usize,
    pub sentinel: SentinelSettings,
}

fn any_has_password(urls: &[Secret]) -> bool {
    urls.iter().any(Secret::url_has_password)
}

/// Redis Sentinel discovery of the broker's primary; unused while `master_name` is empty.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSettings {
    pub master_name: String,
    /// `redis://host:port` of each sentinel, asked in order.
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    pub size: usize,
    pub ttl_seconds: u64,
    pub policies: Vec<HistoryRule>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    pub pattern: String,
    pub size: usize,
    pub ttl_seconds: u64,
}

/// How much of a topic's stream is kept for recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Publications kept; 0 keeps none.
    pub size: usize,
    pub ttl: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    #[serde(with = "addr")]
    pub listen: SocketAddr,
    pub max_message_bytes: usize,
    pub max_subscriptions_per_connection: usize,
    pub requests_per_second: f64,
    pub request_burst: u32,
    pub max_connections: usize,
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Origins (`scheme://host[:port]`) whose pages may open WebSockets; empty allows all.
    pub allowed_origins: Vec<String>,
    /// Serve `GET /echo`, an echo WebSocket for conformance testing.
    pub echo_endpoint: bool,
    /// CIDRs of the reverse proxies whose `X-Forwarded-For` (and PROXY header) name the client.
    pub trusted_proxies: Vec<String>,
    /// Connections from a trusted proxy start with a PROXY protocol (v1 or v2) header.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    /// Open WebSocket connections one client address may hold; 0 is unlimited.
    pub max_connections_per_ip: usize,
    /// Topics the hub may hold; creating one more (publish, exact subscribe) is refused.
    pub max_topics: usize,
    /// Topics one subscribe reply gives positions and snapshots for (see `TopicBounds`).
    pub max_catch_up_topics: usize,
    /// Topics one connection may receive, exact and through patterns (see `TopicBounds`).
    pub max_topics_per_connection: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsSettings {
    /// A topic without subscribers whose last publication is older than this is dropped with
    /// its last value and history; zero keeps topics forever.
    #[serde(with = "duration")]
    pub idle_ttl: Duration,
}

/// How many topics the hub holds and how long an unused one lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicBounds {
    pub max_topics: usize,
    /// Topics a subscribe request's patterns bring up to date (position and snapshot); the
    /// rest are subscribed to without, and the reply says `truncated`. Bounds what one request
    /// makes the server hold for a pattern that matches a large part of a big node.
    pub max_catch_up_topics: usize,
    /// Topics one connection receives, counted per (topic, connection) pair: every pair costs
    /// the hub a subscription record (~90 B), so a pattern such as `>` on a big node would
    /// otherwise make one client's memory grow with the whole node. A subscribe past it is
    /// refused; a new topic that would take a connection past it closes the connection.
    pub max_topics_per_connection: usize,
    /// `None` keeps idle topics forever.
    pub idle_ttl: Option<Duration>,
    /// `delta.min_bytes`: data shorter than this is never sent as a delta.
    pub delta_min_bytes: usize,
    /// `compression.min_bytes`: smaller frame payloads are sent uncompressed.
    pub deflate_min_bytes: usize,
    /// `compression.level`.
    pub deflate_level: u32,
}

/// Shortest non-zero `topics.idle_ttl`: the sweep runs every half of it.
pub const MIN_IDLE_TTL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain; `None` (empty) serves plain TCP.
    #[serde(with = "optional_path")]
    pub cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[serde(with = "optional_path")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No credentials: every WebSocket client gets the anonymous ACL.
    None,
    /// Every WebSocket client presents a JWT whose claims are its ACL.
    Jwt,
}

settings_enum!(AuthMode { None => "none", Jwt => "jwt" });

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub anonymous: AnonymousSettings,
    pub jwt: JwtSettings,
    /// HTTP publisher keys; none configured leaves HTTP publishing open.
    pub api_keys: Vec<ApiKeySettings>,
}

/// What WebSocket clients may do in `auth.mode = "none"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousSettings {
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    #[serde(skip_serializing_if = "Secret::is_set")]
    pub hs256_secret: Secret,
    #[serde(with = "optional_path")]
    pub public_key_file: Option<PathBuf>,
    #[serde(with = "optional_path")]
    pub jwks_file: Option<PathBuf>,
    /// HTTPS URL of the identity provider's JWKS; empty when not used.
    pub jwks_url: String,
    /// How often the JWKS at `jwks_url` is fetched again.
    #[serde(with = "duration")]
    pub jwks_refresh: Duration,
    /// PEM CA certificate(s) the `jwks_url` server's certificate must chain to; `None` (empty)
    /// trusts the system's roots.
    #[serde(with = "optional_path")]
    pub jwks_ca_file: Option<PathBuf>,
    /// Required `aud` when not empty.
    pub audience: String,
    /// Required `iss` when not empty.
    pub issuer: String,
    #[serde(with = "duration")]
    pub leeway: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    pub name: String,
    /// Hex SHA-256 digest of the key: the key itself is never stored.
    pub sha256: String,
    pub publish: Vec<String>,
}

/// A configuration value that must not appear in logs or `check-config` output.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub(super) String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether printing it as a URL would show a secret: anything set but a URL without a
    /// password (`redis://127.0.0.1:6379` is no secret, and the printed configuration needs it).
    pub fn url_has_password(&self) -> bool {
        let printable_url = self.0.contains("://") && !self.0.contains('@');
        self.is_set() && !printable_url
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<redacted>" })
    }
}

/// Printed only when it shows no secret (the fields skip it otherwise); `<redacted>` all the
/// same if a field forgot to.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.url_has_password() {
            "<redacted>"
        } else {
            &self.0
        })
    }
}

/// Longest accepted `auth.jwt.leeway`: clocks that disagree more need fixing, not tolerance.
pub const MAX_JWT_LEEWAY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Separate listener for /metrics, /healthz and /readyz; `None` serves them on the main one.
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    /// Largest `data` of one published message (a batch may hold many); 0 as set means the most
    /// that fits in `queue.max_bytes`, which [`Settings::finish`] fills in.
    pub max_message_bytes: usize,
    /// Time a request body has to arrive in full, counted from its request head.
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    /// Bytes of request bodies all connections together may be reading or holding at once.
    pub max_inflight_body_bytes: usize,
    /// How long a publish's `Idempotency-Key` is remembered; zero turns the header off.
    #[serde(with = "duration")]
    pub idempotency_window: Duration,
    /// Most keys remembered at once (memory mode); the oldest goes first.
    pub idempotency_max_keys: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub max_bytes: usize,
    pub policies: Vec<PolicyRule>,
}

/// How a connection's outbound queue treats a topic's updates when the client is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Keep only the newest waiting update per topic.
    Conflate,
    /// Keep every update; disconnect the client when the queue overflows.
    Queue,
}

settings_enum!(Policy { Conflate => "conflate", Queue => "queue" });

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    pub pattern: String,
    pub policy: Policy,
    /// Most updates a second per topic for every subscriber of the matching topics (conflate
    /// only); a client's own `max_rate` can only lower it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    pub enabled: bool,
    pub symbols: Vec<String>,
    pub updates_per_second: f64,
}

/// Delta updates for `"delta":"fossil"` subscriptions (docs/protocol.md §4.1).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSettings {
    /// When false, such subscriptions are accepted and always get full `data`.
    pub enabled: bool,
    /// Data shorter than this is always sent in full: a delta would save next to nothing.
    pub min_bytes: usize,
}

/// permessage-deflate (RFC 7692) for the clients that offer it (docs/protocol.md §2.1).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionSettings {
    /// Accept a client's permessage-deflate offer.
    pub enabled: bool,
    /// Frames with a smaller payload are sent uncompressed.
    pub min_bytes: usize,
    /// zlib level, 1 (fastest) to 9 (smallest).
    pub level: u32,
}

/// The browser pages (docs/web.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebSettings {
    /// Serve the demo pages (`/`, `/chat`, `/console`); when false they are 404, so a
    /// production server shows no page that needs no token to look at. `/tickwire.js` stays.
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

settings_enum!(LogFormat { Text => "text", Json => "json" });

/// Who is in a room (docs/presence.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSettings {
    /// Topics whose exact subscribers are members; empty: presence is off.
    pub patterns: Vec<String>,
    /// Most members a `presence` reply lists (`count` is always exact).
    pub max_members: usize,
    /// A cluster node refreshes its members in Redis every third of this; a node that stops
    /// has its members expire (and `leave`) within it.
    #[serde(with = "duration")]
    pub ttl: Duration,
}

/// Most `presence.max_members`: a reply of this many members is about 2 MB.
pub const MAX_PRESENCE_MEMBERS: usize = 10_000;
/// Largest JWT `info` claim a member carries, in bytes of JSON: what bounds a member's memory.
pub const MAX_MEMBER_INFO_BYTES: usize = 1024;

/// `occupied` / `vacated` events (docs/presence.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OccupancySettings {
    /// A topic that loses its last subscriber is `vacated` only if it stays empty this long.
    #[serde(with = "duration")]
    pub vacate_delay: Duration,
}

/// One `[[webhooks]]` endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// `http://host[:port]/path` or `https://…`.
    pub url: String,
    /// PEM CA certificate(s) an `https://` url's certificate must chain to; `None` (empty)
    /// trusts the system's roots.
    #[serde(default, with = "optional_path")]
    pub ca_file: Option<PathBuf>,
    /// Any of `occupied`, `vacated`, `join`, `leave`.
    pub events: Vec<String>,
    /// Only events of topics matching one of these; empty: every topic.
    #[serde(default)]
    pub topics: Vec<String>,
    /// HMAC-SHA256 key of the `X-Tickwire-Signature` header.
    pub secret: Secret,
    /// Tries per event (the first included), with exponential backoff between them.
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// Longest wait for one request's response.
    #[serde(default = "default_webhook_timeout", with = "duration")]
    pub timeout: Duration,
    /// Events waiting for this endpoint; more are dropped, counted and logged.
    #[serde(default = "default_webhook_queue")]
    pub queue: usize,
}

fn default_webhook_attempts() -> u32 {
    5
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_webhook_queue() -> usize {
    1000
}
