//! Connection options: reconnect and subscribe-retry backoff, timeouts, buffers, token
//! provider, TLS; and what one subscription asks of the server ([`SubscribeOptions`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::error::BoxError;

/// Exponential backoff with full jitter between reconnect attempts (or between retries of a
/// refused subscription, see [`ClientOptions::subscribe_retry`]).
///
/// Attempt `n` (from 0) waits a uniformly random time in
/// `[0, min(max, initial * factor^n)]` ("full jitter"), so that many clients cut off at once do
/// not reconnect in lockstep.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Upper bound of the first delay.
    pub initial: Duration,
    /// Cap of the delay's upper bound.
    pub max: Duration,
    /// Growth of the upper bound per failed attempt (at least 1).
    pub factor: f64,
    /// Consecutive failed attempts after which the client gives up; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            factor: 2.0,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The upper bound of the delay before attempt `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = self.factor.max(1.0);
        let grown = self.initial.as_secs_f64() * factor.powi(attempt.min(1000) as i32);
        let max = self.max.as_secs_f64();
        Duration::from_secs_f64(if grown.is_finite() { grown.min(max) } else { max })
    }

    /// A random delay before attempt `attempt` (0-based): full jitter over [`Self::ceiling`].
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if ceiling.is_zero() {
            return ceiling;
        }
        ceiling.mul_f64(rand::rng().random::<f64>())
    }
}

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

/// Supplies the token sent on every (re)connect as the `token` query parameter (and as
/// `Authorization: Bearer` by [`HttpPublisher`](crate::HttpPublisher)).
///
/// It is called before each connection attempt, so it can refresh short-lived tokens (JWTs).
#[derive(Clone)]
pub struct TokenProvider(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenProvider {
    /// A provider from an async function.
    pub fn new<F, Fut, E>(f: F) -> TokenProvider
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        TokenProvider(Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.map_err(Into::into) })
        }))
    }

    /// A provider from a synchronous function.
    pub fn from_fn<F, E>(f: F) -> TokenProvider
    where
        F: Fn() -> Result<String, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        TokenProvider(Arc::new(move || {
            let token = f().map_err(Into::into);
            Box::pin(std::future::ready(token))
        }))
    }

    /// A provider that always returns `token`.
    pub fn fixed(token: impl Into<String>) -> TokenProvider {
        let token: String = token.into();
        TokenProvider::from_fn(move || Ok::<_, BoxError>(token.clone()))
    }

    /// Asks the provider for a token.
    pub async fn token(&self) -> Result<String, BoxError> {
        (self.0)().await
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenProvider(..)")
    }
}

/// How a [`Client`](crate::Client) connects, reconnects and buffers.
///
/// Built from [`ClientOptions::default`] with the `with_*`-style setters:
///
/// ```
/// use std::time::Duration;
/// use tickwire_client::{Backoff, ClientOptions, TokenProvider};
///
/// let options = ClientOptions::default()
///     .reconnect(Backoff { initial: Duration::from_millis(100), ..Backoff::default() })
///     .request_timeout(Duration::from_secs(5))
///     .token_provider(TokenProvider::fixed("secret"));
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub(crate) reconnect: Option<Backoff>,
    pub(crate) subscribe_retry: Option<Backoff>,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) event_buffer: usize,
    pub(crate) request_buffer: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) token: Option<TokenProvider>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            reconnect: Some(Backoff::default()),
            subscribe_retry: Some(Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
                factor: 2.0,
                max_attempts: None,
            }),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(20)),
            idle_timeout: Some(Duration::from_secs(45)),
            event_buffer: 1024,
            request_buffer: 256,
            max_message_bytes: 16 << 20,
            token: None,
            tls: None,
        }
    }
}

impl ClientOptions {
    /// Reconnects with this backoff after the connection drops (the default:
    /// [`Backoff::default`]), whatever the close code except 4029 (the server cut the client
    /// off for ignoring its rate limit: reconnecting would repeat that). A connection that
    /// lasted under a second counts as a failed attempt, so a server that accepts and
    /// immediately closes does not get hammered.
    ///
    /// A reconnect refused with HTTP 401 or 403 ([`Error::Unauthorized`](crate::Error)), or a
    /// close for an expired token (4003), stops reconnecting, unless the
    /// [token provider](Self::token_provider) then returns a token other than the refused one
    /// (see there).
    pub fn reconnect(mut self, backoff: Backoff) -> ClientOptions {
        self.reconnect = Some(backoff);
        self
    }

    /// Never reconnects: the event stream ends after the first connection closes.
    pub fn no_reconnect(mut self) -> ClientOptions {
        self.reconnect = None;
        self
    }

    /// Retries, with this backoff, a subscribe the server refused with a transient error:
    /// `unavailable` (a cluster node that has lost Redis) or `rate_limited`. Default: 0.5 s
    /// growing ×2 up to 30 s, full jitter, no attempt limit; a `max_attempts` turns the
    /// subscription [`Failed`](crate::SubscriptionState::Failed) after that many refused retries.
    ///
    /// The caller of [`Client::subscribe`](crate::Client::subscribe) still gets the refusal;
    /// the retries and their outcome are reported by
    /// [`Event::Subscription`](crate::Event::Subscription). Other refusals (`forbidden`,
    /// `invalid_topic`, `too_many_subscriptions`, ...) are final. The same applies to the
    /// re-subscription after a reconnect.
    pub fn subscribe_retry(mut self, backoff: Backoff) -> ClientOptions {
        self.subscribe_retry = Some(backoff);
        self
    }

    /// Never retries a refused subscribe: every refusal is final, as before retries existed.
    pub fn no_subscribe_retry(mut self) -> ClientOptions {
        self.subscribe_retry = None;
        self
    }

    /// How long `subscribe`, `unsubscribe` and `publish` wait for the server's reply, including
    /// time spent waiting for a reconnect (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.request_timeout = timeout;
        self
    }

    /// How long one connection attempt (TCP, TLS, WebSocket handshake) may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.connect_timeout = timeout;
        self
    }

    /// Sends a WebSocket ping this often (default 20 s); `None` sends none. The server's pong
    /// keeps [`Self::idle_timeout`] from firing on a quiet but healthy connection.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> ClientOptions {
        self.ping_interval = interval;
        self
    }

    /// Treats the connection as dead when nothing at all arrives for this long (default 45 s),
    /// which catches half-open TCP connections; `None` never does.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> ClientOptions {
        self.idle_timeout = timeout;
        self
    }

    /// Capacity of the event channel (default 1024, at least 1).
    pub fn event_buffer(mut self, capacity: usize) -> ClientOptions {
        self.event_buffer = capacity.max(1);
        self
    }

    /// Capacity of the request channel from [`Client`](crate::Client) handles to the connection
    /// (default 256, at least 1).
    pub fn request_buffer(mut self, capacity: usize) -> ClientOptions {
        self.request_buffer = capacity.max(1);
        self
    }

    /// Largest message accepted from the server (default 16 MiB).
    pub fn max_message_bytes(mut self, bytes: usize) -> ClientOptions {
        self.max_message_bytes = bytes;
        self
    }

    /// Asks `provider` for a token before every (re)connect and sends it as `?token=`.
    ///
    /// When the server closes the connection because its token expired (close code 4003), or
    /// refuses a reconnect's token (HTTP 401 or 403), the client asks the provider once more at
    /// once: a different token is used for the next attempt; the same token (a
    /// [`TokenProvider::fixed`] one, say) ends the client, after the `Close` event or with
    /// [`Error::Unauthorized`](crate::Error) on the event stream, since retrying it would be
    /// refused forever. A provider error is reported and the next attempt asks again. Without
    /// a provider, a refusal is always final.
    pub fn token_provider(mut self, provider: TokenProvider) -> ClientOptions {
        self.token = Some(provider);
        self
    }

    /// The rustls configuration for `wss://` (default: Mozilla's root certificates, ring).
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> ClientOptions {
        self.tls = Some(config);
        self
    }
}

/// What a subscription asks of the server beyond plain delivery, for
/// [`Client::subscribe_with`](crate::Client::subscribe_with) (docs/protocol.md §4.1). The
/// default asks for nothing: [`Client::subscribe`](crate::Client::subscribe).
///
/// The client remembers them per subscription and sends them again with every re-subscription
/// (after a reconnect, and on retries of a refused subscribe). Subscribing again to a
/// subscription the client holds replaces its options, as on the server.
///
/// ```
/// use tickwire_client::SubscribeOptions;
///
/// let options = SubscribeOptions::default().max_rate(4.0).delta(true);
/// assert_eq!(options, SubscribeOptions { max_rate: Some(4.0), delta: true, presence_events: false });
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SubscribeOptions {
    /// At most this many updates a second per topic (`"max_rate"`, from 0.01 to 1000,
    /// [`tickwire_proto::rate`]): updates in between are skipped (seqs jump), and the newest
    /// always arrives at the end of the interval. A value outside those bounds (or NaN) is
    /// refused locally with [`Error::InvalidMaxRate`](crate::Error::InvalidMaxRate), before
    /// anything is sent. `None`: no limit.
    pub max_rate: Option<f64>,
    /// Asks for updates as Fossil deltas of the topic's previous data (`"delta":"fossil"`),
    /// which saves bandwidth on large documents that change little. The client applies them:
    /// the application still gets every [`Update`](crate::Update) with its full `data`, byte
    /// for byte as published. A delta that cannot be applied is never delivered: the client
    /// reports [`Error::Delta`](crate::Error::Delta) and asks the server for the topic's full
    /// data again (see the crate docs).
    pub delta: bool,
    /// Asks for `join` and `leave` frames of the topic's members (`"presence_events":true`),
    /// delivered as [`Event::Join`](crate::Event::Join) and [`Event::Leave`](crate::Event::Leave)
    /// after the subscription is confirmed (the subscriber's own join included), in order with
    /// the topic's updates. Every topic of the request must be exact and under the server's
    /// `presence.patterns`, or the whole subscribe is refused (`bad_request`). Joins and leaves
    /// that happen while the client is disconnected are not replayed: query
    /// [`Client::presence`](crate::Client::presence) again after
    /// [`Event::Open`](crate::Event::Open) to catch up.
    pub presence_events: bool,
}

impl SubscribeOptions {
    /// Sets [`Self::max_rate`].
    pub fn max_rate(mut self, updates_per_second: f64) -> SubscribeOptions {
        self.max_rate = Some(updates_per_second);
        self
    }

    /// Sets [`Self::delta`].
    pub fn delta(mut self, on: bool) -> SubscribeOptions {
        self.delta = on;
        self
    }

    /// Sets [`Self::presence_events`].
    pub fn presence_events(mut self, on: bool) -> SubscribeOptions {
        self.presence_events = on;
        self
    }

    /// Refuses what the server would refuse anyway, without a round trip.
    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        match self.max_rate {
            Some(rate) if !tickwire_proto::rate::valid(rate) => Err(crate::Error::InvalidMaxRate(rate)),
            _ => Ok(()),
        }
    }
}

/// The default TLS configuration: ring, TLS 1.2 and 1.3, webpki roots.
pub(crate) fn default_tls() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
            max_attempts: None,
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(10)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "delays are jittered");
        let flat = Backoff { factor: 0.5, ..b };
        assert_eq!(
            flat.ceiling(5),
            Duration::from_millis(100),
            "factor below 1 acts as 1"
        );
    }

    #[tokio::test]
    async fn token_providers() {
        assert_eq!(TokenProvider::fixed("a").token().await.unwrap(), "a");
        let p = TokenProvider::new(|| async { Ok::<_, std::io::Error>("b".to_string()) });
        assert_eq!(p.token().await.unwrap(), "b");
        let p = TokenProvider::from_fn(|| Err::<String, _>("nope"));
        assert_eq!(p.token().await.unwrap_err().to_string(), "nope");
    }

    #[test]
    fn subscribe_options_check_the_rate_bounds() {
        for ok in [None, Some(0.01), Some(4.0), Some(1000.0)] {
            let options = SubscribeOptions {
                max_rate: ok,
                ..SubscribeOptions::default()
            };
            assert!(options.check().is_ok(), "{ok:?}");
        }
        for bad in [0.0, 0.009, -1.0, 1000.5, f64::NAN, f64::INFINITY] {
            let e = SubscribeOptions::default().max_rate(bad).check().unwrap_err();
            assert!(
                matches!(e, crate::Error::InvalidMaxRate(r) if r.to_bits() == bad.to_bits()),
                "{e:?}"
            );
        }
    }

    #[test]
    fn default_tls_builds() {
        let _ = default_tls();
    }
}
