//! The server's one outbound HTTP client: a single HTTP/1.1 request over a fresh connection,
//! `http://` or `https://`, bounded in time and in the size of the body it reads. The JWKS
//! fetcher (`auth::jwks`) and the webhooks (`webhooks`) both go through it, so they share one
//! way to connect, verify a server and give up.
//!
//! TLS verifies the server against a configured CA file (`auth.jwt.jwks_ca_file`, a webhook's
//! `ca_file`) or else the system's roots, read once per process off the runtime. A fresh
//! connection per request, rather than a pool: both callers send at most one request at a time
//! per destination, seconds apart, and a kept-alive connection would be one more thing to time
//! out and to find dead.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_rustls::TlsConnector;

/// Why a request got no usable answer.
#[derive(Debug, Error)]
pub enum OutboundError {
    /// The URL cannot be used; the message completes "the URL …".
    #[error("{0}")]
    Url(String),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Where requests go: a URL taken apart once.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Without brackets for an IPv6 literal: what TCP connects to (and TLS verifies).
    host: String,
    port: u16,
    /// `Some` for `https://`: the name the server's certificate must carry.
    server_name: Option<ServerName<'static>>,
    /// The `Host` header.
    authority: String,
    path: String,
}

impl Destination {
    /// An `http://` or `https://` URL with a host and without credentials.
    pub fn parse(url: &str) -> Result<Destination, OutboundError> {
        let bad = |m: &str| OutboundError::Url(m.to_string());
        let uri: Uri = (url.trim().parse()).map_err(|e| OutboundError::Url(format!("not a URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not carry credentials"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let server_name = match https {
            true => Some(ServerName::try_from(host.to_string()).map_err(|_| bad("has no valid host name"))?),
            false => None,
        };
        Ok(Destination {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            server_name,
            authority: authority.as_str().to_string(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        })
    }

    pub fn is_https(&self) -> bool {
        self.server_name.is_some()
    }
}

/// What a request got back. The body is read only from a 2xx answer, and only when asked.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Requests to one destination, with the TLS trust settled once.
pub struct Client {
    to: Destination,
    /// `Some` for `https://`.
    tls: Option<TlsConnector>,
    trusts_nothing: bool,
    timeout: Duration,
}

/// The system's trusted roots, read at the first `https://` client without a CA file.
static SYSTEM_ROOTS: OnceCell<Arc<[CertificateDer<'static>]>> = OnceCell::const_new();

impl Client {
    /// A client of `to` whose requests each finish within `timeout`. For `https://` the server
    /// must chain to `ca` (a CA file's certificates) or, when `None`, to the system's roots.
    pub async fn new(to: Destination, ca: Option<&[CertificateDer<'static>]>, timeout: Duration) -> Client {
        if !to.is_https() {
            return Client {
                to,
                tls: None,
                trusts_nothing: false,
                timeout,
            };
        }
        let mut roots = RootCertStore::empty();
        match ca {
            Some(certs) => {
                roots.add_parsable_certificates(certs.iter().cloned());
            }
            None => {
                let system = (SYSTEM_ROOTS.get_or_init(|| async {
                    let native = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs).await;
                    native.map_or_else(|_| Arc::from([]), |n| n.certs.into())
                }))
                .await;
                roots.add_parsable_certificates(system.iter().cloned());
            }
        }
        let trusts_nothing = roots.is_empty();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            to,
            tls: Some(TlsConnector::from(Arc::new(config))),
            trusts_nothing,
            timeout,
        }
    }

    /// An `https://` client without a single trusted root: every request fails its handshake,
    /// so the caller says which setting to fix.
    pub fn trusts_nothing(&self) -> bool {
        self.trusts_nothing
    }

    /// One request: `method` with `headers` (besides `Host` and `User-Agent`) and `body`. The
    /// answer's body is read when `read_body` gives a limit and the status is 2xx; a longer
    /// body is an error. Connecting, TLS and the whole exchange share the one timeout.
    pub async fn send(
        &self,
        method: Method,
        headers: &[(HeaderName, &str)],
        body: Bytes,
        read_body: Option<usize>,
    ) -> Result<Response, OutboundError> {
        let to = &self.to;
        let mut request = Request::builder()
            .method(method)
            .uri(to.path.as_str())
            .header(HOST, to.authority.as_str())
            .header(USER_AGENT, concat!("tickwire/", env!("CARGO_PKG_VERSION")));
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        let request = (request.body(Full::new(body)))
            .map_err(|e| OutboundError::Url(format!("cannot make a request of it: {e}")))?;
        match tokio::time::timeout(self.timeout, self.connect_and_exchange(request, read_body)).await {
            Ok(result) => result,
            Err(_) => Err(OutboundError::Timeout(self.timeout)),
        }
    }

    async fn connect_and_exchange(
        &self,
        request: Request<Full<Bytes>>,
        read_body: Option<usize>,
    ) -> Result<Response, OutboundError> {
        let to = &self.to;
        let tcp = TcpStream::connect((to.host.as_str(), to.port))
            .await
            .map_err(OutboundError::Connect)?;
        match (&self.tls, &to.server_name) {
            (Some(tls), Some(name)) => {
                let stream = (tls.connect(name.clone(), tcp).await).map_err(OutboundError::Tls)?;
                exchange(stream, request, read_body).await
            }
            _ => exchange(tcp, request, read_body).await,
        }
    }
}

/// The HTTP/1.1 exchange on an open connection. The connection is driven here, not in a
/// spawned task, so that the caller's timeout drops it too.
async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
    read_body: Option<usize>,
) -> Result<Response, OutboundError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let limit = match read_body {
            Some(limit) if status.is_success() => limit,
            _ => {
                return Ok(Response {
                    status,
                    body: Bytes::new(),
                })
            }
        };
        match Limited::new(response.into_body(), limit).collect().await {
            Ok(body) => Ok(Response {
                status,
                body: body.to_bytes(),
            }),
            Err(err) => match err.downcast::<hyper::Error>() {
                Ok(err) => Err(OutboundError::Http(*err)),
                Err(_) => Err(OutboundError::TooLarge(limit)),
            },
        }
    };
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(exchange);
    tokio::select! {
        r = &mut exchange => r,
        _ = &mut conn => exchange.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A loopback server that reads one request head and answers `status` with `body_len`
    /// bytes, or never answers when `status` is 0.
    async fn server(status: u16, body_len: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if status == 0 {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {body_len}\r\n\r\n{}",
                        "b".repeat(body_len)
                    );
                    let _ = tcp.write_all(answer.as_bytes()).await;
                });
            }
        });
        url
    }

    async fn client(url: &str) -> Client {
        Client::new(Destination::parse(url).unwrap(), None, Duration::from_millis(300)).await
    }

    #[tokio::test]
    async fn the_body_is_capped_read_only_from_a_2xx_and_the_whole_exchange_is_timed() {
        let c = client(&server(200, 2048).await).await;
        let ok = c.send(Method::GET, &[], Bytes::new(), Some(4096)).await.unwrap();
        assert_eq!((ok.status.as_u16(), ok.body.len()), (200, 2048));
        let capped = c.send(Method::GET, &[], Bytes::new(), Some(1024)).await;
        assert!(matches!(capped, Err(OutboundError::TooLarge(1024))), "{capped:?}");
        let unread = c
            .send(Method::POST, &[], Bytes::from_static(b"{}"), None)
            .await
            .unwrap();
        assert_eq!((unread.status.as_u16(), unread.body.len()), (200, 0));

        let c = client(&server(500, 2048).await).await;
        let refused = c.send(Method::GET, &[], Bytes::new(), Some(1024)).await.unwrap();
        assert_eq!((refused.status.as_u16(), refused.body.len()), (500, 0));

        let c = client(&server(0, 0).await).await;
        let silent = c.send(Method::GET, &[], Bytes::new(), Some(1024)).await;
        assert!(matches!(silent, Err(OutboundError::Timeout(_))), "{silent:?}");
        assert!(!c.trusts_nothing());
        let none = Destination::parse("https://127.0.0.1:9/").unwrap();
        assert!(Client::new(none, Some(&[]), Duration::from_secs(1))
            .await
            .trusts_nothing());
    }

    #[test]
    fn urls_are_taken_apart() {
        let d = Destination::parse("https://idp.example:8443/a/b?c=1").unwrap();
        assert_eq!(
            (
                d.host.as_str(),
                d.port,
                d.authority.as_str(),
                d.path.as_str(),
                d.is_https()
            ),
            ("idp.example", 8443, "idp.example:8443", "/a/b?c=1", true)
        );
        let d = Destination::parse("http://[::1]/").unwrap();
        assert_eq!((d.host.as_str(), d.port, d.is_https()), ("::1", 80, false));
        assert_eq!(Destination::parse("https://h").unwrap().port, 443);
        assert_eq!(Destination::parse("http://h").unwrap().path, "/");
        for (url, why) in [
            ("ftp://h/", "http:// or https://"),
            ("/only/a/path", "http:// or https://"),
            ("https://u:p@h/", "credentials"),
            ("not a url", "not a URL"),
        ] {
            let e = Destination::parse(url).expect_err(url).to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
