//! The errors a client sees: a refused request or refused credentials, and their wire codes.
//!
//! Library code returns these enums; the edges map them exactly once: [`RequestError::code`]
//! gives the `code` string of the wire error shape, `transport::http` picks the HTTP status.
//! Every other error type lives in the module that owns it (`TopicError` in `topic`,
//! `SettingsError` in `settings`, `JwksError` in `jwks`, `ProxyHeaderError` in `proxy::haproxy`,
//! `ServerError` in `transport::listener`).

use thiserror::Error;
use tickwire_proto::code;

use crate::topic::{TopicError, MAX_TOPIC_BYTES};

/// A request that cannot be carried out, from a WebSocket client or an HTTP publisher.
/// Never fatal to the connection that sent it.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: TopicError },
    #[error("not allowed to {action} {topic:?}")]
    Forbidden { action: Action, topic: String },
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    #[error("origin {0:?} is not allowed")]
    Origin(String),
    #[error("{0} WebSocket connections from this address already open")]
    TooManyConnections(usize),
    #[error("subscription limit of {0} per connection exceeded")]
    TooManySubscriptions(usize),
    #[error("topic limit of {0} reached: no new topic can be created until idle ones are dropped")]
    TooManyTopics(usize),
    #[error("request rate limit exceeded")]
    RateLimited,
    #[error("body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error(
        "the data of the message to {topic:?} is {bytes} bytes, over http.max_message_bytes \
         ({limit}): its frame must fit in a subscriber's queue (queue.max_bytes)"
    )]
    MessageTooLarge {
        topic: String,
        bytes: usize,
        limit: usize,
    },
    #[error("request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("topic {0:?} not found")]
    TopicNotFound(String),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("{0}")]
    IdempotencyConflict(&'static str),
}

impl RequestError {
    /// The stable `code` string clients match on (shared with them: `tickwire_proto::code`).
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::BadRequest(_) => code::BAD_REQUEST,
            RequestError::UnknownOp(_) => code::UNKNOWN_OP,
            RequestError::InvalidTopic { .. } => code::INVALID_TOPIC,
            RequestError::Forbidden { .. } | RequestError::Origin(_) => code::FORBIDDEN,
            RequestError::Unauthorized(_) => code::UNAUTHORIZED,
            RequestError::TooManyConnections(_) => code::TOO_MANY_CONNECTIONS,
            RequestError::TooManySubscriptions(_) => code::TOO_MANY_SUBSCRIPTIONS,
            RequestError::TooManyTopics(_) => code::TOO_MANY_TOPICS,
            RequestError::RateLimited => code::RATE_LIMITED,
            RequestError::PayloadTooLarge(_) | RequestError::MessageTooLarge { .. } => {
                code::PAYLOAD_TOO_LARGE
            }
            RequestError::BodyTimeout(_) => code::BODY_TIMEOUT,
            RequestError::TopicNotFound(_) | RequestError::NoRoute(_) => code::NOT_FOUND,
            RequestError::MethodNotAllowed => code::METHOD_NOT_ALLOWED,
            RequestError::Unavailable(_) => code::UNAVAILABLE,
            RequestError::IdempotencyConflict(_) => code::IDEMPOTENCY_CONFLICT,
        }
    }

    pub fn forbidden(action: Action, topic: &impl std::fmt::Display) -> RequestError {
        RequestError::Forbidden {
            action,
            topic: topic.to_string(),
        }
    }

    pub fn invalid_topic(topic: &str, reason: TopicError) -> RequestError {
        // Cap the echoed name: the topic came from the client and may be huge.
        let topic: String = topic.chars().take(MAX_TOPIC_BYTES + 1).collect();
        RequestError::InvalidTopic { topic, reason }
    }
}

/// What an ACL refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish,
    /// Who is in a room, and its `join`/`leave` frames: allowed exactly where subscribing is.
    Presence,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Subscribe => "subscribe to",
            Action::Publish => "publish to",
            Action::Presence => "see the presence of",
        })
    }
}

/// Why credentials were refused. The messages are fixed texts: they tell an honest client what
/// to fix without echoing what an attacker sent.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token: pass ?token= on the URL or an Authorization: Bearer header")]
    MissingToken,
    #[error("missing API key: pass an Authorization: Bearer header")]
    MissingKey,
    #[error("unknown API key")]
    UnknownKey,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not accepted")]
    Algorithm,
    #[error("no key matches the token's kid")]
    UnknownKeyId,
    #[error("invalid token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token audience not accepted")]
    Audience,
    #[error("token issuer not accepted")]
    Issuer,
    #[error("token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{0}` is invalid")]
    BadClaim(String),
    #[error("a refreshed token must have the same subject")]
    SubjectChanged,
}
