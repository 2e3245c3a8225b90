//! A webhook receiver on loopback: a real HTTP/1.1 server (plain, or HTTPS with a given
//! certificate) that records every request (its `X-Tickwire-Signature` and body) and answers
//! each with the next status of a script (200 once the script is used up), for the tests of
//! `[[webhooks]]`.
//!
//! Part of the shared harness; not every test binary uses every helper.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ring::hmac;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::tls::Certificate;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    pub path: String,
    pub signature: Option<String>,
    pub body: Bytes,
}

impl Hook {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {:?}", self.body))
    }

    /// Whether the signature is `sha256=<hex HMAC-SHA256 of the body under secret>`.
    pub fn signed_with(&self, secret: &str) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let Some(hex) = self.signature.as_deref().and_then(|s| s.strip_prefix("sha256=")) else {
            return false;
        };
        let Some(tag) = (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        hmac::verify(&key, &self.body, &tag).is_ok()
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    scheme: &'static str,
    hooks: Arc<Mutex<Vec<Hook>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    /// TLS handshakes that failed (an HTTPS receiver the client does not trust).
    refused: Arc<AtomicUsize>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1:0 answering `script`'s statuses in turn, then 200.
    pub async fn start(script: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        Receiver::serve(listener, script)
    }

    /// A receiver on `listener`.
    pub fn serve(listener: TcpListener, script: &[u16]) -> Receiver {
        Receiver::serve_with(listener, script, None)
    }

    /// An HTTPS receiver on 127.0.0.1:0 serving `cert`.
    pub async fn start_https(script: &[u16], cert: &Certificate) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        Receiver::serve_with(listener, script, Some(cert.acceptor()))
    }

    fn serve_with(listener: TcpListener, script: &[u16], tls: Option<TlsAcceptor>) -> Receiver {
        let receiver = Receiver {
            addr: listener.local_addr().expect("receiver address"),
            scheme: if tls.is_some() { "https" } else { "http" },
            hooks: Arc::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            refused: Arc::default(),
        };
        let r = receiver.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (r, tls) = (r.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => r.serve_connection(tcp).await,
                        Some(tls) => match tls.accept(tcp).await {
                            Ok(stream) => r.serve_connection(stream).await,
                            Err(_) => {
                                r.refused.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        });
        receiver
    }

    async fn serve_connection<S>(self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let r = self.clone();
            async move {
                let path = req.uri().path().to_string();
                let signature = (req.headers().get("x-tickwire-signature"))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = req.into_body().collect().await?.to_bytes();
                r.hooks.lock().unwrap().push(Hook {
                    path,
                    signature,
                    body,
                });
                let status = r.script.lock().unwrap().pop_front().unwrap_or(200);
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                Ok::<_, hyper::Error>(resp)
            }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await;
    }

    /// `http://<addr><path>`, or `https://…` for an HTTPS receiver.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// TLS handshakes refused so far (the client did not trust this receiver, or it hung up).
    pub fn refused_handshakes(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Every request so far, in arrival order.
    pub fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }

    /// The bodies so far as `(event, topic)`.
    pub fn events(&self) -> Vec<(String, String)> {
        (self.hooks().iter())
            .map(|h| {
                let v = h.json();
                (
                    v["event"].as_str().unwrap_or_default().to_string(),
                    v["topic"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}
