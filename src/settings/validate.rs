//! The checks on values that deserializing alone cannot make: ranges, values that depend on
//! each other, list entries. One function per section, called in a fixed order, so a file with
//! several mistakes always reports the same one first. Files the settings name are read by
//! `prepare`, which builds what they make.

use std::time::Duration;

use crate::settings::error::SettingsError;
use crate::settings::origin::valid_origin;
use crate::settings::sections::{
    BrokerKind, Settings, FRAME_ENVELOPE_BYTES, MAX_HISTORY_SIZE, MAX_IDEMPOTENCY_KEYS,
    MAX_IDEMPOTENCY_WINDOW, MAX_JWT_LEEWAY, MIN_IDLE_TTL,
};
use crate::topic::Topic;

fn check(ok: bool, key: &'static str, message: &str) -> Result<(), SettingsError> {
    if ok {
        return Ok(());
    }
    Err(SettingsError::invalid(key, message))
}

impl Settings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        self.check_server()?;
        self.check_sizes()?;
        self.check_feed()?;
        self.check_topics()?;
        self.check_auth()?;
        self.check_edge()?;
        self.check_broker()?;
        self.topic_rules()?;
        Ok(())
    }

    fn check_server(&self) -> Result<(), SettingsError> {
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
        )
    }

    /// `http`, `queue.max_bytes`, and the message sizes that must fit in a queue.
    fn check_sizes(&self) -> Result<(), SettingsError> {
        let h = &self.http;
        check(
            h.max_body_bytes >= 1024,
            "http.max_body_bytes",
            "must be at least 1024",
        )?;
        check(
            h.body_timeout >= Duration::from_millis(10),
            "http.body_timeout",
            "must be at least 10ms",
        )?;
        check(
            h.max_inflight_body_bytes >= h.max_body_bytes,
            "http.max_inflight_body_bytes",
            "must be at least http.max_body_bytes, or a body of the largest accepted size could never be read",
        )?;
        check(
            h.idempotency_window <= MAX_IDEMPOTENCY_WINDOW,
            "http.idempotency_window",
            "must be at most 24h",
        )?;
        check(
            (1..=MAX_IDEMPOTENCY_KEYS).contains(&h.idempotency_max_keys),
            "http.idempotency_max_keys",
            &format!("must be between 1 and {MAX_IDEMPOTENCY_KEYS}"),
        )?;
        check(
            self.queue.max_bytes >= 1024,
            "queue.max_bytes",
            "must be at least 1024",
        )?;
        check(
            h.max_message_bytes >= 1,
            "http.max_message_bytes",
            "must be at least 1",
        )?;
        // The largest message anyone may publish must fit in a subscriber's queue once framed,
        // or every reading subscriber of a `queue` topic would be closed as a slow consumer.
        let room = self.queue.max_bytes.saturating_sub(FRAME_ENVELOPE_BYTES);
        check(
            h.max_message_bytes.min(h.max_body_bytes) <= room,
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
        )
    }

    fn check_feed(&self) -> Result<(), SettingsError> {
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
        Ok(())
    }

    /// `log.level`, and how many topics the hub holds and for how long.
    fn check_topics(&self) -> Result<(), SettingsError> {
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
        check(
            self.limits.max_catch_up_topics >= 1,
            "limits.max_catch_up_topics",
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
        )
    }

    fn check_auth(&self) -> Result<(), SettingsError> {
        let jwt = &self.auth.jwt;
        check(
            jwt.leeway <= MAX_JWT_LEEWAY,
            "auth.jwt.leeway",
            "must be at most 5s",
        )?;
        check(
            jwt.jwks_refresh >= Duration::from_secs(1),
            "auth.jwt.jwks_refresh",
            "must be at least 1s",
        )?;
        check(
            jwt.jwks_ca_file.is_none() || !jwt.jwks_url.is_empty(),
            "auth.jwt.jwks_ca_file",
            "is only used with auth.jwt.jwks_url",
        )
    }

    /// Who may connect: allowed origins and trusted proxies.
    fn check_edge(&self) -> Result<(), SettingsError> {
        for origin in &self.server.allowed_origins {
            check(
                valid_origin(origin),
                "server.allowed_origins",
                &format!("{origin:?} is not an origin: scheme://host[:port], no path, no trailing slash"),
            )?;
        }
        let proxies = self.trusted_proxies()?;
        check(
            !self.server.proxy_protocol || !proxies.is_empty(),
            "server.proxy_protocol",
            "needs server.trusted_proxies: the header is only read from a trusted proxy, so every \
             connection would be refused",
        )
    }

    fn check_broker(&self) -> Result<(), SettingsError> {
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
        )
    }
}
