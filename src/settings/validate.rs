//! The checks on values that deserializing alone cannot make: ranges, values that depend on
//! each other, list entries. One function per section; every check runs, so a file with several
//! mistakes reports them all (a key only its first). Files the settings name are read by
//! `prepare`, which builds what they make. Also the warnings: values that work but are
//! probably a mistake.

use std::net::SocketAddr;
use std::time::Duration;

use crate::settings::error::{Problem, SettingsError};
use crate::settings::origin::valid_origin;
use crate::settings::rules::patterns;
use crate::settings::sections::Policy;
use crate::settings::sections::{
    AuthMode, BrokerKind, Settings, FRAME_ENVELOPE_BYTES, MAX_HISTORY_SIZE, MAX_IDEMPOTENCY_KEYS,
    MAX_IDEMPOTENCY_WINDOW, MAX_JWT_LEEWAY, MAX_PRESENCE_MEMBERS, MIN_IDLE_TTL,
};
use crate::topic::Topic;
use tickwire_proto::rate::{MAX_RATE, MIN_RATE};

/// Shortest HS256 secret `auth.mode = "jwt"` accepts (as `jwt::MIN_SECRET_BYTES`, which this
/// module cannot import: `settings` sits below `auth`).
const MIN_HS256_SECRET_BYTES: usize = 32;

/// API key digests that are public: all zeros (the production example's placeholder), and the
/// example in docs/security.md, whose key is printed next to it.
const PUBLIC_DIGESTS: [&str; 2] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "ec3aa114b127a9058b7358862fbd30498a82925904c9412579eba47f9319045e",
];

/// The failed checks so far; a key reports only its first failure.
#[derive(Default)]
struct Checks(Vec<SettingsError>);

impl Checks {
    fn check(&mut self, ok: bool, key: &'static str, message: &str) {
        let failed = |e: &SettingsError| matches!(e, SettingsError::Invalid { key: k, .. } if *k == key);
        if !ok && !self.0.iter().any(failed) {
            self.0.push(SettingsError::invalid(key, message));
        }
    }

    fn result<T>(&mut self, result: Result<T, SettingsError>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
    }
}

/// Whether listeners on `a` and `b` would take the same port: the same address, or a wildcard
/// that covers the other (`[::]` covers IPv4 too, as Linux binds it dual-stack). Port 0 picks a
/// free port each time, so it never collides.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |x: SocketAddr, y: SocketAddr| x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4());
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

impl Settings {
    /// Every failed check, in a fixed order.
    pub(super) fn validate(&self) -> Vec<SettingsError> {
        let mut c = Checks::default();
        self.check_server(&mut c);
        self.check_sizes(&mut c);
        self.check_feed(&mut c);
        self.check_topics(&mut c);
        self.check_auth(&mut c);
        self.check_edge(&mut c);
        self.check_broker(&mut c);
        self.check_presence(&mut c);
        c.result(self.topic_rules());
        c.0
    }

    /// Values that work but are probably a mistake: logged at start-up, printed by
    /// `check-config`.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings = Vec::new();
        let keys = &self.auth.api_keys;
        if let Some(key) = keys
            .iter()
            .find(|k| PUBLIC_DIGESTS.contains(&k.sha256.to_ascii_lowercase().as_str()))
        {
            warnings.push(self.problem(
                "auth.api_keys",
                format!(
                    "the key {:?} has a placeholder or published example digest, which anyone may know the \
                     key of (or none has): replace it with one from `tickwire hash-key`",
                    key.name
                ),
            ));
        }
        let secret = self.auth.jwt.hs256_secret.expose();
        if !secret.is_empty() && secret.len() < MIN_HS256_SECRET_BYTES && self.auth.mode != AuthMode::Jwt {
            warnings.push(self.problem(
                "auth.jwt.hs256_secret",
                format!(
                    "is {} bytes, shorter than {MIN_HS256_SECRET_BYTES}: auth.mode = \"jwt\" would refuse it \
                     (make one with `openssl rand -hex 32`)",
                    secret.len()
                ),
            ));
        }
        warnings
    }

    fn check_server(&self, c: &mut Checks) {
        let s = &self.server;
        c.check(
            (128..=64 << 20).contains(&s.max_message_bytes),
            "server.max_message_bytes",
            "must be between 128 and 67108864",
        );
        c.check(
            s.max_subscriptions_per_connection >= 1,
            "server.max_subscriptions_per_connection",
            "must be at least 1",
        );
        c.check(
            s.requests_per_second.is_finite() && s.requests_per_second > 0.0,
            "server.requests_per_second",
            "must be a positive number",
        );
        c.check(s.request_burst >= 1, "server.request_burst", "must be at least 1");
        c.check(
            s.max_connections >= 1,
            "server.max_connections",
            "must be at least 1",
        );
        c.check(
            s.ping_interval >= Duration::from_millis(10),
            "server.ping_interval",
            "must be at least 10ms",
        );
        c.check(
            s.idle_timeout > s.ping_interval,
            "server.idle_timeout",
            "must be longer than server.ping_interval, or clients answering pings would time out",
        );
        c.check(
            s.handshake_timeout >= Duration::from_millis(10),
            "server.handshake_timeout",
            "must be at least 10ms",
        );
        if let Some(admin) = self.admin.listen {
            c.check(
                !overlap(admin, s.listen),
                "admin.listen",
                &format!(
                    "must not take the port of server.listen ({}): the second listener could not bind \
                     (\"Address already in use\"); use another port, or \"\" to serve /metrics, /healthz \
                     and /readyz on server.listen",
                    s.listen
                ),
            );
        }
    }

    /// `http`, `queue.max_bytes`, and the message sizes that must fit in a queue.
    fn check_sizes(&self, c: &mut Checks) {
        let h = &self.http;
        c.check(
            h.max_body_bytes >= 1024,
            "http.max_body_bytes",
            "must be at least 1024",
        );
        c.check(
            h.body_timeout >= Duration::from_millis(10),
            "http.body_timeout",
            "must be at least 10ms",
        );
        c.check(
            h.max_inflight_body_bytes >= h.max_body_bytes,
            "http.max_inflight_body_bytes",
            "must be at least http.max_body_bytes, or a body of the largest accepted size could never be read",
        );
        c.check(
            h.idempotency_window <= MAX_IDEMPOTENCY_WINDOW,
            "http.idempotency_window",
            "must be at most 24h",
        );
        c.check(
            (1..=MAX_IDEMPOTENCY_KEYS).contains(&h.idempotency_max_keys),
            "http.idempotency_max_keys",
            &format!("must be between 1 and {MAX_IDEMPOTENCY_KEYS}"),
        );
        c.check(
            self.queue.max_bytes >= 1024,
            "queue.max_bytes",
            "must be at least 1024",
        );
        c.check(
            h.max_message_bytes >= 1,
            "http.max_message_bytes",
            "must be at least 1",
        );
        // The largest message anyone may publish must fit in a subscriber's queue once framed,
        // or every reading subscriber of a `queue` topic would be closed as a slow consumer.
        let room = self.queue.max_bytes.saturating_sub(FRAME_ENVELOPE_BYTES);
        c.check(
            h.max_message_bytes.min(h.max_body_bytes) <= room,
            "http.max_message_bytes",
            &format!(
                "must be at most queue.max_bytes - {FRAME_ENVELOPE_BYTES} ({room}) (or http.max_body_bytes \
                 that low): a larger message's frame cannot fit in a subscriber's queue"
            ),
        );
        c.check(
            self.server.max_message_bytes <= room,
            "server.max_message_bytes",
            &format!(
                "must be at most queue.max_bytes - {FRAME_ENVELOPE_BYTES} ({room}): a client could publish a \
                 message whose frame cannot fit in a subscriber's queue"
            ),
        );
    }

    fn check_feed(&self, c: &mut Checks) {
        let f = &self.feed;
        c.check(
            f.updates_per_second.is_finite() && f.updates_per_second > 0.0 && f.updates_per_second <= 1000.0,
            "feed.updates_per_second",
            "must be a number in (0, 1000]",
        );
        c.check(
            !f.enabled || !f.symbols.is_empty(),
            "feed.symbols",
            "must not be empty while the feed is enabled",
        );
        for symbol in &f.symbols {
            let ok = !symbol.contains('.') && Topic::parse(&format!("prices.{symbol}")).is_ok();
            c.check(
                ok,
                "feed.symbols",
                &format!("{symbol:?} is not a valid topic token"),
            );
        }
    }

    /// `log.level`, and how many topics the hub holds and for how long.
    fn check_topics(&self, c: &mut Checks) {
        let level = &self.log.level;
        let valid = |filter: &str| tracing_subscriber::EnvFilter::try_new(filter).is_ok();
        // Name the directive that fails, not only the whole filter (RUST_LOG can be long).
        let bad = (level.split(',').map(str::trim)).find(|d| !d.is_empty() && !valid(d));
        c.check(
            valid(level),
            "log.level",
            &format!(
                "the directive {:?} is not valid: a filter is comma-separated directives, each a level \
                 (error, warn, info, debug, trace, off) or target=level, e.g. \"info,tickwire=debug\"",
                bad.unwrap_or(level)
            ),
        );
        c.check(
            self.limits.max_topics >= 1,
            "limits.max_topics",
            "must be at least 1",
        );
        c.check(
            self.limits.max_catch_up_topics >= 1,
            "limits.max_catch_up_topics",
            "must be at least 1",
        );
        c.check(
            self.limits.max_topics_per_connection >= 1,
            "limits.max_topics_per_connection",
            "must be at least 1",
        );
        let ttl = self.topics.idle_ttl;
        c.check(
            ttl.is_zero() || ttl >= MIN_IDLE_TTL,
            "topics.idle_ttl",
            "must be 0s (keep forever) or at least 100ms",
        );
        c.check(
            (1..=9).contains(&self.compression.level),
            "compression.level",
            "must be from 1 (fastest) to 9 (smallest)",
        );
        for rule in &self.queue.policies {
            let Some(rate) = rule.max_rate else { continue };
            c.check(
                (MIN_RATE..=MAX_RATE).contains(&rate),
                "queue.policies",
                &format!(
                    "{:?}: max_rate = {rate} must be between {MIN_RATE} and {MAX_RATE} (updates a second)",
                    rule.pattern
                ),
            );
            c.check(
                rule.policy == Policy::Conflate,
                "queue.policies",
                &format!(
                    "{:?}: max_rate needs policy = \"conflate\" (\"queue\" delivers every message)",
                    rule.pattern
                ),
            );
        }
        let sizes = std::iter::once(self.history.size).chain(self.history.policies.iter().map(|r| r.size));
        c.check(
            sizes.into_iter().all(|n| n <= MAX_HISTORY_SIZE),
            "history.size",
            &format!("history sizes (history.size, history.policies) must be at most {MAX_HISTORY_SIZE}"),
        );
    }

    fn check_auth(&self, c: &mut Checks) {
        let jwt = &self.auth.jwt;
        c.check(
            jwt.leeway <= MAX_JWT_LEEWAY,
            "auth.jwt.leeway",
            "must be at most 5s",
        );
        c.check(
            jwt.jwks_refresh >= Duration::from_secs(1),
            "auth.jwt.jwks_refresh",
            "must be at least 1s",
        );
        c.check(
            jwt.jwks_ca_file.is_none() || !jwt.jwks_url.is_empty(),
            "auth.jwt.jwks_ca_file",
            "is only used with auth.jwt.jwks_url",
        );
    }

    /// Who may connect: allowed origins and trusted proxies.
    fn check_edge(&self, c: &mut Checks) {
        for origin in &self.server.allowed_origins {
            c.check(
                valid_origin(origin),
                "server.allowed_origins",
                &format!("{origin:?} is not an origin: scheme://host[:port], no path, no trailing slash"),
            );
        }
        // An invalid list is reported as such, not also as missing.
        let proxies = c.result(self.trusted_proxies());
        c.check(
            !self.server.proxy_protocol || proxies.is_none_or(|p| !p.is_empty()),
            "server.proxy_protocol",
            "needs server.trusted_proxies: the header is only read from a trusted proxy, so every \
             connection would be refused",
        );
    }

    fn check_presence(&self, c: &mut Checks) {
        let p = &self.presence;
        c.result(patterns(
            "presence.patterns",
            p.patterns.iter().map(String::as_str),
        ));
        c.check(
            (1..=MAX_PRESENCE_MEMBERS).contains(&p.max_members),
            "presence.max_members",
            &format!("must be between 1 and {MAX_PRESENCE_MEMBERS}"),
        );
        c.check(
            (Duration::from_secs(3)..=Duration::from_secs(3600)).contains(&p.ttl),
            "presence.ttl",
            "must be between 3s and 1h",
        );
        c.check(
            self.occupancy.vacate_delay <= Duration::from_secs(3600),
            "occupancy.vacate_delay",
            "must be at most 1h",
        );
        for (i, w) in self.webhooks.iter().enumerate() {
            let mut problems = Vec::new();
            if !valid_webhook_url(&w.url) {
                problems.push(format!(
                    "url {:?} must be http://host[:port][/path] or https://…",
                    w.url
                ));
            }
            // The file itself is read by `prepare`.
            if w.ca_file.is_some() && !w.url.starts_with("https://") {
                problems.push("ca_file is only used with an https:// url".to_string());
            }
            if w.events.is_empty() {
                problems.push("events must name at least one event".to_string());
            }
            for e in &w.events {
                if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                    problems.push(format!(
                        "unknown event {e:?} (expected one of {WEBHOOK_EVENTS:?})"
                    ));
                }
            }
            if let Err(e) = patterns("webhooks", w.topics.iter().map(String::as_str)) {
                problems.push(format!("topics: {e}"));
            }
            if !w.secret.is_set() {
                problems.push("secret must be set (it signs every request)".to_string());
            }
            if !(1..=20).contains(&w.max_attempts) {
                problems.push("max_attempts must be between 1 and 20".to_string());
            }
            if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&w.timeout) {
                problems.push("timeout must be between 100ms and 60s".to_string());
            }
            if !(1..=1_000_000).contains(&w.queue) {
                problems.push("queue must be between 1 and 1000000".to_string());
            }
            if !problems.is_empty() {
                c.0.push(SettingsError::invalid(
                    "webhooks",
                    format!("entry {i}: {}", problems.join("; ")),
                ));
            }
        }
    }

    fn check_broker(&self, c: &mut Checks) {
        let b = &self.broker;
        let url = b.redis_url.expose();
        let redis = b.kind == BrokerKind::Redis;
        c.check(
            !redis || url.starts_with("redis://") || url.starts_with("rediss://"),
            "broker.redis_url",
            "must start with redis:// or rediss://",
        );
        c.check(
            !redis || redis::Client::open(url).is_ok(),
            "broker.redis_url",
            "is not a valid Redis URL (redis[s]://[:password@]host[:port][/db])",
        );
        let cluster = b.kind == BrokerKind::RedisCluster;
        let seeds: Vec<&str> = b.redis_cluster_urls.iter().map(|u| u.expose()).collect();
        if cluster {
            c.check(
                !seeds.is_empty(),
                "broker.redis_cluster_urls",
                "needs at least one seed node with broker.kind = \"redis-cluster\"",
            );
            for seed in &seeds {
                c.check(
                    (seed.starts_with("redis://") || seed.starts_with("rediss://"))
                        && redis::Client::open(*seed).is_ok(),
                    "broker.redis_cluster_urls",
                    "each must be a Redis URL redis[s]://[:password@]host:port",
                );
            }
            let tls = seeds.iter().filter(|s| s.starts_with("rediss://")).count();
            c.check(
                tls == 0 || tls == seeds.len(),
                "broker.redis_cluster_urls",
                "must all use redis:// or all rediss://",
            );
            c.check(
                self.presence.patterns.is_empty() && self.webhooks.is_empty(),
                "broker.kind",
                "\"redis-cluster\" has no presence or webhooks yet: presence.patterns and [[webhooks]] need broker.kind = \"redis\"",
            );
        } else {
            c.check(
                seeds.is_empty(),
                "broker.redis_cluster_urls",
                "is only used with broker.kind = \"redis-cluster\"",
            );
        }
        let tls = if cluster {
            seeds.first().is_some_and(|s| s.starts_with("rediss://"))
        } else {
            url.starts_with("rediss://")
        };
        if let (BrokerKind::Redis | BrokerKind::RedisCluster, Some(ca)) = (b.kind, &b.redis_ca_file) {
            c.check(
                tls,
                "broker.redis_ca_file",
                "is only used with a rediss:// broker.redis_url (or redis_cluster_urls)",
            );
            c.check(
                std::fs::read(ca).is_ok(),
                "broker.redis_ca_file",
                &format!("cannot read {}", ca.display()),
            );
        }
        c.check(
            !b.prefix.is_empty()
                && b.prefix
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_-:".contains(&c)),
            "broker.prefix",
            "must be non-empty and use only [A-Za-z0-9_:-]",
        );
        c.check(
            b.timeout >= Duration::from_millis(10),
            "broker.timeout",
            "must be at least 10ms",
        );
        c.check(
            b.reconnect_min >= Duration::from_millis(1) && b.reconnect_max >= b.reconnect_min,
            "broker.reconnect_max",
            "reconnect_min must be at least 1ms and reconnect_max at least reconnect_min",
        );
        c.check(
            (1..=1_000_000).contains(&b.receive_queue),
            "broker.receive_queue",
            "must be 1 to 1000000",
        );
        let sentinel = &b.sentinel;
        if !sentinel.master_name.is_empty() || !sentinel.urls.is_empty() {
            c.check(
                b.kind == BrokerKind::Redis,
                "broker.sentinel",
                "is only used with broker.kind = \"redis\"",
            );
            c.check(
                !sentinel.master_name.is_empty() && !sentinel.urls.is_empty(),
                "broker.sentinel",
                "needs both master_name and at least one url",
            );
        }
        for url in &sentinel.urls {
            c.check(
                url.starts_with("redis://")
                    && !url.contains('@')
                    && redis::Client::open(url.as_str()).is_ok(),
                "broker.sentinel.urls",
                &format!(
                    "{url:?} must be redis://host:port (sentinels with TLS or a password are not supported)"
                ),
            );
        }
    }
}

/// The events a `[[webhooks]]` entry may ask for.
pub const WEBHOOK_EVENTS: [&str; 4] = ["occupied", "vacated", "join", "leave"];

/// `http[s]://host[:port][/path]`, which is what the webhook client (`outbound`) speaks.
fn valid_webhook_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && !url.contains('@')
        && url
            .parse::<hyper::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()))
}
