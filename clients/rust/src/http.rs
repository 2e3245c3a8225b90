//! Publishing over the HTTP API (`POST /api/v1/publish`), single or batched.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tickwire_proto::{Published, PublishedBatch};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use crate::error::{BoxError, Error, Result};
use crate::options::{default_tls, TokenProvider};
use crate::url::check_scheme;

/// Path of the publish endpoint, appended to the base URL.
const PUBLISH_PATH: &str = "/api/v1/publish";

/// One message of a batch publish.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outgoing {
    /// Topic to publish to (concrete, no wildcards).
    pub topic: String,
    /// Payload, sent as is.
    pub data: Box<RawValue>,
}

impl Outgoing {
    /// A message with `data` serialized to JSON.
    pub fn new<T: Serialize + ?Sized>(topic: impl Into<String>, data: &T) -> Result<Outgoing> {
        Ok(Outgoing {
            topic: topic.into(),
            data: serde_json::value::to_raw_value(data)?,
        })
    }
}

/// Publishes through the HTTP API, which (unlike WebSocket publishing) may publish to any topic.
///
/// Keeps one keep-alive connection and sends requests one at a time; wrap it in an `Arc` to
/// share it. A non-2xx reply becomes [`Error::Http`] with the server's error code and message.
///
/// Every publish (single or batch) carries a random `Idempotency-Key`, and is retried with the
/// same key after a timeout, a connection failure or a 503, up to [`HttpPublisher::attempts`]
/// times: the server publishes it once, however many of the attempts reached it, and a retry
/// gets the first attempt's seqs.
///
/// ```no_run
/// # async fn run() -> Result<(), tickwire_client::Error> {
/// use tickwire_client::{HttpPublisher, Outgoing};
/// let http = HttpPublisher::new("http://127.0.0.1:8080")?;
/// let seq = http.publish("prices.ACME", &serde_json::json!({"last": 12.5})).await?.seq;
/// let batch = vec![Outgoing::new("chat.a", "hi")?, Outgoing::new("chat.b", "ho")?];
/// let results = http.publish_batch(&batch).await?;
/// # Ok(()) }
/// ```
pub struct HttpPublisher {
    url: String,
    https: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
    token: Option<TokenProvider>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    attempts: u32,
    connection: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

/// Wait before the first retry; doubled for each next one, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A fresh 128-bit key in hex: unique per logical publish, shared by its retries.
fn new_idempotency_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether an attempt may have failed before the server published, so that trying again
/// (with the same key) is safe and may succeed.
fn retriable(e: &Error) -> bool {
    match e {
        Error::Timeout(_) | Error::Connect { .. } | Error::Transport(_) => true,
        Error::Http { status, .. } => *status == 503,
        _ => false,
    }
}

impl std::fmt::Debug for HttpPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPublisher")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct BatchBody<'a> {
    messages: &'a [Outgoing],
}

#[derive(Serialize)]
struct SingleBody<'a> {
    topic: &'a str,
    data: &'a RawValue,
}

impl HttpPublisher {
    /// A publisher for the server at `url`: its base (`http://127.0.0.1:8080`, also behind a
    /// path prefix) or the full publish URL (`.../api/v1/publish`). `https://` uses rustls.
    pub fn new(url: &str) -> Result<HttpPublisher> {
        check_scheme(url, &["http", "https"])?;
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
        let https = uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let authority = uri.authority().ok_or_else(|| invalid("missing host".into()))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let base = uri.path().trim_end_matches('/');
        let path = if base.ends_with(PUBLISH_PATH) {
            base.to_string()
        } else {
            format!("{base}{PUBLISH_PATH}")
        };
        Ok(HttpPublisher {
            url: url.to_string(),
            https,
            host: host.to_string(),
            port,
            authority: authority.as_str().to_string(),
            path,
            token: None,
            tls: None,
            timeout: Duration::from_secs(30),
            attempts: 4,
            connection: tokio::sync::Mutex::new(None),
        })
    }

    /// Sends the provider's token as `Authorization: Bearer` with every request.
    pub fn token_provider(mut self, provider: TokenProvider) -> HttpPublisher {
        self.token = Some(provider);
        self
    }

    /// How long one request may take, connecting included (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> HttpPublisher {
        self.timeout = timeout;
        self
    }

    /// How many times one publish is tried (default 4, at least 1): retries follow a timeout,
    /// a connection failure or a 503, after 100 ms, 200 ms, 400 ms... (jittered, at most 2 s).
    pub fn attempts(mut self, attempts: u32) -> HttpPublisher {
        self.attempts = attempts.max(1);
        self
    }

    /// The rustls configuration for `https://` (default: Mozilla's roots, ring).
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> HttpPublisher {
        self.tls = Some(config);
        self
    }

    /// Publishes one message and returns its seq.
    pub async fn publish<T: Serialize + ?Sized>(&self, topic: &str, data: &T) -> Result<Published> {
        let data = serde_json::value::to_raw_value(data)?;
        let body = serde_json::to_vec(&SingleBody { topic, data: &data })?;
        let reply = self.post(body).await?;
        serde_json::from_slice(&reply).map_err(|e| Error::Protocol(format!("bad publish reply: {e}")))
    }

    /// Publishes a batch in one request: all of it or, on an error reply, none of it. Returns
    /// one result per message, in order.
    pub async fn publish_batch(&self, messages: &[Outgoing]) -> Result<Vec<Published>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let body = serde_json::to_vec(&BatchBody { messages })?;
        let reply = self.post(body).await?;
        let batch: PublishedBatch =
            serde_json::from_slice(&reply).map_err(|e| Error::Protocol(format!("bad batch reply: {e}")))?;
        if batch.results.len() != messages.len() {
            return Err(Error::Protocol(format!(
                "{} results for {} messages",
                batch.results.len(),
                messages.len()
            )));
        }
        Ok(batch.results)
    }

    /// POSTs `body` under a new idempotency key, retrying what may succeed on a retry, and
    /// returns the body of a 2xx reply.
    async fn post(&self, body: Vec<u8>) -> Result<Bytes> {
        let body = Bytes::from(body);
        let key = new_idempotency_key();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.post_once(body.clone(), &key).await {
                Err(e) if attempt < self.attempts && retriable(&e) => {
                    debug!(error = %e, attempt, "publish failed, retrying with the same key");
                    let jitter = rand::random_range(0.5..1.0);
                    tokio::time::sleep(backoff.mul_f64(jitter)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// One attempt of [`HttpPublisher::post`], bounded by the timeout.
    async fn post_once(&self, body: Bytes, key: &str) -> Result<Bytes> {
        let exchange = async {
            let mut request = Request::post(&self.path)
                .header(HOST, &self.authority)
                .header(CONTENT_TYPE, "application/json")
                .header("idempotency-key", key)
                .body(Full::new(body))
                .map_err(|e| Error::Protocol(format!("cannot build request: {e}")))?;
            if let Some(provider) = &self.token {
                let token = provider.token().await.map_err(Error::Token)?;
                let value = HeaderValue::try_from(format!("Bearer {token}"))
                    .map_err(|e| Error::Token(Box::new(e)))?;
                request.headers_mut().insert(AUTHORIZATION, value);
            }
            let mut connection = self.connection.lock().await;
            let response = loop {
                let reused = connection.as_ref().is_some_and(|c| !c.is_closed());
                if !reused {
                    *connection = Some(self.connect().await?);
                }
                let sender = connection.as_mut().expect("just connected");
                let sent = match sender.ready().await {
                    Ok(()) => sender.try_send_request(request).await,
                    Err(e) => {
                        *connection = None;
                        return Err(self.transport(e));
                    }
                };
                match sent {
                    Ok(response) => break response,
                    Err(mut e) => {
                        *connection = None;
                        // A reused connection the server had closed: the request never left, so
                        // sending it again on a new connection cannot publish twice.
                        match e.take_message() {
                            Some(unsent) if reused => {
                                debug!("stale keep-alive connection, retrying");
                                request = unsent;
                            }
                            _ => return Err(self.transport(e.into_error())),
                        }
                    }
                }
            };
            let status = response.status();
            let body = (response.into_body().collect().await)
                .map_err(|e| self.transport(e))?
                .to_bytes();
            if !status.is_success() {
                return Err(Error::from_http(status.as_u16(), &body));
            }
            Ok(body)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                *self.connection.lock().await = None;
                Err(Error::Timeout(self.timeout))
            }
        }
    }

    fn transport(&self, e: impl Into<BoxError>) -> Error {
        Error::Transport(e.into())
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let connect_err = |source: BoxError| Error::Connect {
            url: self.url.clone(),
            source,
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| connect_err(e.into()))?;
        tcp.set_nodelay(true).ok();
        if !self.https {
            return handshake(tcp).await.map_err(connect_err);
        }
        static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
        let config = (self.tls.clone()).unwrap_or_else(|| TLS.get_or_init(default_tls).clone());
        let name =
            rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| connect_err(e.into()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| connect_err(e.into()))?;
        handshake(tls).await.map_err(connect_err)
    }
}

async fn handshake<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>, BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "HTTP connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_paths() {
        let p = HttpPublisher::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("127.0.0.1", 8080, "/api/v1/publish")
        );
        let p = HttpPublisher::new("https://example.com/tw/").unwrap();
        assert_eq!(
            (p.port, p.path.as_str(), p.https),
            (443, "/tw/api/v1/publish", true)
        );
        let p = HttpPublisher::new("http://[::1]:9/api/v1/publish").unwrap();
        assert_eq!((p.host.as_str(), p.path.as_str()), ("::1", "/api/v1/publish"));
        assert!(HttpPublisher::new("ws://x").is_err());
        assert!(HttpPublisher::new("http://").is_err());
    }
}
