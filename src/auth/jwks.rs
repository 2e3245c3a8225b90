//! The JWT key set fetched from `auth.jwt.jwks_url`: fetching it over HTTPS, keeping it fresh,
//! and keeping the last good set when a fetch fails.
//!
//! One task per server fetches: at start, every `auth.jwt.jwks_refresh`, and when a token names
//! a `kid` the set lacks (an IdP that rotated its keys). Unknown-kid fetches are rate-limited
//! to one per [`KID_REFRESH_INTERVAL`], so tokens with made-up kids cannot turn the server into
//! a load generator against the IdP. A WebSocket upgrade with an unknown kid waits (at most
//! [`FETCH_TIMEOUT`]) for that fetch and is verified again; every other check reads the current
//! set and never waits on the network.
//!
//! A failed fetch (connection, TLS, non-200, body over [`MAX_BODY_BYTES`], not a usable JWKS)
//! keeps the last good set, is counted in `tickwire_jwks_refresh_total{result="error"}`, and is
//! retried after [`RETRY_AFTER_ERROR`] (or `jwks_refresh`, when shorter).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, HOST, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tracing::{debug, error, info, warn};

use thiserror::Error;

use crate::auth::keyset::{self, Key};
use crate::metrics::Metrics;
use crate::settings::JwtSettings;
use crate::settings::SettingsError;
use crate::swap::Swap;

/// Why fetching `auth.jwt.jwks_url` failed; the last good key set stays in use.
#[derive(Debug, Error)]
pub enum JwksError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered HTTP {0}, expected 200")]
    Status(u16),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("not a usable key set: {0}")]
    KeySet(String),
}

/// One fetch (connect, TLS, request, body) must finish within this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS body accepted; real sets are a few KiB.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// At most one fetch per this interval is triggered by tokens with an unknown `kid`.
pub const KID_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch, the next one comes this soon (or after `jwks_refresh`, if shorter).
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(30);

const URL_KEY: &str = "auth.jwt.jwks_url";
const CA_KEY: &str = "auth.jwt.jwks_ca_file";

/// Where the set is fetched from.
struct Endpoint {
    /// Without brackets for an IPv6 literal: what TCP connects to and TLS verifies.
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    /// The `Host` header.
    authority: String,
    path: String,
}

/// The fetched key set and what keeps it fresh.
pub struct Remote {
    url: String,
    endpoint: Endpoint,
    /// `jwks_ca_file`'s certificates; `None` trusts the system's roots.
    ca: Option<Vec<CertificateDer<'static>>>,
    refresh: Duration,
    /// For each key's validation (audience, issuer, leeway).
    settings: JwtSettings,
    keys: Swap<Vec<Key>>,
    attempts: Mutex<Attempts>,
    /// Wakes the fetch task for an unknown kid.
    wake: Notify,
    /// Counts finished fetches (good or not): unknown-kid waiters watch it.
    done: watch::Sender<u64>,
    started: AtomicBool,
}

#[derive(Default)]
struct Attempts {
    in_flight: bool,
    last_kid_refresh: Option<Instant>,
}

impl Remote {
    /// Checks the URL's shape and reads `jwks_ca_file`; fetches nothing (that is [`start`]'s
    /// job), so `check-config` works without reaching the IdP.
    ///
    /// [`start`]: Remote::start
    pub fn new(s: &JwtSettings) -> Result<Remote, SettingsError> {
        let url = s.jwks_url.trim();
        let uri: Uri = url
            .parse()
            .map_err(|e| SettingsError::invalid(URL_KEY, format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(SettingsError::invalid(URL_KEY, "must start with https://"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| SettingsError::invalid(URL_KEY, "has no host"))?;
        if authority.as_str().contains('@') {
            return Err(SettingsError::invalid(URL_KEY, "must not carry credentials"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| SettingsError::invalid(URL_KEY, "has no valid host name"))?;
        let endpoint = Endpoint {
            host: host.to_string(),
            server_name,
            port: authority.port_u16().unwrap_or(443),
            authority: authority.as_str().to_string(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        };
        let ca = match &s.jwks_ca_file {
            None => None,
            Some(path) => Some(crate::settings::pem_certificates(CA_KEY, path)?),
        };
        Ok(Remote {
            url: url.to_string(),
            endpoint,
            ca,
            refresh: s.jwks_refresh,
            settings: s.clone(),
            keys: Swap::new(Vec::new()),
            attempts: Mutex::default(),
            wake: Notify::new(),
            done: watch::Sender::new(0),
            started: AtomicBool::new(false),
        })
    }

    /// The current set: empty until a fetch succeeds.
    pub(crate) fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.load()
    }

    /// Starts the fetch task and waits (bounded) for its first fetch, so that a reachable IdP
    /// means no token is refused for want of keys. When that fetch fails the server serves
    /// anyway, refusing every token (401) until a fetch succeeds.
    pub async fn start(self: &Arc<Self>, metrics: Arc<Metrics>) -> JoinHandle<()> {
        let mut done = self.done.subscribe();
        self.started.store(true, Ordering::Release);
        let task = tokio::spawn(self.clone().run(metrics));
        let _ = tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), done.changed()).await;
        if self.keys().is_empty() {
            error!(
                url = %self.url,
                "no JWKS yet: every token is refused (401) until a fetch of auth.jwt.jwks_url succeeds"
            );
        }
        task
    }

    /// Asks for a fetch because a token named an unknown kid. False when that is rate-limited
    /// (and no fetch is under way to wait for).
    pub fn request_refresh(&self) -> bool {
        if !self.started.load(Ordering::Acquire) {
            return false;
        }
        let mut a = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        if a.in_flight {
            return true;
        }
        let now = Instant::now();
        if a.last_kid_refresh
            .is_some_and(|t| now.duration_since(t) < KID_REFRESH_INTERVAL)
        {
            return false;
        }
        a.last_kid_refresh = Some(now);
        a.in_flight = true;
        self.wake.notify_one();
        true
    }

    /// [`request_refresh`](Remote::request_refresh), then waits (at most [`FETCH_TIMEOUT`])
    /// for the fetch to finish. True when one finished: the caller verifies again.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        // Subscribed first, so a fetch finishing right after the request is not missed.
        let mut done = self.done.subscribe();
        if !self.request_refresh() {
            return false;
        }
        matches!(
            tokio::time::timeout(FETCH_TIMEOUT, done.changed()).await,
            Ok(Ok(()))
        )
    }

    async fn run(self: Arc<Self>, metrics: Arc<Metrics>) {
        let tls = self.connector().await;
        loop {
            self.attempts.lock().unwrap_or_else(|e| e.into_inner()).in_flight = true;
            let fetched = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch(&tls)).await {
                Ok(r) => r,
                Err(_) => Err(JwksError::Timeout(FETCH_TIMEOUT)),
            };
            let next = match fetched {
                Ok(keys) => {
                    let kids = |k: &[Key]| k.iter().map(|k| k.kid.clone()).collect::<Vec<_>>();
                    let changed = kids(&keys) != kids(&self.keys());
                    metrics.jwks_keys.set(keys.len() as i64);
                    metrics.jwks_refresh(true);
                    if changed {
                        let kids: Vec<_> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
                        info!(url = %self.url, ?kids, "JWKS loaded");
                    } else {
                        debug!(url = %self.url, "JWKS unchanged");
                    }
                    self.keys.store(keys);
                    self.refresh
                }
                Err(e) => {
                    metrics.jwks_refresh(false);
                    let retry = self.refresh.min(RETRY_AFTER_ERROR);
                    warn!(
                        url = %self.url, error = %e, kept = self.keys().len(), ?retry,
                        "JWKS refresh failed: keeping the last good key set"
                    );
                    retry
                }
            };
            self.attempts.lock().unwrap_or_else(|e| e.into_inner()).in_flight = false;
            self.done.send_modify(|n| *n += 1);
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// The TLS client: `jwks_ca_file`'s roots, or the system's (read off the runtime).
    async fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(certs) => {
                roots.add_parsable_certificates(certs.iter().cloned());
            }
            None => {
                let native = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs).await;
                if let Ok(native) = native {
                    roots.add_parsable_certificates(native.certs);
                }
            }
        }
        if roots.is_empty() {
            error!(url = %self.url, "no trusted root certificates: set auth.jwt.jwks_ca_file");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// One GET of the URL over a fresh connection, parsed into keys.
    async fn fetch(&self, tls: &TlsConnector) -> Result<Vec<Key>, JwksError> {
        let e = &self.endpoint;
        let tcp = TcpStream::connect((e.host.as_str(), e.port))
            .await
            .map_err(JwksError::Connect)?;
        let stream = tls
            .connect(e.server_name.clone(), tcp)
            .await
            .map_err(JwksError::Tls)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let request = Request::get(e.path.as_str())
            .header(HOST, e.authority.as_str())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("tickwire/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|err| JwksError::KeySet(format!("bad request: {err}")))?;
        let exchange = async {
            let response = sender.send_request(request).await?;
            if response.status() != StatusCode::OK {
                return Err(JwksError::Status(response.status().as_u16()));
            }
            match Limited::new(response.into_body(), MAX_BODY_BYTES).collect().await {
                Ok(body) => Ok(body.to_bytes()),
                Err(err) => match err.downcast::<hyper::Error>() {
                    Ok(err) => Err(JwksError::Http(*err)),
                    Err(_) => Err(JwksError::TooLarge(MAX_BODY_BYTES)),
                },
            }
        };
        let mut conn = std::pin::pin!(conn);
        let mut exchange = std::pin::pin!(exchange);
        // The connection is driven here, not in a spawned task, so a timeout drops it too.
        let body = tokio::select! {
            r = &mut exchange => r?,
            _ = &mut conn => exchange.await?,
        };
        let keys = keyset::jwks(URL_KEY, &body).map_err(|err| match err {
            SettingsError::Invalid { message, .. } => JwksError::KeySet(message),
            other => JwksError::KeySet(other.to_string()),
        })?;
        Ok(keys
            .into_iter()
            .map(|(kid, key, alg)| Key {
                kid,
                key,
                validation: keyset::validation(alg, &self.settings),
            })
            .collect())
    }
}
