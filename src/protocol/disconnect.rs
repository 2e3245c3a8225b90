//! Why a connection ended: the close code and reason sent to the client, and the low-cardinality
//! label counted in `tickwire_disconnects_total{reason}`.
//!
//! Codes 4000–4499 are tickwire's own. A client should reconnect after any of them except
//! after fixing its own behaviour (4029), or with a fresh token (4003). Those codes are shared
//! with the clients (`tickwire_proto::close`).

use tickwire_proto::close;

/// The reason a WebSocket connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client sent a close frame or went away.
    ClientClose,
    /// A `queue` topic overflowed the connection's outbound queue.
    SlowConsumer,
    /// A new topic its patterns match would take it past `limits.max_topics_per_connection`.
    TooManyTopics,
    /// Nothing arrived from the client for `server.idle_timeout`.
    IdleTimeout,
    /// The server is draining.
    Shutdown,
    /// The client kept sending requests while rate limited.
    RateLimit,
    /// The connection's token expired and was not refreshed in time.
    TokenExpired,
    /// A message over `server.max_message_bytes`.
    MessageTooBig,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// A binary message.
    Binary,
    /// A frame sequence RFC 6455 forbids.
    ProtocolError,
    /// The socket failed.
    Error,
}

impl Disconnect {
    /// The close frame to send, if any: none when the client already closed or the socket broke.
    pub fn close_frame(self) -> Option<(u16, &'static str)> {
        Some(match self {
            Disconnect::ClientClose | Disconnect::Error => return None,
            Disconnect::SlowConsumer => (close::SLOW_CONSUMER, "slow consumer"),
            Disconnect::TooManyTopics => (close::TOO_MANY_TOPICS, "too many topics"),
            Disconnect::IdleTimeout => (close::IDLE_TIMEOUT, "idle timeout"),
            Disconnect::Shutdown => (1001, "server shutting down"),
            Disconnect::RateLimit => (close::RATE_LIMIT, "rate limit exceeded"),
            Disconnect::TokenExpired => (close::TOKEN_EXPIRED, "token expired"),
            Disconnect::MessageTooBig => (1009, "message too big"),
            Disconnect::InvalidUtf8 => (1007, "invalid UTF-8"),
            Disconnect::Binary => (1003, "binary messages are not supported"),
            Disconnect::ProtocolError => (1002, "protocol error"),
        })
    }

    /// The `reason` label of `tickwire_disconnects_total`.
    pub fn label(self) -> &'static str {
        match self {
            Disconnect::ClientClose => "client_close",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::TooManyTopics => "too_many_topics",
            Disconnect::IdleTimeout => "idle_timeout",
            Disconnect::Shutdown => "shutdown",
            Disconnect::RateLimit => "rate_limit",
            Disconnect::TokenExpired => "token_expired",
            Disconnect::MessageTooBig
            | Disconnect::InvalidUtf8
            | Disconnect::Binary
            | Disconnect::ProtocolError => "protocol_error",
            Disconnect::Error => "error",
        }
    }

    /// Every label value, so that each series exists (at 0) from start-up.
    pub const LABELS: [&'static str; 9] = [
        "client_close",
        "slow_consumer",
        "too_many_topics",
        "idle_timeout",
        "shutdown",
        "rate_limit",
        "token_expired",
        "protocol_error",
        "error",
    ];
}
