//! feed_on_demand: a publisher that feeds a symbol only while someone watches it.
//!
//! tickwire POSTs an `occupied` webhook when a topic gets its first subscriber anywhere in the
//! cluster and `vacated` (debounced by `occupancy.vacate_delay`) when the last one leaves. This
//! server checks each request's `X-Tickwire-Signature` (401 when it is missing or wrong), then
//! starts publishing a made-up price to the topic over tickwire's HTTP API
//! (`POST /api/v1/publish`) on `occupied`, and stops on `vacated`. It is the pattern a pricing
//! backend copies: the upstream subscription for a symbol lives exactly as long as its audience.
//!
//! Layout: `signature` (the HMAC check), `feeds` (the publishing tasks and the event rules),
//! `occupied` (the topics already occupied at start), this file (the HTTP receiver,
//! [`serve`], and [`App::catch_up`]); `main.rs` only reads the command line.

#![forbid(unsafe_code)]

pub mod feeds;
pub mod occupied;
pub mod signature;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tickwire_client::{HttpPublisher, TokenProvider};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::feeds::{Feeds, Outcome};

/// Largest webhook body accepted: tickwire's events are a few hundred bytes (a member's `info`
/// claim is the only part of any size).
const MAX_BODY: usize = 64 << 10;
/// How long a client may take to send its request head (slowloris guard).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the receiver needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// tickwire's HTTP base URL (`http://127.0.0.1:8080`), where the feeds publish.
    pub tickwire: String,
    /// An API key for publishing, when tickwire has `[[auth.api_keys]]` configured.
    pub api_key: Option<String>,
    /// The webhook's `secret` in tickwire's `[[webhooks]]` entry.
    pub secret: Vec<u8>,
    /// The path the webhooks are POSTed to (`/webhook`).
    pub path: String,
    /// Topics served: `prefix` + symbol (`prices.` serves `prices.ACME`).
    pub prefix: String,
    /// Time between two publications of one feed.
    pub interval: Duration,
}

/// The receiver's state: the signing key and the feeds.
pub struct App {
    tickwire: String,
    api_key: Option<String>,
    prefix: String,
    key: ring::hmac::Key,
    path: String,
    feeds: Feeds,
}

impl App {
    /// Fails when `config.tickwire` is not an `http://` or `https://` URL.
    pub fn new(config: Config) -> Result<App, tickwire_client::Error> {
        let mut publisher = HttpPublisher::new(&config.tickwire)?.timeout(Duration::from_secs(5));
        if let Some(key) = config.api_key.clone() {
            publisher = publisher.token_provider(TokenProvider::fixed(key));
        }
        Ok(App {
            tickwire: config.tickwire,
            api_key: config.api_key,
            prefix: config.prefix.clone(),
            key: signature::key(&config.secret),
            path: config.path,
            feeds: Feeds::new(publisher, config.prefix, config.interval),
        })
    }

    /// Starts the feeds of the topics tickwire reports occupied now; returns how many it
    /// started. Call it once [`serve`] listens, so that no event falls between the two: an
    /// event applied before the list arrives is newer than the list, and wins (the list is
    /// applied as events at `ts` 0).
    pub async fn catch_up(&self) -> Result<usize, String> {
        let topics = occupied::occupied(&self.tickwire, self.api_key.as_deref(), &self.prefix).await?;
        let started = topics
            .iter()
            .filter(|t| self.feeds.apply("occupied", t, 0) == Outcome::Started)
            .count();
        Ok(started)
    }

    /// The topics being published now, sorted.
    pub fn running(&self) -> Vec<String> {
        self.feeds.running()
    }
}

/// One webhook event as tickwire sends it (docs/presence.md). `member` and `id` are not needed
/// here; `ts` orders events of one topic.
#[derive(Debug, Deserialize)]
struct Event {
    event: String,
    topic: String,
    #[serde(default)]
    ts: Option<serde_json::Number>,
}

/// Accepts connections on `listener` until `shutdown` resolves, then stops every feed.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning on the error.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(&app, req).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    app.feeds.stop_all();
}

fn reply(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

/// One request: the signature first, then the event.
async fn handle(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != app.path {
        return reply(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let header = req
        .headers()
        .get(signature::HEADER)
        .map(|v| v.as_bytes().to_vec());
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large or cut short\n"),
    };
    if !signature::verify(&app.key, &body, header.as_deref()) {
        warn!("webhook with a missing or wrong signature refused");
        return reply(StatusCode::UNAUTHORIZED, "bad signature\n");
    }
    let event: Event = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(_) => return reply(StatusCode::BAD_REQUEST, "not a webhook event\n"),
    };
    let ts = event.ts.and_then(|n| n.as_u64()).unwrap_or(0);
    match app.feeds.apply(&event.event, &event.topic, ts) {
        Outcome::Full => reply(StatusCode::SERVICE_UNAVAILABLE, "too many feeds\n"),
        outcome => {
            debug!(event = %event.event, topic = %event.topic, ?outcome, "webhook applied");
            reply(StatusCode::OK, "ok\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SECRET: &[u8] = b"s3cret";

    async fn start() -> (std::net::SocketAddr, Arc<App>, tokio::sync::oneshot::Sender<()>) {
        let config = Config {
            tickwire: "http://127.0.0.1:9".into(), // nothing there: publishes fail, logged
            api_key: None,
            secret: SECRET.to_vec(),
            path: "/webhook".into(),
            prefix: "prices.".into(),
            interval: Duration::from_secs(3600),
        };
        let app = Arc::new(App::new(config).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(serve(listener, app.clone(), async {
            let _ = stopped.await;
        }));
        (addr, app, stop)
    }

    /// POSTs `body` with `signature` (if any) and returns the status code.
    async fn post(addr: std::net::SocketAddr, path: &str, body: &str, signature: Option<&str>) -> u16 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let header = signature
            .map(|s| format!("X-Tickwire-Signature: {s}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect(&response)
    }

    fn event(event: &str, ts: u64) -> String {
        format!(r#"{{"event":"{event}","topic":"prices.ACME","member":null,"ts":{ts},"id":"e{ts}"}}"#)
    }

    #[tokio::test]
    async fn signed_events_start_and_stop_the_feed_unsigned_ones_are_refused() {
        let (addr, app, stop) = start().await;
        let key = signature::key(SECRET);
        let occupied = event("occupied", 1);
        let forged = signature::sign(&signature::key(b"guess"), occupied.as_bytes());
        assert_eq!(post(addr, "/webhook", &occupied, None).await, 401);
        assert_eq!(post(addr, "/webhook", &occupied, Some(&forged)).await, 401);
        assert!(app.running().is_empty(), "nothing unsigned gets through");

        let signed = signature::sign(&key, occupied.as_bytes());
        assert_eq!(post(addr, "/webhook", &occupied, Some(&signed)).await, 200);
        assert_eq!(app.running(), ["prices.ACME"]);
        // A signed body is bound to its bytes: the same signature on another body is refused.
        let vacated = event("vacated", 2);
        assert_eq!(post(addr, "/webhook", &vacated, Some(&signed)).await, 401);
        assert_eq!(app.running(), ["prices.ACME"]);
        let signed = signature::sign(&key, vacated.as_bytes());
        assert_eq!(post(addr, "/webhook", &vacated, Some(&signed)).await, 200);
        assert!(app.running().is_empty());

        let junk = "not json";
        let signed = signature::sign(&key, junk.as_bytes());
        assert_eq!(post(addr, "/webhook", junk, Some(&signed)).await, 400);
        assert_eq!(post(addr, "/elsewhere", &occupied, None).await, 404);
        let big = "x".repeat(MAX_BODY + 1);
        assert_eq!(post(addr, "/webhook", &big, None).await, 413);

        let signed = signature::sign(&key, occupied.as_bytes());
        let again = event("occupied", 3);
        let signed_again = signature::sign(&key, again.as_bytes());
        assert_eq!(post(addr, "/webhook", &again, Some(&signed_again)).await, 200);
        // The late retry of the first `occupied` (ts 1) changes nothing.
        assert_eq!(post(addr, "/webhook", &occupied, Some(&signed)).await, 200);
        assert_eq!(app.running(), ["prices.ACME"]);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !app.running().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("shutdown stops the feeds");
    }
}
