//! WebSocket connection machinery around a session: running its reader and writer halves
//! together ([`join`]) and closing connections whose writes stall ([`watchdog`]).

pub mod join;
pub mod watchdog;
