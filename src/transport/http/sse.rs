//! `GET /sse`: accepting a Server-Sent Events stream. The origin check, the client's
//! credentials (`?token=`, which `EventSource` can send, or `Authorization: Bearer`), the URL's
//! parameters (checked like a subscribe request), the ACL, the connection slot, and the CORS
//! headers; then the stream itself ([`crate::transport::sse`]) answers 200 with its events, or
//! the refusal with its status.
//!
//! Parameters: `topics` (comma-separated topics and patterns, URL-encoded; required),
//! `max_rate`, `delta` (`fossil`), `last_event_id` (for clients that cannot send the
//! `Last-Event-ID` header, which wins when both are there), and `token` (read by `auth`).
//! Others are ignored, so that a client may add its own (a cache buster).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, CACHE_CONTROL,
    CONTENT_TYPE, ORIGIN, VARY,
};
use hyper::{Method, Request, Response, StatusCode};
use tracing::debug;

use crate::app::App;
use crate::metrics::{Transport, REJECT_AUTH, REJECT_ORIGIN};
use crate::protocol::error::{Action, RequestError};
use crate::topic::Pattern;
use crate::transport::proxy::PeerAddrs;
use crate::transport::sse::{self, Stream, MAX_ID_CHARS};

use super::body::{error, Body};
use super::upgrade::{check_origin, no_slot};

/// The answer to `GET /sse` (and to a CORS preflight of it), CORS headers included when the
/// request comes from an allowed page.
pub(super) async fn stream(req: Request<Incoming>, app: &Arc<App>, addrs: PeerAddrs) -> Response<Body> {
    let allowed = &app.settings.server.allowed_origins;
    if let Err(e) = check_origin(&req, allowed) {
        app.metrics
            .connections_rejected
            .with_label_values(&[REJECT_ORIGIN])
            .inc();
        return error(&e);
    }
    // Past the check, a page's `Origin` is one the server accepts: echoed, so that a page on
    // another origin can read the stream (`EventSource` with or without `withCredentials`).
    let origin = req.headers().get(ORIGIN).cloned();
    let mut resp = match *req.method() {
        Method::OPTIONS => preflight(),
        _ => match accept(req, app, addrs).await {
            Ok(events) => events_response(events),
            Err(e) => {
                let mut resp = error(&e);
                // A refused subscription is the client's request, whichever limit it broke.
                if let RequestError::TooManySubscriptions(_) | RequestError::TopicsPerConnection(_) = e {
                    *resp.status_mut() = StatusCode::BAD_REQUEST;
                }
                resp
            }
        },
    };
    if let Some(origin) = origin {
        let headers = resp.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        headers.insert(VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

/// The answer to a CORS preflight: a page that sends the token in a header (`fetch`, not
/// `EventSource`) asks first.
fn preflight() -> Response<Body> {
    let mut resp = Response::new(Body::new(""));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let headers = resp.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET"));
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Last-Event-ID"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    resp
}

fn events_response(events: sse::Events) -> Response<Body> {
    let mut resp = Response::new(Body::Events(Box::new(events)));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied responses unless told not to: a stream must flow.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Checks the request, takes a connection place and opens the stream; every refusal comes
/// before a byte is streamed.
async fn accept(
    req: Request<Incoming>,
    app: &Arc<App>,
    addrs: PeerAddrs,
) -> Result<sse::Events, RequestError> {
    if app.drain.is_cancelled() {
        return Err(RequestError::Unavailable("server is shutting down"));
    }
    let client = app.proxies.client(addrs, req.headers());
    let proxy = client.proxy.map(tracing::field::display);
    let identity = match app.auth.subscriber(req.headers(), req.uri().query()).await {
        Ok(identity) => identity,
        Err(e) => {
            app.metrics
                .connections_rejected
                .with_label_values(&[REJECT_AUTH])
                .inc();
            debug!(addr = %client, proxy, error = %e, "sse authentication failed");
            return Err(e.into());
        }
    };
    let max_topics = app.settings.server.max_subscriptions_per_connection;
    let params = Params::parse(req.uri().query().unwrap_or(""), req.headers(), max_topics)?;
    // Before a place is taken: a stream the ACL refuses whole never counts as a connection.
    if let Some(denied) = identity.acl.first_unreadable(&params.topics) {
        return Err(RequestError::forbidden(Action::Subscribe, denied));
    }
    let slot = match app.try_connection(client.ip(), Transport::Sse) {
        Ok(slot) => slot,
        Err(refused) => {
            debug!(addr = %client, proxy, ?refused, "sse refused: connection limit");
            return Err(no_slot(app, refused));
        }
    };
    let stream = Stream {
        identity,
        topics: params.topics,
        last_event_id: params.last_event_id,
        max_rate: params.max_rate,
        delta: params.delta,
    };
    sse::open(app, slot, client, stream).await
}

/// The stream's parameters, checked with the rules of a subscribe request.
#[derive(Debug)]
struct Params {
    topics: Vec<Pattern>,
    last_event_id: Option<String>,
    max_rate: Option<f64>,
    delta: bool,
}

impl Params {
    fn parse(query: &str, headers: &HeaderMap, max_topics: usize) -> Result<Params, RequestError> {
        let bad = |m: String| RequestError::BadRequest(m);
        let mut names: Vec<String> = Vec::new();
        let (mut max_rate, mut delta, mut last_event_id) = (None, false, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "topics" => {
                    let value = decode(key, value)?;
                    // Bounded before it is split: a name is at most 256 bytes.
                    if names.len() > max_topics {
                        return Err(RequestError::TooManySubscriptions(max_topics));
                    }
                    names.extend(value.split(',').map(str::to_owned));
                }
                "max_rate" => {
                    use tickwire_proto::rate::{valid, MAX_RATE, MIN_RATE};
                    let rate = (decode(key, value)?.parse::<f64>().ok()).filter(|r| valid(*r));
                    let Some(rate) = rate else {
                        return Err(bad(format!(
                            "query parameter `max_rate` must be a number of updates a second, from {MIN_RATE} to {MAX_RATE}"
                        )));
                    };
                    max_rate = Some(rate);
                }
                "delta" => match &*decode(key, value)? {
                    "fossil" => delta = true,
                    _ => {
                        return Err(bad(
                            "query parameter `delta` must be \"fossil\" (the only delta format)".into(),
                        ))
                    }
                },
                "last_event_id" => last_event_id = Some(decode(key, value)?),
                _ => {}
            }
        }
        if names.is_empty() || names.iter().all(String::is_empty) {
            return Err(bad(
                "query parameter `topics` is required: topics and patterns, comma-separated".into(),
            ));
        }
        if names.len() > max_topics {
            return Err(RequestError::TooManySubscriptions(max_topics));
        }
        let topics = (names.iter())
            .map(|name| Pattern::parse(name).map_err(|e| RequestError::invalid_topic(name, e)))
            .collect::<Result<Vec<Pattern>, RequestError>>()?;
        // The header is what a browser sends when it reconnects by itself; the parameter is the
        // URL's, from when the stream was first opened.
        let header = (headers.get("last-event-id")).and_then(|v| v.to_str().ok());
        let last_event_id = header.map(str::to_owned).or(last_event_id);
        // An id this long was not issued here: as if there were none that decodes.
        let last_event_id = last_event_id.map(|id| match id.len() > MAX_ID_CHARS {
            true => String::new(),
            false => id,
        });
        Ok(Params {
            topics,
            last_event_id,
            max_rate,
            delta,
        })
    }
}

/// A query parameter's value, percent-decoded (`+` stays itself: no topic, id or number has a
/// space).
fn decode(key: &str, value: &str) -> Result<String, RequestError> {
    let bad = || RequestError::BadRequest(format!("query parameter `{key}` is not valid URL-encoded UTF-8"));
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<Params, RequestError> {
        Params::parse(query, &HeaderMap::new(), 3)
    }

    #[test]
    fn parameters_follow_the_subscribe_rules() {
        let p = parse("topics=prices.BTC-USD%2Cchat.%2A,orders.%3E&max_rate=2.5&delta=fossil&_=17").unwrap();
        let names: Vec<&str> = p.topics.iter().map(Pattern::as_str).collect();
        assert_eq!(names, ["prices.BTC-USD", "chat.*", "orders.>"]);
        assert_eq!((p.max_rate, p.delta, p.last_event_id), (Some(2.5), true, None));
        let code = |q: &str| parse(q).unwrap_err().code();
        assert_eq!(code(""), "bad_request");
        assert_eq!(code("topics="), "bad_request");
        assert_eq!(code("topics=a..b"), "invalid_topic");
        assert_eq!(code("topics=a,"), "invalid_topic");
        assert_eq!(code("topics=a,b,c,d"), "too_many_subscriptions");
        assert_eq!(code("topics=a&max_rate=0"), "bad_request");
        assert_eq!(code("topics=a&max_rate=x"), "bad_request");
        assert_eq!(code("topics=a&delta=xdelta"), "bad_request");
        assert_eq!(code("topics=a%zz"), "bad_request");
        assert_eq!(code("topics=a%ff"), "bad_request");
    }

    #[test]
    fn the_header_wins_over_the_parameter() {
        let p = parse("topics=a&last_event_id=from-url").unwrap();
        assert_eq!(p.last_event_id.as_deref(), Some("from-url"));
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", HeaderValue::from_static("from-header"));
        let p = Params::parse("topics=a&last_event_id=from-url", &headers, 3).unwrap();
        assert_eq!(p.last_event_id.as_deref(), Some("from-header"));
        let long = format!("topics=a&last_event_id={}", "A".repeat(MAX_ID_CHARS + 1));
        assert_eq!(parse(&long).unwrap().last_event_id.as_deref(), Some(""));
    }
}
