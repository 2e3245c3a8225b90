//! HTTP routing: the WebSocket upgrade at `/ws` (and `/echo`, when `server.echo_endpoint` is
//! on; [`upgrade`]), the Server-Sent Events stream at `/sse` ([`sse`]), the publish and topic APIs ([`api`]), the web pages (`/`, `/chat`,
//! `/console`, `/tickwire.js`; see [`crate::transport::web`]), and the operator endpoints `/metrics`,
//! `/healthz`, `/readyz`. Every request is counted in the HTTP metrics here.

mod api;
pub mod body;
mod sse;
mod upgrade;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::protocol::error::RequestError;
use crate::transport::proxy::PeerAddrs;
use crate::transport::ws::Endpoint;

use self::api::{get_history, get_presence, get_topic, list_topics, publish, reader};
pub use self::body::Body;
use self::body::{error, text};
use self::upgrade::upgrade;

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

/// The `route` label for a path: fixed values, never the raw path.
fn route_of(path: &str) -> &'static str {
    match path {
        "/ws" => "ws",
        "/sse" => "sse",
        "/echo" => "echo",
        "/api/v1/publish" => "publish",
        "/api/v1/topics" => "topics",
        p if history_topic(p).is_some() => "history",
        p if presence_topic(p).is_some() => "presence",
        p if p.starts_with("/api/v1/topics/") => "topic",
        "/metrics" => "metrics",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/" | "/chat" | "/console" | "/tickwire.js" => "web",
        _ => "not_found",
    }
}

/// The topic of a `/api/v1/topics/{topic}/history` path. Topic names have no `/`, so
/// `/api/v1/topics/history` is the topic named `history`, not its history.
fn history_topic(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/api/v1/topics/")?.strip_suffix("/history")?;
    (!name.is_empty()).then_some(name)
}

/// The topic of a `/api/v1/topics/{topic}/presence` path (as `history_topic`).
fn presence_topic(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/api/v1/topics/")?.strip_suffix("/presence")?;
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
    if route == "web" && !crate::transport::web::served(&path, &app.settings) {
        route = "not_found";
    }
    let result = match (req.method(), route) {
        (_, "ws") => Ok(upgrade(req, &app, addrs, Endpoint::Requests).await),
        (_, "echo") => Ok(upgrade(req, &app, addrs, Endpoint::Echo).await),
        (&Method::GET | &Method::OPTIONS, "sse") => Ok(sse::stream(req, &app, addrs).await),
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
        (&Method::GET, "presence") => match reader(&req, &app) {
            Ok(()) => get_presence(presence_topic(&path).unwrap_or_default(), &app).await,
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
        (&Method::GET, "web") => (crate::transport::web::response(&path, &app.settings))
            .map(|resp| resp.map(Body::Whole))
            .ok_or(RequestError::MethodNotAllowed),
        (_, "not_found") => Err(RequestError::NoRoute(path.chars().take(256).collect())),
        _ => Err(RequestError::MethodNotAllowed),
    };
    let mut resp = result.unwrap_or_else(|e| error(&e));
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110 §15.5.6: a 405 names the methods the resource takes.
        let allowed = if route == "publish" { "POST" } else { "GET" };
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed));
    }
    let m = &app.metrics;
    m.http_requests
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    Ok(resp)
}

fn metrics(app: &App) -> Response<Body> {
    app.metrics.topics.set(app.node.hub().topic_count() as i64);
    let mut resp = Response::new(Body::new(app.metrics.render()));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
