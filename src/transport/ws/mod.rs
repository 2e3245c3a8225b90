//! The WebSocket transport: one connection from upgrade to close ([`connection`]: frame reading,
//! reassembly, ping/pong, the close handshake, the `/echo` endpoint), its write half
//! ([`writer`]: vectored writes, stalled sockets, the last write), its reader and writer run
//! together in one task ([`join`]), and its one timer: heartbeat pings, idle timeout, token
//! expiry ([`watchdog`], which the SSE transport shares). The requests themselves are the session's (`crate::session`).

mod connection;
mod join;
mod watchdog;
mod writer;

pub use self::connection::{run, Endpoint, Link};
/// Shared with the SSE transport, which has the same pings and token expiry.
pub(in crate::transport) use self::watchdog::Watchdog;
