//! The client's error type.

use std::time::Duration;

/// Any error a user callback (such as a [`TokenProvider`](crate::TokenProvider)) may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not a usable `ws://`/`wss://` (or `http://`/`https://` for HTTP) URL.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token provider failed, so no connection was attempted.
    #[error("token provider failed: {0}")]
    Token(#[source] BoxError),
    /// Opening the connection failed (DNS, TCP, TLS or the WebSocket handshake).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL connected to, without its token.
        url: String,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
    /// The connection failed after it was established.
    #[error("connection error: {0}")]
    Transport(#[source] BoxError),
    /// The server answered a request with an `error` reply.
    #[error("server error {code}: {message}")]
    Server {
        /// The stable error code, e.g. `forbidden`, `invalid_topic`, `rate_limited`.
        code: String,
        /// The human-readable message.
        message: String,
    },
    /// The server answered an HTTP request (publish, or the WebSocket upgrade) with a non-2xx
    /// status.
    #[error("HTTP {status}: {code}: {message}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The error `code` from the `{"error":{"code","message"}}` body, or `http_<status>`
        /// when the body has none.
        code: String,
        /// The error message from the body, or the body itself.
        message: String,
    },
    /// The server refused the WebSocket handshake's credentials (HTTP 401: missing, expired or
    /// invalid token) or its origin (HTTP 403).
    ///
    /// Permanent: from [`Client::connect`](crate::Client::connect) it is returned as is, and
    /// after a reconnect attempt the client stops reconnecting (the event stream ends after the
    /// [`Event::Error`](crate::Event::Error) carrying it) unless its
    /// [`TokenProvider`](crate::TokenProvider) then supplies a token other than the refused one.
    #[error("the server refused the connection: HTTP {status}: {code}: {message}")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The error `code` from the body (`unauthorized`, `forbidden`), or `http_<status>`.
        code: String,
        /// Why, e.g. `token expired`.
        message: String,
    },
    /// The URL answered the WebSocket handshake with a success or a redirect (2xx, 3xx) instead
    /// of switching protocols: it is not a tickwire WebSocket endpoint (an HTML page, say).
    #[error("{url} answered HTTP {status} ({content_type}) instead of a WebSocket upgrade: not a tickwire WebSocket endpoint")]
    NotWebSocket {
        /// The URL connected to, without its token.
        url: String,
        /// The HTTP status it answered with.
        status: u16,
        /// Its `Content-Type` (`text/html`, ...), or `no body`.
        content_type: String,
    },
    /// The server sent something that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A payload could not be encoded as JSON, or is not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The connection was lost before the server replied; the request may or may not have
    /// been carried out.
    #[error("connection lost before the server replied")]
    Disconnected,
    /// No reply arrived in time (see [`ClientOptions::request_timeout`](crate::ClientOptions)).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The client is closed (by [`Client::close`](crate::Client::close), or it gave up
    /// reconnecting).
    #[error("the client is closed")]
    Closed,
    /// The request queue is full (only from non-waiting calls such as
    /// [`Client::publish_nowait`](crate::Client::publish_nowait)).
    #[error("the request queue is full")]
    Busy,
    /// A [`SubscribeOptions::max_rate`](crate::SubscribeOptions::max_rate) outside the bounds
    /// the server accepts (0.01 to 1000 updates a second, [`tickwire_proto::rate`]), or NaN:
    /// [`Client::subscribe_with`](crate::Client::subscribe_with) returns it without sending
    /// anything. (The server would refuse it as `bad_request`.)
    #[error("invalid max_rate {0}: a number of updates a second from 0.01 to 1000")]
    InvalidMaxRate(f64),
    /// A delta update (a subscription with [`SubscribeOptions::delta`](crate::SubscribeOptions))
    /// could not be applied: the client lacks the data it is based on (`seq - 1`), or the delta
    /// is damaged or meant for other data (its checksum). Reported as an
    /// [`Event::Error`](crate::Event::Error); the update was not delivered, and the client has
    /// re-subscribed the topic with `since` its last delivered position, so the missed
    /// publications follow as full data (or, when the server cannot replay them, an
    /// [`Event::Reset`](crate::Event::Reset) and a fresh snapshot).
    #[error("delta update {seq} of {topic} not applied ({reason}); asking for full data again")]
    Delta {
        /// The topic.
        topic: String,
        /// The seq of the update that was not applied.
        seq: u64,
        /// Why, e.g. `no data to apply it to` or the Fossil decoder's error.
        reason: String,
    },
}

impl Error {
    /// The server's error code, for [`Error::Server`], [`Error::Http`] and
    /// [`Error::Unauthorized`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } | Error::Http { code, .. } | Error::Unauthorized { code, .. } => {
                Some(code)
            }
            _ => None,
        }
    }

    /// Parses an HTTP error response body of the `{"error":{"code","message"}}` shape.
    pub(crate) fn from_http(status: u16, body: &[u8]) -> Error {
        #[derive(serde::Deserialize)]
        struct Detail {
            code: String,
            message: String,
        }
        #[derive(serde::Deserialize)]
        struct Wrapper {
            error: Detail,
        }
        match serde_json::from_slice::<Wrapper>(body) {
            Ok(Wrapper { error }) => Error::Http {
                status,
                code: error.code,
                message: error.message,
            },
            Err(_) => Error::Http {
                status,
                code: format!("http_{status}"),
                message: one_line(&String::from_utf8_lossy(body), 512),
            },
        }
    }

    /// The error for a WebSocket handshake answered with `status` instead of 101.
    pub(crate) fn from_handshake(url: &str, status: u16, content_type: Option<&str>, body: &[u8]) -> Error {
        if (200..400).contains(&status) {
            let content_type = match content_type {
                Some(t) => one_line(t.split(';').next().unwrap_or(t), 64),
                None if body.is_empty() => "no body".into(),
                None => "no Content-Type".into(),
            };
            return Error::NotWebSocket {
                url: url.to_string(),
                status,
                content_type,
            };
        }
        match Error::from_http(status, body) {
            Error::Http {
                status: status @ (401 | 403),
                code,
                message,
            } => Error::Unauthorized {
                status,
                code,
                message,
            },
            other => other,
        }
    }
}

/// `text` with every run of whitespace (newlines included) as one space, cut at `max` chars:
/// an HTML error page must not spill over many lines of a log or a terminal.
fn one_line(text: &str, max: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    words.join(" ").chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_error_bodies() {
        let e = Error::from_http(403, br#"{"error":{"code":"forbidden","message":"no"}}"#);
        assert_eq!(e.code(), Some("forbidden"));
        assert_eq!(e.to_string(), "HTTP 403: forbidden: no");
        let e = Error::from_http(502, b"bad gateway");
        assert_eq!(e.to_string(), "HTTP 502: http_502: bad gateway");
        let e = Error::from_http(404, b"<html>\n  <h1>Not\r\nFound</h1>\n</html>\n");
        assert_eq!(
            e.to_string(),
            "HTTP 404: http_404: <html> <h1>Not Found</h1> </html>"
        );
    }

    #[test]
    fn handshake_refusals() {
        let body = br#"{"error":{"code":"unauthorized","message":"token expired"}}"#;
        let e = Error::from_handshake("ws://h/ws", 401, Some("application/json"), body);
        assert!(matches!(e, Error::Unauthorized { status: 401, .. }), "{e:?}");
        assert_eq!(e.code(), Some("unauthorized"));
        assert_eq!(
            e.to_string(),
            "the server refused the connection: HTTP 401: unauthorized: token expired"
        );
        let e = Error::from_handshake("ws://h/ws", 403, None, b"denied");
        assert!(matches!(e, Error::Unauthorized { status: 403, .. }), "{e:?}");
        let body = br#"{"error":{"code":"unavailable","message":"connection limit reached"}}"#;
        let e = Error::from_handshake("ws://h/ws", 503, None, body);
        assert!(matches!(e, Error::Http { status: 503, .. }), "{e:?}");
        let e = Error::from_handshake(
            "ws://h:1/",
            200,
            Some("text/html; charset=utf-8"),
            b"<!doctype html>",
        );
        assert_eq!(
            e.to_string(),
            "ws://h:1/ answered HTTP 200 (text/html) instead of a WebSocket upgrade: not a tickwire WebSocket endpoint"
        );
        let e = Error::from_handshake("ws://h:1/", 301, None, b"");
        assert!(e.to_string().contains("HTTP 301 (no body)"), "{e}");
    }
}
