//! What goes in and out of an HTTP request: the [`Body`] of every response (whole, or an SSE
//! stream), the JSON and
//! error responses (where a [`RequestError`] becomes a status and the
//! `{"error":{"code","message"}}` shape), and request bodies read under their limits:
//! `http.max_body_bytes`, `http.body_timeout` and the server-wide `http.max_inflight_body_bytes`
//! (see [`read_body`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use crate::app::{App, BodyPermit};
use crate::protocol::error::RequestError;
use crate::transport::sse::Events;

/// The body of every response: whole, or the events of a `GET /sse` stream (boxed: a stream's
/// state is many times a whole body's, which every other response would carry).
pub enum Body {
    Whole(Full<Bytes>),
    Events(Box<Events>),
}

impl Body {
    pub fn new(bytes: impl Into<Bytes>) -> Body {
        Body::Whole(Full::new(bytes.into()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Whole(whole) => Pin::new(whole).poll_frame(cx),
            Body::Events(events) => Pin::new(&mut **events).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Whole(whole) => whole.is_end_stream(),
            Body::Events(events) => events.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Whole(whole) => whole.size_hint(),
            Body::Events(events) => events.size_hint(),
        }
    }
}

pub(super) fn status_of(e: &RequestError) -> StatusCode {
    match e {
        RequestError::BadRequest(_) | RequestError::InvalidTopic { .. } | RequestError::UnknownOp(_) => {
            StatusCode::BAD_REQUEST
        }
        RequestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        RequestError::Forbidden { .. } | RequestError::Origin(_) => StatusCode::FORBIDDEN,
        RequestError::TooManySubscriptions(_)
        | RequestError::TopicsPerConnection(_)
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

pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("serializing to a Vec cannot fail");
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(super) fn error(e: &RequestError) -> Response<Body> {
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

pub(super) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::new(body.as_bytes()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// Reads a request body under `http.max_body_bytes`, `http.body_timeout` (counted from now, so a
/// body trickled byte by byte is cut too) and the server's in-flight body budget. The returned
/// permit holds the body's share of the budget: keep it as long as the bytes.
///
/// Every error means the body was not read to its end: answer it with [`refuse_body`].
pub(super) async fn read_body(
    req: Request<Incoming>,
    app: &App,
) -> Result<(Bytes, BodyPermit<'_>), RequestError> {
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
pub(super) async fn discard(body: &mut Incoming, deadline: tokio::time::Instant, mut left: u64) {
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
pub(super) fn refuse_body(e: &RequestError) -> Response<Body> {
    let mut resp = error(e);
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}
