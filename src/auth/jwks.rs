//! The JWT key set fetched from `auth.jwt.jwks_url`: fetching it over HTTPS (the server's one
//! HTTP client, `outbound`, shared with the webhooks), keeping it fresh, and keeping the last
//! good set when a fetch fails.
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
use hyper::header::ACCEPT;
use hyper::{Method, StatusCode};
use rustls::pki_types::CertificateDer;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use thiserror::Error;

use crate::auth::keyset::{self, Key};
use crate::metrics::Metrics;
use crate::outbound::{self, Destination, OutboundError};
use crate::settings::JwtSettings;
use crate::settings::SettingsError;
use crate::swap::Swap;

/// Why fetching `auth.jwt.jwks_url` failed; the last good key set stays in use.
#[derive(Debug, Error)]
pub enum JwksError {
    /// No answer: connection, TLS, HTTP, a body over [`MAX_BODY_BYTES`], the timeout.
    #[error(transparent)]
    Fetch(#[from] OutboundError),
    #[error("answered HTTP {0}, expected 200")]
    Status(u16),
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

/// The fetched key set and what keeps it fresh.
pub struct Remote {
    url: String,
    endpoint: Destination,
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
        if !url.starts_with("https://") {
            return Err(SettingsError::invalid(URL_KEY, "must start with https://"));
        }
        let endpoint = Destination::parse(url).map_err(|e| SettingsError::invalid(URL_KEY, e.to_string()))?;
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
        let client = outbound::Client::new(self.endpoint.clone(), self.ca.as_deref(), FETCH_TIMEOUT).await;
        if client.trusts_nothing() {
            error!(url = %self.url, "no trusted root certificates: set {CA_KEY}");
        }
        loop {
            self.attempts.lock().unwrap_or_else(|e| e.into_inner()).in_flight = true;
            let next = match self.fetch(&client).await {
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

    /// One GET of the URL, parsed into keys.
    async fn fetch(&self, client: &outbound::Client) -> Result<Vec<Key>, JwksError> {
        let headers = [(ACCEPT, "application/json")];
        let response = (client.send(Method::GET, &headers, Bytes::new(), Some(MAX_BODY_BYTES))).await?;
        if response.status != StatusCode::OK {
            return Err(JwksError::Status(response.status.as_u16()));
        }
        let body = response.body;
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
