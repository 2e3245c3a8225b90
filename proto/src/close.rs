//! tickwire's own WebSocket close codes (4000–4499), documented in `docs/protocol.md` §2.4.
//! A client should reconnect after any of them, except after fixing its own behaviour
//! ([`RATE_LIMIT`]) or with a fresh token ([`TOKEN_EXPIRED`]). The RFC 6455 codes the server
//! also sends (1001 going away, 1009 too big, ...) are the WebSocket libraries' vocabulary.

/// The connection's token expired and was not refreshed in time.
pub const TOKEN_EXPIRED: u16 = 4003;
/// The client's outbound queue overflowed (a `queue` topic, or replies).
pub const SLOW_CONSUMER: u16 = 4008;
/// A topic created after the client subscribed would have taken the connection past the
/// server's topics-per-connection limit (its patterns match too much): reconnecting with the same
/// subscriptions fails with `too_many_subscriptions`, narrower ones work.
pub const TOO_MANY_TOPICS: u16 = 4009;
/// Nothing arrived from the client for the server's idle timeout.
pub const IDLE_TIMEOUT: u16 = 4012;
/// The client kept sending requests while rate limited: reconnecting would not help.
pub const RATE_LIMIT: u16 = 4029;
