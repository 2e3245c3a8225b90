//! The one step that turns plain [`Settings`] into the runtime objects they describe: the
//! authenticator (ACLs parsed, JWT and API key files read), the trusted proxies and the TLS
//! acceptor (certificate and key read); the webhooks' CA files are read to be checked.
//!
//! `Settings::load` only parses and checks values, so configuration stays data and `settings`
//! depends on nothing above it. `serve`, `check-config` and a reload all go through here, so a
//! bad key file or certificate is refused the same way (same message, exit code 2 for
//! `check-config`) before any port is bound.

use crate::auth::Auth;
use crate::settings::{Settings, SettingsError};
use crate::transport::proxy::TrustedProxies;
use crate::transport::tls::{self, Tls};

/// What the settings build; each part names its key when it fails.
pub struct Prepared {
    pub auth: Auth,
    pub proxies: TrustedProxies,
    /// `None` for plain TCP (no `tls.cert`/`tls.key`).
    pub tls: Option<Tls>,
}

/// Builds every runtime object of `settings`, reading the files they name (blocking reads:
/// call it before the listeners start or off the runtime).
pub fn prepare(settings: &Settings) -> Result<Prepared, SettingsError> {
    // The order validation used to check them in: the auth files first, then TLS.
    let auth = Auth::from_settings(&settings.auth)?;
    let tls = tls::acceptor(&settings.tls)?;
    let proxies = TrustedProxies::new(settings.trusted_proxies()?);
    // Read here to be refused before start-up; each webhook's task reads its file again.
    for (i, w) in settings.webhooks.iter().enumerate() {
        if let Some(ca) = &w.ca_file {
            crate::settings::pem_certificates("webhooks", ca)
                .map_err(|e| e.prefixed(&format!("entry {i}: ca_file ")))?;
        }
    }
    Ok(Prepared { auth, proxies, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Here rather than in `settings`: some keys are only checked when their files are read.
    #[test]
    fn invalid_values_name_their_key() {
        for (toml, key) in [
            ("[server]\nlisten = \"nowhere\"", "listen"),
            ("[queue]\nmax_bytes = 10", "queue.max_bytes"),
            ("[http]\nbody_timeout = \"1ms\"", "http.body_timeout"),
            (
                "[http]\nmax_body_bytes = 4096\nmax_inflight_body_bytes = 2048",
                "http.max_inflight_body_bytes",
            ),
            ("[auth.anonymous]\npublish = [\"a..b\"]", "auth.anonymous.publish"),
            (
                "[auth.anonymous]\nsubscribe = [\"a.>.b\"]",
                "auth.anonymous.subscribe",
            ),
            ("[auth]\nmode = \"open\"", "mode"),
            ("[auth]\nmode = \"jwt\"", "auth.jwt"),
            ("[auth.jwt]\nleeway = \"6s\"", "auth.jwt.leeway"),
            ("[auth.jwt]\njwks_refresh = \"500ms\"", "auth.jwt.jwks_refresh"),
            (
                "[auth.jwt]\njwks_ca_file = \"/etc/hosts\"",
                "auth.jwt.jwks_ca_file",
            ),
            (
                "[auth]\nmode = \"jwt\"\n[auth.jwt]\njwks_url = \"http://idp.example/jwks\"",
                "auth.jwt.jwks_url",
            ),
            (
                "[auth]\nmode = \"jwt\"\n[auth.jwt]\njwks_url = \"https://u:p@idp.example/jwks\"",
                "auth.jwt.jwks_url",
            ),
            (
                "[auth]\nmode = \"jwt\"\n[auth.jwt]\njwks_url = \"https://idp.example/j\"\n\
                 jwks_ca_file = \"/nonexistent\"",
                "auth.jwt.jwks_ca_file",
            ),
            (
                "[server]\nallowed_origins = [\"https://a.example/\"]",
                "server.allowed_origins",
            ),
            (
                "[server]\nallowed_origins = [\"a.example\"]",
                "server.allowed_origins",
            ),
            ("[tls]\ncert = \"/nonexistent/cert.pem\"", "tls.key"),
            (
                "[[webhooks]]\nurl = \"https://h/\"\nevents = [\"join\"]\nsecret = \"s\"\n\
                 ca_file = \"/etc/hosts\"",
                "webhooks",
            ),
            (
                "[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"",
                "tls.cert",
            ),
            (
                "[[auth.api_keys]]\nname = \"a\"\nsha256 = \"abc\"\npublish = []",
                "auth.api_keys",
            ),
            (
                "[queue]\npolicies = [{pattern = \"x\", policy = \"drop\"}]",
                "policy",
            ),
            ("[feed]\nsymbols = [\"A.B\"]", "feed.symbols"),
            ("[feed]\nupdates_per_second = 0", "feed.updates_per_second"),
            (
                "[server]\nidle_timeout = \"1s\"\nping_interval = \"2s\"",
                "server.idle_timeout",
            ),
            ("[server]\nidle_timeout = \"soon\"", "idle_timeout"),
            ("[admin]\nlisten = \"x\"", "listen"),
            ("[log]\nformat = \"xml\"", "format"),
            ("[history]\nsize = 1000000", "history.size"),
            ("[limits]\nmax_topics = 0", "limits.max_topics"),
            ("[topics]\nidle_ttl = \"10ms\"", "topics.idle_ttl"),
            ("[topics]\nidle_ttl = \"later\"", "idle_ttl"),
            ("[broker]\nkind = \"nats\"", "kind"),
            (
                "[broker]\nkind = \"redis\"\nredis_url = \"http://x\"",
                "broker.redis_url",
            ),
            ("[broker]\nprefix = \"a b\"", "broker.prefix"),
            (
                "[broker]\nkind = \"redis\"\nredis_url = \"redis://x\"\nredis_ca_file = \"/nonexistent\"",
                "broker.redis_ca_file",
            ),
            (
                "[broker]\nkind = \"redis\"\nredis_url = \"rediss://x\"\nredis_ca_file = \"/nonexistent\"",
                "broker.redis_ca_file",
            ),
            ("[broker]\ntimeout = \"1ms\"", "broker.timeout"),
            (
                "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]",
                "server.trusted_proxies",
            ),
            (
                "[server]\ntrusted_proxies = [\"proxy.internal\"]",
                "server.trusted_proxies",
            ),
            ("[server]\nproxy_protocol = true", "server.proxy_protocol"),
            (
                "[history]\npolicies = [{pattern = \"a..b\", size = 1, ttl_seconds = 1}]",
                "history.policies",
            ),
        ] {
            let err = Settings::from_toml(toml).and_then(|s| prepare(&s).map(drop));
            let err = err.expect_err("refused").to_string();
            assert!(err.contains(key), "{toml:?} gave {err:?}");
        }
    }
}
