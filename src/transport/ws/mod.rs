//! WebSocket connection machinery around a session: running its reader and writer halves
//! together ([`join`]) and its one timer: heartbeat pings, idle timeout, token expiry ([`watchdog`]).

pub mod join;
pub mod watchdog;
