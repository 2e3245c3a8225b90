//! HTTP routing: the WebSocket upgrade at `/ws` (and `/echo`, when `server.echo_endpoint` is
//! on), the publish and topic APIs, the web pages
//! (`/`, `/chat`, `/tickwire.js`; see [`crate::web`]), and the operator endpoints `/metrics`,
//! `/healthz`, `/readyz`.
//!
//! This is the edge where [`RequestError`]s become HTTP statuses and the
//! `{"error":{"code","message"}}` shape, and where request bodies are read under their limits:
//! `http.max_body_bytes`, `http.body_timeout` and the server-wide `http.max_inflight_body_bytes`
//! (see [`read_body`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, ORIGIN, UPGRADE,
    WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::debug;

use crate::app::{App, BodyPermit, Refused};
use crate::error::{Action, RequestError};
use crate::idempotency::{self, IdempotencyKey};
use crate::metrics::{
    Source, REJECT_AUTH, REJECT_BAD_HANDSHAKE, REJECT_IP_LIMIT, REJECT_LIMIT, REJECT_ORIGIN,
};
use crate::protocol;
use crate::proxy::PeerAddrs;
use crate::session::{self, Endpoint};
use crate::settings::normalize_origin;
use crate::topic::Topic;

pub type Body = Full<Bytes>;

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Application and operator routes (no separate admin listener).
    All,
    /// Application routes only (`admin.listen` is set).
    Public,
    /// `/metrics`, `/healthz`, `/readyz` only.
    Admin,
}

fn status_of(e: &RequestError) -> StatusCode {
    match e {
        RequestError::BadRequest(_) | RequestError::InvalidTopic { .. } | RequestError::UnknownOp(_) => {
            StatusCode::BAD_REQUEST
        }
        RequestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        RequestError::Forbidden { .. } | RequestError::Origin(_) => StatusCode::FORBIDDEN,
        RequestError::TooManySubscriptions(_)
        | RequestError::RateLimited
        | RequestError::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
        RequestError::PayloadTooLarge(_) | RequestError::MessageTooLarge { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        RequestError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        RequestError::TopicNotFound(_) | RequestError::NoRoute(_) => StatusCode::NOT_FOUND,
        RequestError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        // A limit of the whole server, not of the client asking: 503, like a full connection
        // table, and retrying later can succeed once idle topics are dropped.
        RequestError::Unavailable(_) | RequestError::TooManyTopics(_) => StatusCode::SERVICE_UNAVAILABLE,
        RequestError::IdempotencyConflict(_) => StatusCode::CONFLICT,
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("serializing to a Vec cannot fail");
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(e: &RequestError) -> Response<Body> {
    #[derive(Serialize)]
    struct Detail<'a> {
        code: &'a str,
        message: String,
    }
    #[derive(Serialize)]
    struct Wrapper<'a> {
        error: Detail<'a>,
    }
    let detail = Detail {
        code: e.code(),
        message: e.to_string(),
    };
    let mut resp = json(status_of(e), &Wrapper { error: detail });
    if let RequestError::Unauthorized(_) = e {
        // RFC 6750: tells the client which scheme to retry with.
        (resp.headers_mut()).insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tickwire\""),
        );
    }
    resp
}

/// The `route` label for a path: fixed values, never the raw path.
fn route_of(path: &str) -> &'static str {
    match path {
        "/ws" => "ws",
        "/echo" => "echo",
        "/api/v1/publish" => "publish",
        "/api/v1/topics" => "topics",
        p if history_topic(p).is_some() => "history",
        p if p.starts_with("/api/v1/topics/") => "topic",
        "/metrics" => "metrics",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/" | "/chat" | "/tickwire.js" => "web",
        _ => "not_found",
    }
}

/// The topic of a `/api/v1/topics/{topic}/history` path. Topic names have no `/`, so
/// `/api/v1/topics/history` is the topic named `history`, not its history.
fn history_topic(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/api/v1/topics/")?.strip_suffix("/history")?;
    (!name.is_empty()).then_some(name)
}

/// Routes one request and records it in the HTTP metrics.
pub async fn handle(
    req: Request<Incoming>,
    app: Arc<App>,
    routes: Routes,
    addrs: PeerAddrs,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let mut route = route_of(&path);
    let operator = matches!(route, "metrics" | "healthz" | "readyz");
    if (operator && routes == Routes::Public) || (!operator && routes == Routes::Admin) {
        route = "not_found";
    }
    if route == "echo" && !app.settings.server.echo_endpoint {
        route = "not_found";
    }
    let result = match (req.method(), route) {
        (_, "ws") => Ok(upgrade(req, &app, addrs, Endpoint::Requests).await),
        (_, "echo") => Ok(upgrade(req, &app, addrs, Endpoint::Echo).await),
        (&Method::POST, "publish") => publish(req, &app).await,
        (&Method::GET, "topics") => match reader(&req, &app) {
            Ok(()) => list_topics(req.uri().query().unwrap_or(""), &app).await,
            Err(e) => Err(e),
        },
        (&Method::GET, "topic") => match reader(&req, &app) {
            Ok(()) => get_topic(&path["/api/v1/topics/".len()..], &app).await,
            Err(e) => Err(e),
        },
        (&Method::GET, "history") => match reader(&req, &app) {
            Ok(()) => {
                let name = history_topic(&path).unwrap_or_default();
                get_history(name, req.uri().query().unwrap_or(""), &app).await
            }
            Err(e) => Err(e),
        },
        (&Method::GET, "metrics") => Ok(metrics(&app)),
        (&Method::GET, "healthz") => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET, "readyz") if app.drain.is_cancelled() => {
            Ok(text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"))
        }
        (&Method::GET, "readyz") if !app.node.ready() => Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster broker unavailable\n",
        )),
        (&Method::GET, "readyz") => Ok(text(StatusCode::OK, "ready\n")),
        (&Method::GET, "web") => crate::web::response(&path).ok_or(RequestError::MethodNotAllowed),
        (_, "not_found") => Err(RequestError::NoRoute(path.chars().take(256).collect())),
        _ => Err(RequestError::MethodNotAllowed),
    };
    let resp = result.unwrap_or_else(|e| error(&e));
    let m = &app.metrics;
    m.http_requests
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    Ok(resp)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn metrics(app: &App) -> Response<Body> {
    app.metrics.topics.set(app.node.hub().topic_count() as i64);
    let mut resp = Response::new(Full::new(Bytes::from(app.metrics.render())));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The topic API is readable with any valid API key once keys are configured.
fn reader(req: &Request<Incoming>, app: &App) -> Result<(), RequestError> {
    app.auth.publisher(req.headers())?;
    Ok(())
}

/// Refuses an upgrade whose `Origin` header names a page not in `server.allowed_origins`: a
/// browser always sends it, so a foreign page cannot ride on a user's access to the server.
/// Requests without the header (non-browser clients, which can send anything anyway) pass.
fn check_origin(req: &Request<Incoming>, allowed: &[String]) -> Result<(), RequestError> {
    let Some(origin) = req.headers().get(ORIGIN) else {
        return Ok(());
    };
    if allowed.is_empty() {
        return Ok(());
    }
    let presented = origin.to_str().ok().and_then(normalize_origin);
    let listed =
        presented.is_some_and(|o| allowed.iter().any(|a| normalize_origin(a).as_deref() == Some(&o)));
    if listed {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(origin.as_bytes())
        .chars()
        .take(256)
        .collect();
    Err(RequestError::Origin(shown))
}

async fn upgrade(
    mut req: Request<Incoming>,
    app: &Arc<App>,
    addrs: PeerAddrs,
    endpoint: Endpoint,
) -> Response<Body> {
    // Once per request: behind a trusted proxy, the address it says it relayed.
    let client = app.proxies.client(addrs, req.headers());
    let proxy = client.proxy.map(tracing::field::display);
    let rejected = |reason: &str| {
        app.metrics
            .connections_rejected
            .with_label_values(&[reason])
            .inc()
    };
    if req.method() != Method::GET || !fastwebsockets::upgrade::is_upgrade_request(&req) {
        rejected(REJECT_BAD_HANDSHAKE);
        let e = RequestError::BadRequest("this endpoint only accepts WebSocket upgrades".into());
        let mut resp = error(&e);
        *resp.status_mut() = StatusCode::UPGRADE_REQUIRED;
        resp.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        return resp;
    }
    if app.drain.is_cancelled() {
        return error(&RequestError::Unavailable("server is shutting down"));
    }
    if let Err(e) = check_origin(&req, &app.settings.server.allowed_origins) {
        rejected(REJECT_ORIGIN);
        debug!(addr = %client, proxy, error = %e, "websocket origin refused");
        return error(&e);
    }
    // Validate the handshake before taking a place, so a malformed request is a 400, not a
    // connection that counts as accepted.
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(upgrade) => upgrade,
        Err(e) => {
            rejected(REJECT_BAD_HANDSHAKE);
            debug!(addr = %client, proxy, error = %e, "bad websocket handshake");
            return error(&RequestError::BadRequest(format!("bad WebSocket handshake: {e}")));
        }
    };
    // The token is checked before a place is taken, so unauthenticated clients cannot use up
    // the places of their address or of the server.
    let identity = match app.auth.subscriber(req.headers(), req.uri().query()).await {
        Ok(identity) => identity,
        Err(e) => {
            rejected(REJECT_AUTH);
            debug!(addr = %client, proxy, error = %e, "websocket authentication failed");
            return error(&e.into());
        }
    };
    let slot = match app.try_connection(client.ip()) {
        Ok(slot) => slot,
        Err(Refused::IpLimit) => {
            rejected(REJECT_IP_LIMIT);
            debug!(addr = %client, proxy, "websocket refused: too many connections from the address");
            let limit = app.settings.limits.max_connections_per_ip;
            return error(&RequestError::TooManyConnections(limit));
        }
        Err(Refused::Limit) => {
            rejected(REJECT_LIMIT);
            return error(&RequestError::Unavailable("connection limit reached"));
        }
    };
    app.tasks
        .spawn(session::run(fut, app.clone(), slot, client, identity, endpoint));
    resp.map(|_| Full::new(Bytes::new()))
}

/// Reads a request body under `http.max_body_bytes`, `http.body_timeout` (counted from now, so a
/// body trickled byte by byte is cut too) and the server's in-flight body budget. The returned
/// permit holds the body's share of the budget: keep it as long as the bytes.
///
/// Every error means the body was not read to its end: answer it with [`refuse_body`].
async fn read_body(req: Request<Incoming>, app: &App) -> Result<(Bytes, BodyPermit<'_>), RequestError> {
    let http = &app.settings.http;
    let limit = http.max_body_bytes;
    let deadline = tokio::time::Instant::now() + http.body_timeout;
    let timed_out = || RequestError::BodyTimeout(http.body_timeout);
    let busy = || RequestError::Unavailable("too many request bodies in flight, retry later");
    let declared = (req.headers().get(CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue =
        (req.headers().get(EXPECT)).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body();
    let discard_limit = 2 * limit as u64;
    if let Some(declared) = declared.filter(|&n| n > limit as u64) {
        // A client that sent `Expect: 100-continue` waits for our answer before its body: it
        // gets the 413 without sending a byte (hyper sends the 100 only when the body is read).
        if !expects_continue && declared <= discard_limit {
            discard(&mut body, deadline, declared).await;
        }
        return Err(RequestError::PayloadTooLarge(limit));
    }
    // A declared length is reserved whole before any of it is buffered; a chunked body's length
    // is unknown, so each chunk is reserved as it arrives (hyper's read buffer bounds a chunk).
    let declared = declared.map(|n| n as usize);
    let mut permit = app.reserve_body(declared.unwrap_or(0)).ok_or_else(busy)?;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(timed_out()),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(RequestError::BadRequest(format!("cannot read body: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > limit {
            let read = (buf.len() + data.len()) as u64;
            // Free the memory before spending time on the rest.
            drop((buf, permit));
            discard(&mut body, deadline, discard_limit.saturating_sub(read)).await;
            return Err(RequestError::PayloadTooLarge(limit));
        }
        if declared.is_none() && !permit.grow(data.len()) {
            return Err(busy());
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), permit))
}

/// Reads and drops what is left of a refused body, at most `left` bytes and until `deadline`.
/// Closing a socket with unread bytes in it resets the connection, and a client that writes its
/// whole body before reading (most HTTP libraries, without `Expect: 100-continue`) then sees
/// "connection reset" or "broken pipe" instead of the answer. Nothing is kept, so this costs
/// time (bounded by `http.body_timeout`) but no memory.
async fn discard(body: &mut Incoming, deadline: tokio::time::Instant, mut left: u64) {
    while left > 0 {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    left = left.saturating_sub(data.len() as u64);
                }
            }
            _ => return,
        }
    }
}

/// The answer to a body that [`read_body`] refused. It says `Connection: close`: the body was
/// not read to its end, so the connection cannot carry another request (hyper closes it either
/// way; the header tells the client before it tries).
fn refuse_body(e: &RequestError) -> Response<Body> {
    let mut resp = error(e);
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

async fn publish(req: Request<Incoming>, app: &App) -> Result<Response<Body>, RequestError> {
    #[derive(Serialize)]
    struct Published<'a> {
        topic: &'a Topic,
        seq: u64,
    }
    #[derive(Serialize)]
    struct Batch<'a> {
        results: Vec<Published<'a>>,
    }
    let key = app.auth.publisher(req.headers())?;
    let once = match app.node.idempotency() {
        true => idempotency_key(req.headers())?.map(str::to_owned),
        false => None,
    };
    let (body, _permit) = match read_body(req, app).await {
        Ok(read) => read,
        Err(e) => return Ok(refuse_body(&e)),
    };
    let (messages, batch) = protocol::parse_publish(&body)?;
    // Refused whole, before anything is published: a frame larger than a subscriber's queue
    // would close every reading subscriber of a `queue` topic as a slow consumer.
    let limit = app.settings.http.max_message_bytes;
    if let Some((topic, data)) = messages.iter().find(|(_, d)| d.get().len() > limit) {
        return Err(RequestError::MessageTooLarge {
            topic: topic.to_string(),
            bytes: data.get().len(),
            limit,
        });
    }
    if let Some(key) = &key {
        // All or nothing, like validation: one forbidden topic publishes none of the batch.
        if let Some((topic, _)) = messages.iter().find(|(t, _)| !key.acl.may_publish(t)) {
            debug!(key = %key.name, %topic, "publish refused by the key's ACL");
            return Err(RequestError::forbidden(Action::Publish, topic));
        }
    }
    let (seqs, replayed) = match once {
        Some(once) => {
            // Scoped by publisher: two API keys that pick the same key never collide.
            let scope = key.as_ref().map_or("", |k| k.name.as_str());
            let once = IdempotencyKey::new(scope, &once, &body);
            app.node.publish_once(&messages, Source::Http, &once).await?
        }
        None => (app.node.publish(&messages, Source::Http).await?, false),
    };
    // A replay is rebuilt from the same body and the stored seqs, so it is byte for byte the
    // first reply.
    let results: Vec<Published> = (messages.iter().zip(seqs))
        .map(|((topic, _), seq)| Published { topic, seq })
        .collect();
    let mut resp = match batch {
        true => json(StatusCode::OK, &Batch { results }),
        false => json(StatusCode::OK, &results[0]),
    };
    if replayed {
        app.metrics.idempotent_replays.inc();
        (resp.headers_mut()).insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The request's `Idempotency-Key`, checked; more than one is a bad request.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, RequestError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(RequestError::BadRequest(
            "more than one Idempotency-Key header".into(),
        ));
    }
    idempotency::check_key(value.as_bytes()).map(Some)
}

/// Topics one listing page returns by default, and at most.
const DEFAULT_TOPIC_PAGE: usize = 100;
const MAX_TOPIC_PAGE: usize = 1000;

async fn list_topics(query: &str, app: &App) -> Result<Response<Body>, RequestError> {
    #[derive(Serialize)]
    struct Row {
        topic: Topic,
        seq: u64,
        subscribers: usize,
    }
    #[derive(Serialize)]
    struct Listing {
        topics: Vec<Row>,
        /// Pass as `after` for the next page; null on the last one.
        next: Option<Topic>,
    }
    let (mut after, mut limit) = (None, DEFAULT_TOPIC_PAGE);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| RequestError::BadRequest(format!("query parameter `{key}` must be {what}"));
        match key {
            "limit" => {
                limit = value.parse().map_err(|_| bad("an integer from 1 to 1000"))?;
                if !(1..=MAX_TOPIC_PAGE).contains(&limit) {
                    return Err(bad("an integer from 1 to 1000"));
                }
            }
            // Topic names are URL-safe as they are: no decoding needed, none accepted.
            "after" => after = Some(Topic::parse(value).map_err(|e| RequestError::invalid_topic(value, e))?),
            _ => {
                return Err(RequestError::BadRequest(format!(
                    "unknown query parameter `{key}`"
                )))
            }
        }
    }
    let page = app.node.list(after.as_ref(), limit).await?;
    let topics = (page.topics.into_iter())
        .map(|t| Row {
            topic: t.topic,
            seq: t.seq,
            subscribers: t.subscribers,
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &Listing {
            topics,
            next: page.next,
        },
    ))
}

async fn get_topic(name: &str, app: &App) -> Result<Response<Body>, RequestError> {
    #[derive(Serialize)]
    struct Last<'a> {
        topic: &'a Topic,
        seq: u64,
        ts: u64,
        data: &'a RawValue,
    }
    let topic = Topic::parse(name).map_err(|e| RequestError::invalid_topic(name, e))?;
    let p = (app.node.last(&topic).await?).ok_or_else(|| RequestError::TopicNotFound(name.to_string()))?;
    let body = Last {
        topic: &p.topic,
        seq: p.seq,
        ts: p.ts,
        data: &p.data,
    };
    Ok(json(StatusCode::OK, &body))
}

/// Most publications one history request returns.
const MAX_HISTORY_PAGE: usize = 1000;

async fn get_history(name: &str, query: &str, app: &App) -> Result<Response<Body>, RequestError> {
    #[derive(Serialize)]
    struct Stored<'a> {
        seq: u64,
        ts: u64,
        data: &'a RawValue,
    }
    #[derive(Serialize)]
    struct Page<'a> {
        topic: &'a Topic,
        seq: u64,
        epoch: &'a str,
        /// False when publications after `since` have already left history.
        complete: bool,
        publications: Vec<Stored<'a>>,
    }
    let topic = Topic::parse(name).map_err(|e| RequestError::invalid_topic(name, e))?;
    let (mut since, mut limit) = (0u64, 100usize);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| RequestError::BadRequest(format!("query parameter `{key}` must be {what}"));
        match key {
            "since" => since = value.parse().map_err(|_| bad("a non-negative integer"))?,
            "limit" => limit = value.parse().map_err(|_| bad("a non-negative integer"))?,
            _ => {
                return Err(RequestError::BadRequest(format!(
                    "unknown query parameter `{key}`"
                )))
            }
        }
    }
    let page = (app
        .node
        .history(&topic, since, limit.min(MAX_HISTORY_PAGE))
        .await?)
        .ok_or_else(|| RequestError::TopicNotFound(name.to_string()))?;
    let body = Page {
        topic: &topic,
        seq: page.position.seq,
        epoch: &page.position.epoch,
        complete: page.complete,
        publications: (page.publications.iter())
            .map(|e| Stored {
                seq: e.seq,
                ts: e.ts,
                data: &e.data,
            })
            .collect(),
    };
    Ok(json(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized() {
        for (raw, normal) in [
            ("https://App.Example.com", Some("https://app.example.com")),
            ("https://app.example.com:443", Some("https://app.example.com")),
            ("http://app.example.com:80", Some("http://app.example.com")),
            (
                "https://app.example.com:8443",
                Some("https://app.example.com:8443"),
            ),
            ("http://[::1]:8080", Some("http://[::1]:8080")),
            ("http://[::1]", Some("http://[::1]")),
            ("https://app.example.com/", None),
            ("https://app.example.com/x", None),
            ("app.example.com", None),
            ("ftp://app.example.com", None),
            ("null", None),
            ("https://", None),
            ("https://a:", None),
            ("https://a:x", None),
            ("https://*.example.com", None),
            ("https://user@a", None),
        ] {
            assert_eq!(normalize_origin(raw).as_deref(), normal, "{raw}");
        }
    }
}
