//! The `code` of an error: the stable strings clients match on, in the WebSocket
//! `{"type":"error","code",...}` reply and the HTTP `{"error":{"code",...}}` body. Their meaning
//! is documented in `docs/protocol.md` §6 and the HTTP API's sections; the server's
//! `RequestError::code` maps each of its errors to one of these.

/// The request is malformed (not JSON, not an object, a field missing or of the wrong type).
pub const BAD_REQUEST: &str = "bad_request";
/// `op` names no operation.
pub const UNKNOWN_OP: &str = "unknown_op";
/// A topic or pattern breaks the syntax, or a publish names a pattern.
pub const INVALID_TOPIC: &str = "invalid_topic";
/// The ACL (or the origin check) refuses it.
pub const FORBIDDEN: &str = "forbidden";
/// Missing or invalid credentials.
pub const UNAUTHORIZED: &str = "unauthorized";
/// Too many WebSocket connections from the client's address.
pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
/// Over the connection's subscription limit.
pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
/// The server holds as many topics as it may: no new topic until idle ones are dropped.
pub const TOO_MANY_TOPICS: &str = "too_many_topics";
/// The request rate limit is exhausted; the request was not carried out. Transient.
pub const RATE_LIMITED: &str = "rate_limited";
/// A body or a message over its size limit.
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
/// The request body did not arrive in time.
pub const BODY_TIMEOUT: &str = "body_timeout";
/// No such topic or route.
pub const NOT_FOUND: &str = "not_found";
/// The route exists, not with this method.
pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
/// The server cannot do it now (a cluster node without Redis, a full server); the same
/// request may succeed later. Transient.
pub const UNAVAILABLE: &str = "unavailable";
/// An `Idempotency-Key` reused for a different request.
pub const IDEMPOTENCY_CONFLICT: &str = "idempotency_conflict";
