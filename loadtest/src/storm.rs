//! A reconnect storm in a subscriber pool: every connection drops at once (client side), then
//! reconnects and subscribes again with `since` (the last position it saw of each topic, as
//! protocol.md §4.5 describes), and counts whether the server recovered or reset it.
//!
//! The pool's connection tasks watch [`Storm`]'s generation: when it changes they close their
//! socket and reconnect (at most `connect_concurrency` at a time, like the first connect); the
//! `subscribed` reply of the new subscribe tells recovered (every topic of `since` recovered)
//! from reset (at least one not).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::sys::now_us;

/// The storm's shared state (part of the pool's shared state).
pub struct Storm {
    generation: watch::Sender<u32>,
    /// Between the drop and the moment every connection is back (or failed).
    pub active: AtomicBool,
    pub dropped_at_us: AtomicU64,
    /// Connections back with every topic of their `since` recovered.
    pub recovered: AtomicUsize,
    /// Connections back with at least one topic reset.
    pub reset: AtomicUsize,
    /// Connections that could not reconnect.
    pub failed: AtomicUsize,
    /// When the last connection was back.
    pub last_back_us: AtomicU64,
    /// Topics named in `since`, over all connections, that recovered or were reset.
    pub topics_recovered: AtomicU64,
    pub topics_reset: AtomicU64,
    /// Updates of the catch-up (`seq` up to the recovering reply's position): what the drop
    /// missed and recovery delivered.
    pub caught_up: AtomicU64,
}

impl Storm {
    pub(crate) fn new() -> Storm {
        Storm {
            generation: watch::Sender::new(0),
            active: AtomicBool::new(false),
            dropped_at_us: AtomicU64::new(0),
            recovered: AtomicUsize::new(0),
            reset: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            last_back_us: AtomicU64::new(0),
            topics_recovered: AtomicU64::new(0),
            topics_reset: AtomicU64::new(0),
            caught_up: AtomicU64::new(0),
        }
    }

    /// What a connection task waits on: resolves when a storm starts.
    pub(crate) fn watch(&self) -> watch::Receiver<u32> {
        self.generation.subscribe()
    }

    /// Drops every connection now; returns the time (µs since the epoch).
    pub(crate) fn start(&self) -> u64 {
        let at = now_us();
        self.dropped_at_us.store(at, Relaxed);
        self.active.store(true, Relaxed);
        self.generation.send_modify(|g| *g += 1);
        at
    }

    /// A connection is back: `recovered` / `reset` topics of its `since`.
    pub(crate) fn back(&self, recovered: u64, reset: u64) {
        self.topics_recovered.fetch_add(recovered, Relaxed);
        self.topics_reset.fetch_add(reset, Relaxed);
        if reset == 0 {
            self.recovered.fetch_add(1, Relaxed);
        } else {
            self.reset.fetch_add(1, Relaxed);
        }
        self.last_back_us.fetch_max(now_us(), Relaxed);
    }

    pub(crate) fn done(&self) -> usize {
        self.recovered.load(Relaxed) + self.reset.load(Relaxed) + self.failed.load(Relaxed)
    }

    /// Waits until `expected` connections are back or failed, or `timeout` passes; ends the
    /// storm (`active`) either way. `tick` is called about every 100 ms.
    pub(crate) fn wait(
        &self,
        expected: usize,
        timeout: Duration,
        mut tick: impl FnMut(&Storm),
    ) -> StormOutcome {
        let every = Duration::from_millis(1);
        let timed_out = crate::sys::poll_until(timeout, every, || self.done() >= expected, || tick(self));
        self.active.store(false, Relaxed);
        let dropped = self.dropped_at_us.load(Relaxed);
        StormOutcome {
            connections: expected,
            recovered: self.recovered.load(Relaxed),
            reset: self.reset.load(Relaxed),
            failed: self.failed.load(Relaxed),
            topics_recovered: self.topics_recovered.load(Relaxed),
            topics_reset: self.topics_reset.load(Relaxed),
            caught_up: self.caught_up.load(Relaxed),
            seconds: self.last_back_us.load(Relaxed).saturating_sub(dropped) as f64 / 1e6,
            timed_out,
        }
    }
}

/// How the storm went.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StormOutcome {
    /// Connections that were dropped.
    pub connections: usize,
    pub recovered: usize,
    pub reset: usize,
    pub failed: usize,
    pub topics_recovered: u64,
    pub topics_reset: u64,
    /// Catch-up updates received so far (recovered messages the drop had missed).
    pub caught_up: u64,
    /// Drop to the last connection back (its `subscribed` reply parsed), seconds.
    pub seconds: f64,
    pub timed_out: bool,
}
