//! Where `subscribe` and `publish` find the server: `--url`, else `TICKWIRE_URL`, else the
//! configured `server.listen` (the same configuration loading as `serve`). Any of the server's
//! base URLs is accepted (`http://`, `https://`, `ws://`, `wss://`, with or without `/ws`), and
//! both commands derive what they need from it: the WebSocket URL, the HTTP API's base and the
//! SSE endpoint (`subscribe --sse`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use tickwire::settings::Settings;
use tickwire_client::Error;

use super::Failure;

/// The environment variable read when `--url` is not given.
pub(crate) const URL_ENV: &str = "TICKWIRE_URL";

/// The path of the WebSocket endpoint under the server's base.
const WS_PATH: &str = "/ws";
/// The path of the publish endpoint, also accepted as the end of a base URL.
const PUBLISH_PATH: &str = "/api/v1/publish";
/// The path of the Server-Sent Events endpoint under the server's base.
const SSE_PATH: &str = "/sse";

/// The server the command talks to.
pub(crate) struct Target {
    /// `ws://` or `wss://` URL of the WebSocket endpoint, with the query given, if any.
    pub(crate) ws: String,
    /// `http://` or `https://` base of the HTTP API (a path prefix kept).
    pub(crate) http: String,
    source: Source,
}

/// Where the URL came from, for the messages.
#[derive(Clone, Copy)]
enum Source {
    Flag,
    Env,
    Config,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Flag => "from --url",
            Source::Env => "from TICKWIRE_URL",
            Source::Config => "from server.listen in the configuration",
        })
    }
}

/// What to do about a URL that reached something else than a tickwire server.
const WHAT_TO_PASS: &str =
    "pass the tickwire server's base URL with --url or TICKWIRE_URL, e.g. --url http://127.0.0.1:8080";

impl Target {
    /// The server from `--url` (`flag`), else `TICKWIRE_URL`, else the configuration (`config`
    /// is the `--config` file).
    pub(crate) fn resolve(flag: Option<&str>, config: Option<&Path>) -> Result<Target, Failure> {
        if let Some(url) = flag {
            return Target::parse(url, Source::Flag);
        }
        if let Some(url) = std::env::var(URL_ENV).ok().filter(|u| !u.trim().is_empty()) {
            return Target::parse(&url, Source::Env);
        }
        let settings = Settings::load(config).map_err(|e| {
            Failure::Usage(format!(
                "no --url or {URL_ENV} given, and the configuration that would give \
                 server.listen is invalid: {e}"
            ))
        })?;
        Ok(Target::from_listen(
            settings.server.listen,
            settings.tls.cert.is_some(),
        ))
    }

    /// The server a client on this machine reaches at `listen`: a wildcard address is reached
    /// on the loopback of its family.
    fn from_listen(listen: SocketAddr, tls: bool) -> Target {
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let authority = SocketAddr::new(ip, listen.port()).to_string();
        Target::build(tls, &authority, "", None, Source::Config)
    }

    fn parse(url: &str, source: Source) -> Result<Target, Failure> {
        let invalid = |reason: &str| {
            Failure::Usage(format!(
                "invalid server URL {url:?} ({source}): {reason}; expected \
                 http(s)://HOST:PORT or ws(s)://HOST:PORT, with or without /ws"
            ))
        };
        let url = url.trim();
        // A bare HOST:PORT is the plain-HTTP base.
        let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => false,
            "https" | "wss" => true,
            _ => return Err(invalid(&format!("unsupported scheme {scheme:?}"))),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query).filter(|q| !q.is_empty())),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }
        let path = path.trim_end_matches('/');
        let prefix = (path.strip_suffix(WS_PATH))
            .or_else(|| path.strip_suffix(PUBLISH_PATH))
            .unwrap_or(path);
        Ok(Target::build(tls, authority, prefix, query, source))
    }

    fn build(tls: bool, authority: &str, prefix: &str, query: Option<&str>, source: Source) -> Target {
        let (ws, http) = if tls { ("wss", "https") } else { ("ws", "http") };
        let query = query.map(|q| format!("?{q}")).unwrap_or_default();
        Target {
            ws: format!("{ws}://{authority}{prefix}{WS_PATH}{query}"),
            http: format!("{http}://{authority}{prefix}"),
            source,
        }
    }

    /// The URL of the SSE endpoint (`subscribe --sse`), without a query.
    pub(crate) fn sse(&self) -> String {
        format!("{}{SSE_PATH}", self.http)
    }

    /// The message for a failed WebSocket connect: what was reached, and what to pass.
    pub(crate) fn connect_failure(&self, e: &Error, token_given: bool) -> String {
        self.connect_failure_to(&self.ws, "WebSocket", e, token_given)
    }

    /// The same for the endpoint at `url`, of `kind` (`WebSocket`, `SSE`).
    pub(crate) fn connect_failure_to(&self, url: &str, kind: &str, e: &Error, token_given: bool) -> String {
        let source = self.source;
        match e {
            Error::NotWebSocket { .. } => format!("{e} ({source}); {WHAT_TO_PASS}"),
            Error::Http {
                status: 404 | 405, ..
            } => {
                format!("{url} ({source}) is not a tickwire {kind} endpoint: {e}; {WHAT_TO_PASS}")
            }
            Error::Unauthorized { status: 401, .. } if token_given => {
                format!("{url} refused the token: {e}; pass a valid one with --token")
            }
            Error::Unauthorized { status: 401, .. } => {
                format!("{url} requires a token: {e}; pass one with --token (see `tickwire token`)")
            }
            Error::Connect { .. } => format!("{e} ({source})"),
            _ => format!("{url}: {e}"),
        }
    }

    /// The message for a failed publish: what was reached, and what to pass.
    pub(crate) fn publish_failure(&self, e: &Error, key_given: bool) -> String {
        let url = format!("{}{PUBLISH_PATH}", self.http);
        let source = self.source;
        match e {
            Error::Http { status: 401, .. } if key_given => {
                format!("{e}; the key given with --api-key was refused")
            }
            Error::Http { status: 401, .. } => {
                format!("{e}; pass the publisher's API key with --api-key (see `tickwire hash-key`)")
            }
            // Not the server's JSON error shape: something else answered.
            Error::Http { status, code, .. } if code.starts_with("http_") => {
                format!("{url} ({source}) answered HTTP {status} without a tickwire error: not a tickwire server; {WHAT_TO_PASS}")
            }
            Error::Protocol(_) => {
                format!("{url} ({source}) did not answer like a tickwire server ({e}); {WHAT_TO_PASS}")
            }
            Error::Connect { .. } => format!("{e} ({source})"),
            _ => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(url: &str) -> (String, String) {
        let target = Target::parse(url, Source::Flag).unwrap_or_else(|_| panic!("{url} refused"));
        (target.ws, target.http)
    }

    #[test]
    fn every_base_url_form_gives_both_endpoints() {
        let plain = ("ws://h:1/ws".to_string(), "http://h:1".to_string());
        for url in [
            "ws://h:1",
            "ws://h:1/",
            "ws://h:1/ws",
            "http://h:1",
            "http://h:1/ws/",
            "h:1",
            "WS://h:1",
        ] {
            let (ws, http) = urls(url);
            assert_eq!((ws.to_lowercase(), http.to_lowercase()), plain, "{url}");
        }
        let secure = ("wss://h/ws".to_string(), "https://h".to_string());
        for url in ["wss://h", "https://h/", "wss://h/ws", "https://h/api/v1/publish"] {
            assert_eq!(urls(url), secure, "{url}");
        }
        assert_eq!(
            urls("https://h/push/ws?x=1#f"),
            ("wss://h/push/ws?x=1".into(), "https://h/push".into()),
            "a path prefix is kept, the query goes to the WebSocket"
        );
        assert_eq!(
            urls("ws://[::1]:9/ws"),
            ("ws://[::1]:9/ws".into(), "http://[::1]:9".into())
        );
        for bad in ["ftp://h", "ws://", "http:///ws"] {
            assert!(Target::parse(bad, Source::Flag).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_addresses_become_loopback_urls() {
        let at = |listen: &str, tls| {
            let t = Target::from_listen(listen.parse().unwrap(), tls);
            (t.ws, t.http)
        };
        assert_eq!(
            at("0.0.0.0:8080", false),
            ("ws://127.0.0.1:8080/ws".into(), "http://127.0.0.1:8080".into())
        );
        assert_eq!(
            at("[::]:8443", true),
            ("wss://[::1]:8443/ws".into(), "https://[::1]:8443".into())
        );
        assert_eq!(at("10.1.2.3:80", false).1, "http://10.1.2.3:80");
    }
}
