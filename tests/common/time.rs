//! Clocks and waiting: the timeouts every helper shares, wall-clock time as the server writes
//! it (`ts` in ms, JWT `exp` in s), and [`eventually`] for "poll until it holds" loops.
//!
//! Part of the shared harness; not every test binary uses every helper (hence `allow(dead_code)`
//! on the module declarations in `mod.rs`).

use std::future::Future;
use std::time::Duration;

/// How long any single expected message may take to arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long we listen to conclude that "nothing arrives".
pub const SILENCE: Duration = Duration::from_millis(300);

/// Unix time in milliseconds, the unit of `ts` fields.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Unix time in seconds, the unit of JWT `exp` claims.
pub fn unix_now() -> u64 {
    now_ms() / 1000
}

/// Polls `check` every 50 ms until it holds; panics naming `what` when `within` passes first.
/// For state that settles a moment after the action that causes it (readiness, eviction, file
/// reloads): polled rather than slept for.
#[track_caller]
pub fn eventually<'a, F, Fut>(what: &'a str, within: Duration, mut check: F) -> impl Future<Output = ()> + 'a
where
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = bool> + 'a,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + within;
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{caller}: {what}: not within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
