//! The one timer of a connection: heartbeat pings, the idle timeout and the token's expiry.
//! The SSE transport runs it too, without the idle timeout (its client cannot send).
//!
//! Each used to be a timer of its own, plus a watch channel to move the expiry on a token
//! refresh: about 1 KB per connection, idle or not, which is most of what an idle connection
//! costs besides its socket. The three deadlines only ever need the earliest of them armed, so
//! the [`Watchdog`] keeps them as plain numbers and sleeps on a single timer until the next
//! one; the read loop records activity with a relaxed store (a later idle deadline only needs
//! the timer to check again when it fires). A token refresh can move the expiry earlier, so
//! [`Watchdog::expire_at`] wakes the timer, which re-arms when it finds the expiry moved.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use crate::protocol::disconnect::Disconnect;
use crate::protocol::wire;
use crate::pubsub::outbox::Outbox;
use crate::session::Expiry;

/// Longest single sleep: far-future deadlines are slept towards in steps.
const MAX_SLEEP: Duration = Duration::from_secs(86_400);
/// Stands for "no deadline" in [`Watchdog`]'s millisecond fields.
const NEVER: u64 = u64::MAX;
/// Deadlines further away are treated as this far (Instant arithmetic must not overflow).
const MAX_DEADLINE: Duration = Duration::from_secs(100 * 365 * 86_400);

pub struct Watchdog {
    started: Instant,
    /// Milliseconds after `started` at which the client was last heard from.
    last_seen: AtomicU64,
    /// Milliseconds after `started` at which the token expires, or [`NEVER`].
    expires: AtomicU64,
    /// The task in [`Watchdog::run`], woken when `expires` moves.
    rearm: AtomicWaker,
}

impl Watchdog {
    /// A watchdog for a connection whose token expires at `expires` (never when `None`).
    pub fn new(expires: Option<SystemTime>) -> Watchdog {
        let dog = Watchdog {
            started: Instant::now(),
            last_seen: AtomicU64::new(0),
            expires: AtomicU64::new(NEVER),
            rearm: AtomicWaker::new(),
        };
        dog.expire_at(expires);
        dog
    }

    /// Records that the client was heard from just now.
    pub fn seen(&self) {
        self.last_seen
            .store(self.millis(Instant::now()), Ordering::Relaxed);
    }

    /// Moves the token's expiry (later or earlier; `None`: never).
    pub fn expire_at(&self, expires: Option<SystemTime>) {
        let at = expires.map_or(NEVER, |t| {
            let left = t.duration_since(SystemTime::now()).unwrap_or_default();
            self.millis(Instant::now() + left.min(MAX_DEADLINE))
        });
        self.expires.store(at, Ordering::Relaxed);
        self.rearm.wake();
    }

    /// Pings through `outbox` every `interval`, and resolves when the connection must end:
    /// nothing heard from the client for `idle` (`None`: a client that cannot send, an SSE
    /// stream, is never idle), or the token expired.
    pub async fn run(&self, outbox: &Outbox, interval: Duration, idle: Option<Duration>) -> Disconnect {
        let mut next_ping = Instant::now() + interval;
        let mut sleep = pin!(tokio::time::sleep_until(next_ping));
        // The expiry the timer was last armed for (none yet: the first poll arms it).
        let mut armed = None;
        poll_fn(|cx| loop {
            // Registered before the load, so a move in between still wakes us.
            self.rearm.register(cx.waker());
            let expires_ms = self.expires.load(Ordering::Relaxed);
            if armed == Some(expires_ms) && sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            armed = Some(expires_ms);
            let now = Instant::now();
            let expires = self.at(expires_ms);
            if expires.is_some_and(|at| now >= at) {
                return Poll::Ready(Disconnect::TokenExpired);
            }
            let idle_at =
                idle.map(|idle| self.at(self.last_seen.load(Ordering::Relaxed)).expect("set") + idle);
            if idle_at.is_some_and(|at| now >= at) {
                return Poll::Ready(Disconnect::IdleTimeout);
            }
            if now >= next_ping {
                outbox.push_optional(wire::ping());
                // A late tick delays the next one instead of bunching pings up.
                next_ping = now + interval;
            }
            let wake = [Some(next_ping), idle_at, expires, Some(now + MAX_SLEEP)];
            sleep
                .as_mut()
                .reset(wake.into_iter().flatten().min().expect("not empty"));
        })
        .await
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    fn at(&self, millis: u64) -> Option<Instant> {
        (millis != NEVER).then(|| self.started + Duration::from_millis(millis))
    }
}

/// A token refresh moves the expiry through the session.
impl Expiry for Watchdog {
    fn expire_at(&self, expires: Option<SystemTime>) {
        Watchdog::expire_at(self, expires);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    const INTERVAL: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(25);

    /// Runs `dog` (on paused time, beside `also`) until it resolves; returns why, when, and how
    /// many pings it queued.
    async fn outcome(
        dog: &Watchdog,
        outbox: &Outbox,
        also: impl Future<Output = ()>,
    ) -> (Disconnect, Duration, usize) {
        let start = Instant::now();
        let reason = tokio::select! {
            reason = dog.run(outbox, INTERVAL, Some(IDLE)) => reason,
            () = async { also.await; pending().await } => unreachable!(),
        };
        // Nothing but pings is queued here.
        (
            reason,
            start.elapsed(),
            outbox.queued_bytes() / wire::ping().len(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn pings_each_interval_then_times_out_a_silent_client() {
        let (dog, outbox) = (Watchdog::new(None), Outbox::new(1 << 20));
        let (reason, after, pings) = outcome(&dog, &outbox, async {}).await;
        assert_eq!(reason, Disconnect::IdleTimeout);
        assert_eq!(after, IDLE);
        assert_eq!(pings, 2, "at 10 s and 20 s");
    }

    #[tokio::test(start_paused = true)]
    async fn activity_postpones_the_idle_timeout() {
        let (dog, outbox) = (Watchdog::new(None), Outbox::new(1 << 20));
        let client = async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            dog.seen();
        };
        let (reason, after, _) = outcome(&dog, &outbox, client).await;
        assert_eq!(reason, Disconnect::IdleTimeout);
        assert_eq!(after, Duration::from_secs(20) + IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_moves_the_expiry_earlier_or_later() {
        let outbox = Outbox::new(1 << 20);
        let in_secs = |s| Some(SystemTime::now() + Duration::from_secs(s));
        let dog = std::sync::Arc::new(Watchdog::new(in_secs(600)));
        // Another task: only the watchdog's own wake-up can make it notice the move.
        let client = tokio::spawn({
            let dog = dog.clone();
            async move {
                // Keeps the client alive, and after 3 s hands over a token expiring 2 s later.
                tokio::time::sleep(Duration::from_secs(3)).await;
                dog.seen();
                dog.expire_at(in_secs(2));
            }
        });
        let (reason, after, _) = outcome(&dog, &outbox, async {}).await;
        client.await.unwrap();
        assert_eq!(reason, Disconnect::TokenExpired);
        let late = after.abs_diff(Duration::from_secs(5));
        assert!(
            late < Duration::from_millis(5),
            "expired after {after:?}, not at the next ping"
        );

        let dog = Watchdog::new(in_secs(1));
        dog.expire_at(None);
        let (reason, ..) = outcome(&dog, &outbox, async {}).await;
        assert_eq!(reason, Disconnect::IdleTimeout, "a token without expiry lifts it");
    }
}
