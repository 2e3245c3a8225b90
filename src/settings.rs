//! Configuration: one typed [`Settings`], its layering and its validation.
//!
//! Layers, later wins: the defaults compiled in from `config/default.toml` ← `config/default.toml`
//! in the working directory (when present) ← `--config FILE` ← `TICKWIRE__SECTION__KEY` env vars.
//! Unknown keys and invalid values are rejected here, before any port is bound, with a message
//! naming the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Deserializer};

use crate::topic::{Pattern, Topic};
use crate::transport::proxy::TrustedProxies;
use thiserror::Error;

/// Invalid configuration, naming the offending key.
#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl SettingsError {
    pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> SettingsError {
        SettingsError::Invalid {
            key,
            message: message.into(),
        }
    }
}

/// The PEM certificates in `path`, at least one, for the setting `key` (the served chain of
/// `tls.cert`, the trusted CAs of `auth.jwt.jwks_ca_file`).
pub(crate) fn pem_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, SettingsError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |e: &dyn fmt::Display| SettingsError::invalid(key, format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in the file"));
    }
    Ok(certs)
}

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
pub const DEFAULTS_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
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
    pub log: LogSettings,
    pub broker: BrokerSettings,
    /// The `--config` file these were loaded from: a reload (SIGHUP, or the file changing)
    /// reads it again for `auth.api_keys`.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

/// Where publications travel between the nodes of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// One node: everything stays in this process.
    Memory,
    /// Nodes share seqs, last values and history through Redis.
    Redis,
}

/// Which Redis channels a node listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerSubscribe {
    /// Only the topics and patterns its own clients subscribe to.
    Interest,
    /// Every publication of the cluster (one pattern subscription).
    All,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    pub kind: BrokerKind,
    /// May carry a password: never printed.
    pub redis_url: Secret,
    /// PEM CA certificate(s) that a `rediss://` server's certificate must chain to; `None`
    /// (empty) trusts the system's roots.
    #[serde(deserialize_with = "optional_path")]
    pub redis_ca_file: Option<PathBuf>,
    pub prefix: String,
    pub subscribe: BrokerSubscribe,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    pub size: usize,
    pub ttl_seconds: u64,
    pub policies: Vec<HistoryRule>,
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_message_bytes: usize,
    pub max_subscriptions_per_connection: usize,
    pub requests_per_second: f64,
    pub request_burst: u32,
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    #[serde(with = "humantime_serde")]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    /// Open WebSocket connections one client address may hold; 0 is unlimited.
    pub max_connections_per_ip: usize,
    /// Topics the hub may hold; creating one more (publish, exact subscribe) is refused.
    pub max_topics: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsSettings {
    /// A topic without subscribers whose last publication is older than this is dropped with
    /// its last value and history; zero keeps topics forever.
    #[serde(with = "humantime_serde")]
    pub idle_ttl: Duration,
}

/// How many topics the hub holds and how long an unused one lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicBounds {
    pub max_topics: usize,
    /// `None` keeps idle topics forever.
    pub idle_ttl: Option<Duration>,
}

/// Shortest non-zero `topics.idle_ttl`: the sweep runs every half of it.
pub const MIN_IDLE_TTL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain; `None` (empty) serves plain TCP.
    #[serde(deserialize_with = "optional_path")]
    pub cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[serde(deserialize_with = "optional_path")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No credentials: every WebSocket client gets the anonymous ACL.
    None,
    /// Every WebSocket client presents a JWT whose claims are its ACL.
    Jwt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub anonymous: AnonymousSettings,
    pub jwt: JwtSettings,
    /// HTTP publisher keys; none configured leaves HTTP publishing open.
    pub api_keys: Vec<ApiKeySettings>,
}

/// What WebSocket clients may do in `auth.mode = "none"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousSettings {
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    pub hs256_secret: Secret,
    #[serde(deserialize_with = "optional_path")]
    pub public_key_file: Option<PathBuf>,
    #[serde(deserialize_with = "optional_path")]
    pub jwks_file: Option<PathBuf>,
    /// HTTPS URL of the identity provider's JWKS; empty when not used.
    pub jwks_url: String,
    /// How often the JWKS at `jwks_url` is fetched again.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// PEM CA certificate(s) the `jwks_url` server's certificate must chain to; `None` (empty)
    /// trusts the system's roots.
    #[serde(deserialize_with = "optional_path")]
    pub jwks_ca_file: Option<PathBuf>,
    /// Required `aud` when not empty.
    pub audience: String,
    /// Required `iss` when not empty.
    pub issuer: String,
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

#[derive(Debug, Clone, Deserialize)]
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
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<redacted>" })
    }
}

/// The environment variable of `auth.jwt.hs256_secret`, read verbatim.
const SECRET_ENV: &str = "TICKWIRE__AUTH__JWT__HS256_SECRET";

/// Longest accepted `auth.jwt.leeway`: clocks that disagree more need fixing, not tolerance.
pub const MAX_JWT_LEEWAY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Separate listener for /metrics, /healthz and /readyz; `None` serves them on the main one.
    #[serde(deserialize_with = "optional_addr")]
    pub listen: Option<SocketAddr>,
}

/// An empty string means "not set": TOML has no null, and env vars cannot unset a key.
fn optional_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

fn optional_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.trim().is_empty()).then(|| PathBuf::from(s)))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    /// Largest `data` of one published message (a batch may hold many); 0 as set means the most
    /// that fits in `queue.max_bytes`, which [`Settings::finish`] fills in.
    pub max_message_bytes: usize,
    /// Time a request body has to arrive in full, counted from its request head.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Bytes of request bodies all connections together may be reading or holding at once.
    pub max_inflight_body_bytes: usize,
    /// How long a publish's `Idempotency-Key` is remembered; zero turns the header off.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Most keys remembered at once (memory mode); the oldest goes first.
    pub idempotency_max_keys: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub max_bytes: usize,
    pub policies: Vec<PolicyRule>,
}

/// How a connection's outbound queue treats a topic's updates when the client is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Keep only the newest waiting update per topic.
    Conflate,
    /// Keep every update; disconnect the client when the queue overflows.
    Queue,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    pub pattern: String,
    pub policy: Policy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    pub enabled: bool,
    pub symbols: Vec<String>,
    pub updates_per_second: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated, parsed forms of the pattern lists, built once at start-up.
#[derive(Debug, Clone)]
pub struct TopicRules {
    pub policies: Vec<(Pattern, Policy)>,
    pub retention: Retention,
    pub retention_policies: Vec<(Pattern, Retention)>,
}

impl TopicRules {
    pub fn policy_for(&self, topic: &Topic) -> Policy {
        self.policies
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map_or(Policy::Conflate, |(_, policy)| *policy)
    }

    pub fn retention_for(&self, topic: &Topic) -> Retention {
        (self.retention_policies.iter())
            .find(|(p, _)| p.matches(topic))
            .map_or(self.retention, |(_, r)| *r)
    }
}

impl Settings {
    /// The full layering used by the binary: defaults ← ./config/default.toml ← `file` ← env.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml))
            .add_source(File::new("config/default.toml", FileFormat::Toml).required(false));
        if let Some(file) = file {
            builder = builder.add_source(File::from(file).format(FileFormat::Toml));
        }
        let env = Environment::with_prefix("TICKWIRE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("feed.symbols")
            .with_list_parse_key("server.allowed_origins")
            .with_list_parse_key("server.trusted_proxies")
            .with_list_parse_key("auth.anonymous.subscribe")
            .with_list_parse_key("auth.anonymous.publish");
        // `try_parsing` turns an all-digit secret into a number and back, changing it (a long
        // one comes back in float notation): the secret is taken from the environment as is.
        let secret = std::env::var(SECRET_ENV).ok().map(Secret);
        let mut settings = Self::finish(builder.add_source(env).build()?, secret)?;
        settings.config_file = file.map(Path::to_path_buf);
        Ok(settings)
    }

    /// Built-in defaults overlaid with `extra` TOML text; no files, no environment.
    /// For embedding and tests.
    pub fn from_toml(extra: &str) -> Result<Settings, SettingsError> {
        let cfg = Config::builder()
            .add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml))
            .add_source(File::from_str(extra, FileFormat::Toml))
            .build()?;
        Self::finish(cfg, None)
    }

    fn finish(cfg: Config, env_secret: Option<Secret>) -> Result<Settings, SettingsError> {
        let mut settings: Settings = cfg.try_deserialize()?;
        if let Some(secret) = env_secret {
            settings.auth.jwt.hs256_secret = secret;
        }
        // Lists from env vars are split on commas as is: "BTC-USD, ETH-USD" must still work.
        let lists = [
            &mut settings.feed.symbols,
            &mut settings.server.allowed_origins,
            &mut settings.server.trusted_proxies,
            &mut settings.auth.anonymous.subscribe,
            &mut settings.auth.anonymous.publish,
        ];
        for list in lists {
            list.iter_mut().for_each(|item| *item = item.trim().to_string());
        }
        if settings.http.max_message_bytes == 0 {
            let room = settings.queue.max_bytes.saturating_sub(FRAME_ENVELOPE_BYTES);
            settings.http.max_message_bytes = room.max(1);
        }
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        fn check(ok: bool, key: &'static str, message: &str) -> Result<(), SettingsError> {
            if ok {
                return Ok(());
            }
            Err(SettingsError::Invalid {
                key,
                message: message.to_string(),
            })
        }
        let s = &self.server;
        check(
            (128..=64 << 20).contains(&s.max_message_bytes),
            "server.max_message_bytes",
            "must be between 128 and 67108864",
        )?;
        check(
            s.max_subscriptions_per_connection >= 1,
            "server.max_subscriptions_per_connection",
            "must be at least 1",
        )?;
        check(
            s.requests_per_second.is_finite() && s.requests_per_second > 0.0,
            "server.requests_per_second",
            "must be a positive number",
        )?;
        check(s.request_burst >= 1, "server.request_burst", "must be at least 1")?;
        check(
            s.max_connections >= 1,
            "server.max_connections",
            "must be at least 1",
        )?;
        check(
            s.ping_interval >= Duration::from_millis(10),
            "server.ping_interval",
            "must be at least 10ms",
        )?;
        check(
            s.idle_timeout > s.ping_interval,
            "server.idle_timeout",
            "must be longer than server.ping_interval, or clients answering pings would time out",
        )?;
        check(
            s.handshake_timeout >= Duration::from_millis(10),
            "server.handshake_timeout",
            "must be at least 10ms",
        )?;
        check(
            self.http.max_body_bytes >= 1024,
            "http.max_body_bytes",
            "must be at least 1024",
        )?;
        check(
            self.http.body_timeout >= Duration::from_millis(10),
            "http.body_timeout",
            "must be at least 10ms",
        )?;
        check(
            self.http.max_inflight_body_bytes >= self.http.max_body_bytes,
            "http.max_inflight_body_bytes",
            "must be at least http.max_body_bytes, or a body of the largest accepted size could never be read",
        )?;
        check(
            self.http.idempotency_window <= MAX_IDEMPOTENCY_WINDOW,
            "http.idempotency_window",
            "must be at most 24h",
        )?;
        check(
            (1..=MAX_IDEMPOTENCY_KEYS).contains(&self.http.idempotency_max_keys),
            "http.idempotency_max_keys",
            &format!("must be between 1 and {MAX_IDEMPOTENCY_KEYS}"),
        )?;
        check(
            self.queue.max_bytes >= 1024,
            "queue.max_bytes",
            "must be at least 1024",
        )?;
        check(
            self.http.max_message_bytes >= 1,
            "http.max_message_bytes",
            "must be at least 1",
        )?;
        // The largest message anyone may publish must fit in a subscriber's queue once framed,
        // or every reading subscriber of a `queue` topic would be closed as a slow consumer.
        let room = self.queue.max_bytes.saturating_sub(FRAME_ENVELOPE_BYTES);
        check(
            self.http.max_message_bytes.min(self.http.max_body_bytes) <= room,
            "http.max_message_bytes",
            &format!(
                "must be at most queue.max_bytes - {FRAME_ENVELOPE_BYTES} ({room}) (or http.max_body_bytes \
                 that low): a larger message's frame cannot fit in a subscriber's queue"
            ),
        )?;
        check(
            self.server.max_message_bytes <= room,
            "server.max_message_bytes",
            &format!(
                "must be at most queue.max_bytes - {FRAME_ENVELOPE_BYTES} ({room}): a client could publish a \
                 message whose frame cannot fit in a subscriber's queue"
            ),
        )?;
        let f = &self.feed;
        check(
            f.updates_per_second.is_finite() && f.updates_per_second > 0.0 && f.updates_per_second <= 1000.0,
            "feed.updates_per_second",
            "must be a number in (0, 1000]",
        )?;
        check(
            !f.enabled || !f.symbols.is_empty(),
            "feed.symbols",
            "must not be empty while the feed is enabled",
        )?;
        for symbol in &f.symbols {
            let ok = !symbol.contains('.') && Topic::parse(&format!("prices.{symbol}")).is_ok();
            check(
                ok,
                "feed.symbols",
                &format!("{symbol:?} is not a valid topic token"),
            )?;
        }
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            "log.level",
            "is not a valid level filter (e.g. info, debug, tickwire=debug)",
        )?;
        check(
            self.limits.max_topics >= 1,
            "limits.max_topics",
            "must be at least 1",
        )?;
        let ttl = self.topics.idle_ttl;
        check(
            ttl.is_zero() || ttl >= MIN_IDLE_TTL,
            "topics.idle_ttl",
            "must be 0s (keep forever) or at least 100ms",
        )?;
        let sizes = std::iter::once(self.history.size).chain(self.history.policies.iter().map(|r| r.size));
        check(
            sizes.into_iter().all(|n| n <= MAX_HISTORY_SIZE),
            "history.size",
            &format!("history sizes (history.size, history.policies) must be at most {MAX_HISTORY_SIZE}"),
        )?;
        check(
            self.auth.jwt.leeway <= MAX_JWT_LEEWAY,
            "auth.jwt.leeway",
            "must be at most 5s",
        )?;
        check(
            self.auth.jwt.jwks_refresh >= Duration::from_secs(1),
            "auth.jwt.jwks_refresh",
            "must be at least 1s",
        )?;
        check(
            self.auth.jwt.jwks_ca_file.is_none() || !self.auth.jwt.jwks_url.is_empty(),
            "auth.jwt.jwks_ca_file",
            "is only used with auth.jwt.jwks_url",
        )?;
        for origin in &self.server.allowed_origins {
            check(
                valid_origin(origin),
                "server.allowed_origins",
                &format!("{origin:?} is not an origin: scheme://host[:port], no path, no trailing slash"),
            )?;
        }
        let proxies = self.trusted_proxies()?;
        check(
            !s.proxy_protocol || !proxies.is_empty(),
            "server.proxy_protocol",
            "needs server.trusted_proxies: the header is only read from a trusted proxy, so every \
             connection would be refused",
        )?;
        let b = &self.broker;
        let url = b.redis_url.expose();
        check(
            b.kind == BrokerKind::Memory || url.starts_with("redis://") || url.starts_with("rediss://"),
            "broker.redis_url",
            "must start with redis:// or rediss://",
        )?;
        check(
            b.kind == BrokerKind::Memory || redis::Client::open(url).is_ok(),
            "broker.redis_url",
            "is not a valid Redis URL (redis[s]://[:password@]host[:port][/db])",
        )?;
        if let (BrokerKind::Redis, Some(ca)) = (b.kind, &b.redis_ca_file) {
            check(
                url.starts_with("rediss://"),
                "broker.redis_ca_file",
                "is only used with a rediss:// broker.redis_url",
            )?;
            check(
                std::fs::read(ca).is_ok(),
                "broker.redis_ca_file",
                &format!("cannot read {}", ca.display()),
            )?;
        }
        check(
            !b.prefix.is_empty()
                && b.prefix
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_-:".contains(&c)),
            "broker.prefix",
            "must be non-empty and use only [A-Za-z0-9_:-]",
        )?;
        check(
            b.timeout >= Duration::from_millis(10),
            "broker.timeout",
            "must be at least 10ms",
        )?;
        check(
            b.reconnect_min >= Duration::from_millis(1) && b.reconnect_max >= b.reconnect_min,
            "broker.reconnect_max",
            "reconnect_min must be at least 1ms and reconnect_max at least reconnect_min",
        )?;
        self.topic_rules()?;
        // The key and certificate files are read by `prepare`, which builds what they make.
        Ok(())
    }

    /// Parses `server.trusted_proxies`.
    pub fn trusted_proxies(&self) -> Result<TrustedProxies, SettingsError> {
        TrustedProxies::parse(&self.server.trusted_proxies).map_err(|message| SettingsError::Invalid {
            key: "server.trusted_proxies",
            message: format!("{message} (a CIDR such as \"10.0.0.0/8\" or an address)"),
        })
    }

    pub fn topic_bounds(&self) -> TopicBounds {
        TopicBounds {
            max_topics: self.limits.max_topics,
            idle_ttl: (!self.topics.idle_ttl.is_zero()).then_some(self.topics.idle_ttl),
        }
    }

    /// Parses the pattern lists of the topic rules; every failure names its key.
    pub fn topic_rules(&self) -> Result<TopicRules, SettingsError> {
        fn parse(key: &'static str, p: &str) -> Result<Pattern, SettingsError> {
            Pattern::parse(p).map_err(|e| SettingsError::Invalid {
                key,
                message: format!("{p:?}: {e}"),
            })
        }
        Ok(TopicRules {
            policies: (self.queue.policies.iter())
                .map(|r| Ok((parse("queue.policies", &r.pattern)?, r.policy)))
                .collect::<Result<_, SettingsError>>()?,
            retention: Retention {
                size: self.history.size,
                ttl: Duration::from_secs(self.history.ttl_seconds),
            },
            retention_policies: (self.history.policies.iter())
                .map(|r| {
                    let retention = Retention {
                        size: r.size,
                        ttl: Duration::from_secs(r.ttl_seconds),
                    };
                    Ok((parse("history.policies", &r.pattern)?, retention))
                })
                .collect::<Result<_, SettingsError>>()?,
        })
    }
}

/// An origin as browsers send it (also how `http` compares a request's `Origin` header) (`scheme://host[:port]`, the port only when it is not the
/// scheme's default), lowercased; `None` when `s` is not one.
pub fn normalize_origin(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    let (scheme, rest) = s.split_once("://")?;
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '*']) {
        return None;
    }
    // The port follows the last colon, unless that colon is inside an IPv6 literal.
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (rest, None),
    };
    if host.is_empty() || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    Some(match port {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Whether `s` can be listed in `server.allowed_origins`.
pub fn valid_origin(s: &str) -> bool {
    normalize_origin(s).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(s.server.max_message_bytes, 65536);
        assert_eq!(s.queue.max_bytes, 1 << 20);
        assert!(s.feed.enabled);
        assert_eq!(s.server.ping_interval, Duration::from_secs(25));
        assert_eq!(s.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.admin.listen, None);
        assert_eq!(
            s.topic_bounds(),
            TopicBounds {
                max_topics: 1_000_000,
                idle_ttl: Some(Duration::from_secs(3600)),
            }
        );
        let forever = Settings::from_toml("[topics]\nidle_ttl = \"0s\"").unwrap();
        assert_eq!(forever.topic_bounds().idle_ttl, None);
        let s = Settings::from_toml("[admin]\nlisten = \"127.0.0.1:9090\"").unwrap();
        assert_eq!(s.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
        let rules = s.topic_rules().unwrap();
        assert_eq!(
            rules.policy_for(&Topic::parse("chat.lobby").unwrap()),
            Policy::Queue
        );
        assert_eq!(
            rules.policy_for(&Topic::parse("prices.X").unwrap()),
            Policy::Conflate
        );
        let chat = rules.retention_for(&Topic::parse("chat.x").unwrap());
        assert_eq!((chat.size, chat.ttl), (100, Duration::from_secs(300)));
        let s = Settings::from_toml("[history]\npolicies = [{pattern = \"a.>\", size = 5, ttl_seconds = 9}]")
            .unwrap();
        let rules = s.topic_rules().unwrap();
        assert_eq!(rules.retention_for(&Topic::parse("a.b").unwrap()).size, 5);
        assert_eq!(rules.retention_for(&Topic::parse("b.b").unwrap()).size, 100);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Settings::from_toml("[server]\nlisten_addr = \"1.2.3.4:5\"").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
        let err = Settings::from_toml("[nope]\nx = 1").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn origins_are_normalized() {
        for (raw, normal) in [
            ("https://App.Example.com", Some("https://app.example.com")),
            ("https://app.example.com:443", Some("https://app.example.com")),
            ("http://app.example.com:80", Some("http://app.example.com")),
            (
                "https://app.example.com:8443",
                Some("https://app.example.com:8443"),
            ),
            ("http://[::1]:8080", Some("http://[::1]:8080")),
            ("http://[::1]", Some("http://[::1]")),
            ("https://app.example.com/", None),
            ("https://app.example.com/x", None),
            ("app.example.com", None),
            ("ftp://app.example.com", None),
            ("null", None),
            ("https://", None),
            ("https://a:", None),
            ("https://a:x", None),
            ("https://*.example.com", None),
            ("https://user@a", None),
        ] {
            assert_eq!(normalize_origin(raw).as_deref(), normal, "{raw}");
        }
    }
}
