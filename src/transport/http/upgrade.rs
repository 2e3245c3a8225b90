//! The WebSocket upgrade at `/ws` (and `/echo`): the handshake and origin checks, the
//! client's credentials and connection slot, then the connection ([`ws::run`], which runs the
//! session) is spawned on the upgraded stream while the 101 answer goes out.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, ORIGIN, SEC_WEBSOCKET_EXTENSIONS, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use tracing::debug;

use crate::app::{App, Refused};
use crate::metrics::{
    Transport, REJECT_AUTH, REJECT_BAD_HANDSHAKE, REJECT_IP_LIMIT, REJECT_LIMIT, REJECT_ORIGIN,
};
use crate::protocol::deflate;
use crate::protocol::error::RequestError;
use crate::settings::normalize_origin;
use crate::transport::proxy::PeerAddrs;
use crate::transport::ws::{self, Endpoint};

use super::body::{error, Body};

/// Refuses an upgrade whose `Origin` header names a page not in `server.allowed_origins`: a
/// browser always sends it, so a foreign page cannot ride on a user's access to the server.
/// Requests without the header (non-browser clients, which can send anything anyway) pass.
pub(super) fn check_origin(req: &Request<Incoming>, allowed: &[String]) -> Result<(), RequestError> {
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

/// The answer to a connection that got no place (counted in the rejected metric).
pub(super) fn no_slot(app: &App, refused: Refused) -> RequestError {
    let (reason, e) = match refused {
        Refused::IpLimit => {
            let limit = app.settings.limits.max_connections_per_ip;
            (REJECT_IP_LIMIT, RequestError::TooManyConnections(limit))
        }
        Refused::Limit => (
            REJECT_LIMIT,
            RequestError::Unavailable("connection limit reached"),
        ),
    };
    app.metrics
        .connections_rejected
        .with_label_values(&[reason])
        .inc();
    e
}

/// 426 for a request to a WebSocket endpoint that is not an upgrade, saying what it takes.
fn upgrade_required() -> Response<Body> {
    let e = RequestError::BadRequest("this endpoint only accepts WebSocket upgrades".into());
    let mut resp = error(&e);
    *resp.status_mut() = StatusCode::UPGRADE_REQUIRED;
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    resp
}

pub(super) async fn upgrade(
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
        // A page cannot read why its upgrade was refused (it sees close 1006 only), so
        // tickwire.js asks again with a plain GET and the same token: a refused token answers
        // 401 with the reason here, where it would otherwise get the 426.
        if req.method() == Method::GET {
            if let Err(e) = app.auth.subscriber(req.headers(), req.uri().query()).await {
                rejected(REJECT_AUTH);
                return error(&e.into());
            }
        }
        rejected(REJECT_BAD_HANDSHAKE);
        return upgrade_required();
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
    let slot = match app.try_connection(client.ip(), Transport::Ws) {
        Ok(slot) => slot,
        Err(refused) => {
            debug!(addr = %client, proxy, ?refused, "websocket refused: connection limit");
            return error(&no_slot(app, refused));
        }
    };
    // permessage-deflate when the client offers it: agreed here, in the 101 answer.
    let offers = (req.headers().get_all(SEC_WEBSOCKET_EXTENSIONS).iter()).filter_map(|v| v.to_str().ok());
    let deflate = match app.settings.compression.enabled {
        true => deflate::negotiate(offers),
        false => None,
    };
    let mut resp = resp.map(|_| Body::new(Bytes::new()));
    let deflate = deflate.map(|(agreed, answer)| {
        let answer = HeaderValue::from_str(&answer).expect("built from ASCII");
        resp.headers_mut().insert(SEC_WEBSOCKET_EXTENSIONS, answer);
        agreed
    });
    let link = ws::Link {
        identity,
        endpoint,
        deflate,
    };
    app.tasks.spawn(ws::run(fut, app.clone(), slot, client, link));
    resp
}
