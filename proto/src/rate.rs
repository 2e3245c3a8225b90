//! The bounds of a subscription's `max_rate` (updates a second per topic), shared by the server,
//! which refuses a request or a `queue.policies` entry outside them, and by clients, which can
//! check before they send.

/// The lowest `max_rate`: one update every 100 s.
pub const MIN_RATE: f64 = 0.01;

/// The highest `max_rate`: one update a millisecond, the server's pacing resolution.
pub const MAX_RATE: f64 = 1000.0;

/// Whether `rate` is a valid `max_rate`.
pub fn valid(rate: f64) -> bool {
    (MIN_RATE..=MAX_RATE).contains(&rate)
}
