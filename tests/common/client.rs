//! The `tickwire-client` crate's side of a test: client options with fast reconnects, and
//! reading its event stream with timeouts (the next event, events up to one, silence).
//!
//! Part of the shared harness; not every test binary uses every helper.

use std::net::SocketAddr;
use std::time::Duration;

use tickwire_client::{Backoff, ClientOptions, Event, Events};

use super::time::{RECV_TIMEOUT, SILENCE};

/// Options for tests: fast reconnects.
pub fn options() -> ClientOptions {
    ClientOptions::default()
        .reconnect(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            factor: 2.0,
            max_attempts: None,
        })
        .request_timeout(Duration::from_secs(5))
}

pub fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// The next event, panicking on timeout or end of stream.
pub async fn next(events: &mut Events) -> Event {
    match tokio::time::timeout(RECV_TIMEOUT, events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event stream ended"),
        Err(_) => panic!("no event within {RECV_TIMEOUT:?}"),
    }
}

/// Reads events up to and including the first one `stop` accepts; returns them all.
pub async fn until(events: &mut Events, what: &str, mut stop: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => {
                let done = stop(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            }
            Ok(None) => panic!("event stream ended while waiting for {what}; saw {seen:?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:?}"),
        }
    }
}

/// Asserts that no event arrives for a while.
pub async fn expect_quiet(events: &mut Events) {
    if let Ok(event) = tokio::time::timeout(SILENCE, events.recv()).await {
        panic!("expected no event, got {event:?}");
    }
}
