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
}

impl Error {
    /// The server's error code, for [`Error::Server`] and [`Error::Http`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } | Error::Http { code, .. } => Some(code),
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
                message: String::from_utf8_lossy(body).chars().take(512).collect(),
            },
        }
    }
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
    }
}
