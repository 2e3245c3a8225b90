//! Exactly-once HTTP publishing: the `Idempotency-Key` of `POST /api/v1/publish`, and the
//! ledger that remembers, with `broker.kind = "memory"`, which keys published what.
//!
//! A key is scoped by the API key that sent it (two publishers never collide) and remembered
//! with the SHA-256 of the request body and the seqs the publish got. A repeat with the same
//! body gets those seqs again and publishes nothing; another body is a conflict. In a cluster
//! the broker's publish script does the same in Redis, atomically with the publication
//! (see `crate::cluster::redis`); this ledger is for one node.
//!
//! Bounds: every entry shares one window, so insertion order is expiry order and one
//! `VecDeque` beside the map expires and evicts oldest-first in O(1) per entry. The deque is
//! capped at `http.idempotency_max_keys` records (the map holds a subset of them), and the
//! bytes of the entries (a fixed cost plus 8 per seq) at [`Ledger::max_bytes`], so memory
//! is bounded whatever the publishers send. Only successes are remembered: a publish that
//! failed (or whose request was dropped) forgets its key, so a retry publishes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use ring::digest::{Context, SHA256};
use tokio::sync::watch;

use crate::protocol::error::RequestError;
use crate::sync::lock;

/// Longest `Idempotency-Key` accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// Bytes charged per remembered key besides its seqs: the map slot (key digest, body digest,
/// id, state) at the map's load factor, and the deque record with the deque's growth slack.
/// Measured shape, rounded up: 32 + 32 + 8 + 24 bytes in the map (/ 0.875), 56 in the deque
/// (× 2 at worst after growth), plus the boxed seqs' allocation header.
pub const ENTRY_BYTES: usize = 256;

/// How long a duplicate waits for the request holding its key before it gets 409: a
/// memory-mode publish takes milliseconds even for the largest batch.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(5);

/// One publish's key and body, reduced to digests: what both ledgers compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// SHA-256 of the scope (API key name) and the key, length-prefixed so that no choice of
    /// the two collides with another.
    pub key: [u8; 32],
    /// SHA-256 of the request body.
    pub body: [u8; 32],
}

impl IdempotencyKey {
    pub fn new(scope: &str, key: &str, body: &[u8]) -> IdempotencyKey {
        let mut ctx = Context::new(&SHA256);
        ctx.update(&(scope.len() as u64).to_be_bytes());
        ctx.update(scope.as_bytes());
        ctx.update(key.as_bytes());
        let mut out = IdempotencyKey {
            key: [0; 32],
            body: [0; 32],
        };
        out.key.copy_from_slice(ctx.finish().as_ref());
        out.body
            .copy_from_slice(ring::digest::digest(&SHA256, body).as_ref());
        out
    }

    pub fn key_hex(&self) -> String {
        hex(&self.key)
    }

    pub fn body_hex(&self) -> String {
        hex(&self.body)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an `Idempotency-Key` header value: 1 to 128 visible ASCII characters.
pub fn check_key(value: &[u8]) -> Result<&str, RequestError> {
    if value.is_empty() || value.len() > MAX_KEY_BYTES {
        return Err(RequestError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_BYTES} bytes, got {}",
            value.len()
        )));
    }
    if !value.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(RequestError::BadRequest(
            "Idempotency-Key must be visible ASCII (no spaces or control characters)".into(),
        ));
    }
    Ok(std::str::from_utf8(value).expect("ASCII is UTF-8"))
}

/// The conflict of a key reused with another body.
pub fn other_body() -> RequestError {
    RequestError::IdempotencyConflict("this Idempotency-Key was used with a different request body")
}

/// What a publish with a key found in the ledger.
pub enum Claim<'a> {
    /// The key is new: publish, then [`Reservation::finish`].
    Fresh(Reservation<'a>),
    /// The key already published these seqs.
    Replay(Vec<u64>),
}

enum State {
    /// A request is publishing; the receiver's sender drops when it is done.
    Pending(watch::Receiver<()>),
    Done(Box<[u64]>),
}

struct Entry {
    /// Tells this entry from a later one under the same key, for stale deque records.
    id: u64,
    body: [u8; 32],
    state: State,
}

impl Entry {
    fn bytes(&self) -> usize {
        ENTRY_BYTES
            + match &self.state {
                State::Done(seqs) => seqs.len() * 8,
                State::Pending(_) => 0,
            }
    }
}

#[derive(Default)]
struct Inner {
    map: HashMap<[u8; 32], Entry>,
    /// (expiry, key, id) in insertion order, which is expiry order.
    order: VecDeque<(Instant, [u8; 32], u64)>,
    bytes: usize,
    next_id: u64,
}

impl Inner {
    fn remove_if(&mut self, key: &[u8; 32], id: u64) {
        if self.map.get(key).is_some_and(|e| e.id == id) {
            let entry = self.map.remove(key).expect("just checked");
            self.bytes -= entry.bytes();
        }
    }

    /// Drops expired entries, then the oldest until both bounds hold.
    fn trim(&mut self, now: Instant, max_keys: usize, max_bytes: usize) {
        while let Some(&(expiry, key, id)) = self.order.front() {
            let over = self.order.len() > max_keys || self.bytes > max_bytes;
            if expiry > now && !over {
                break;
            }
            self.order.pop_front();
            self.remove_if(&key, id);
        }
    }
}

/// The memory-mode ledger of recent keys.
pub struct Ledger {
    window: Duration,
    max_keys: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
    keys_gauge: IntGauge,
    bytes_gauge: IntGauge,
}

impl Ledger {
    pub fn new(window: Duration, max_keys: usize, gauges: (IntGauge, IntGauge)) -> Ledger {
        Ledger {
            window,
            max_keys,
            // A full ledger of single publishes plus the same again in batch seqs: the bound a
            // publisher cannot push past by sending big batches.
            max_bytes: max_keys.saturating_mul(ENTRY_BYTES * 2),
            inner: Mutex::default(),
            keys_gauge: gauges.0,
            bytes_gauge: gauges.1,
        }
    }

    /// Most bytes the ledger's entries hold.
    #[cfg(test)]
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    fn publish_gauges(&self, inner: &Inner) {
        self.keys_gauge.set(inner.map.len() as i64);
        self.bytes_gauge.set(inner.bytes as i64);
    }

    /// Looks `key` up: a replay, a conflict, or a reservation for a new key. A duplicate of a
    /// request still publishing waits for it (the std lock is released while it waits).
    pub async fn claim(&self, key: &IdempotencyKey) -> Result<Claim<'_>, RequestError> {
        let deadline = tokio::time::Instant::now() + WAIT_FOR_FIRST;
        loop {
            let mut pending = {
                let mut inner = lock(&self.inner);
                let now = Instant::now();
                inner.trim(now, self.max_keys, self.max_bytes);
                match inner.map.get(&key.key) {
                    Some(e) if e.body != key.body => return Err(other_body()),
                    Some(Entry {
                        state: State::Done(seqs),
                        ..
                    }) => return Ok(Claim::Replay(seqs.to_vec())),
                    Some(Entry {
                        state: State::Pending(rx),
                        ..
                    }) => rx.clone(),
                    None => {
                        let (done, rx) = watch::channel(());
                        let id = inner.next_id;
                        inner.next_id += 1;
                        let entry = Entry {
                            id,
                            body: key.body,
                            state: State::Pending(rx),
                        };
                        inner.bytes += entry.bytes();
                        inner.map.insert(key.key, entry);
                        inner.order.push_back((now + self.window, key.key, id));
                        inner.trim(now, self.max_keys, self.max_bytes);
                        self.publish_gauges(&inner);
                        return Ok(Claim::Fresh(Reservation {
                            ledger: self,
                            key: key.key,
                            id,
                            done: Some(done),
                        }));
                    }
                }
            };
            // Resolves when the first request finishes or gives up (its sender drops); then
            // the entry says which.
            if tokio::time::timeout_at(deadline, pending.changed())
                .await
                .is_err()
            {
                return Err(RequestError::IdempotencyConflict(
                    "a request with this Idempotency-Key is in progress",
                ));
            }
        }
    }
}

/// A key held by the request publishing under it. Dropped without [`Reservation::finish`]
/// (the publish failed, or the request went away), it forgets the key so a retry publishes.
pub struct Reservation<'a> {
    ledger: &'a Ledger,
    key: [u8; 32],
    id: u64,
    done: Option<watch::Sender<()>>,
}

impl Reservation<'_> {
    /// Remembers the seqs the key published; waiting duplicates then get them.
    pub fn finish(mut self, seqs: &[u64]) {
        let ledger = self.ledger;
        let mut inner = lock(&ledger.inner);
        if let Some(entry) = inner.map.get_mut(&self.key).filter(|e| e.id == self.id) {
            entry.state = State::Done(seqs.into());
            inner.bytes += seqs.len() * 8;
        }
        inner.trim(Instant::now(), ledger.max_keys, ledger.max_bytes);
        ledger.publish_gauges(&inner);
        drop(inner);
        // Wakes the waiters, after the entry says Done.
        self.done = None;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.done.is_none() {
            return;
        }
        let mut inner = lock(&self.ledger.inner);
        inner.remove_if(&self.key, self.id);
        self.ledger.publish_gauges(&inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(window: Duration, max_keys: usize) -> Ledger {
        let g = || IntGauge::new("g", "g").unwrap();
        Ledger::new(window, max_keys, (g(), g()))
    }

    fn key(k: &str, body: &str) -> IdempotencyKey {
        IdempotencyKey::new("", k, body.as_bytes())
    }

    #[test]
    fn keys_are_scoped_without_collisions() {
        assert_ne!(
            IdempotencyKey::new("a", "bc", b"").key,
            IdempotencyKey::new("ab", "c", b"").key
        );
        assert_ne!(
            IdempotencyKey::new("a", "k", b"").key,
            IdempotencyKey::new("", "k", b"").key
        );
        assert_eq!(
            IdempotencyKey::new("a", "k", b"x"),
            IdempotencyKey::new("a", "k", b"x")
        );
    }

    #[test]
    fn header_values_are_checked() {
        assert!(check_key(b"abc-123_XYZ:~").is_ok());
        assert!(check_key(&[b'a'; MAX_KEY_BYTES]).is_ok());
        assert!(check_key(&[b'a'; MAX_KEY_BYTES + 1]).is_err());
        assert!(check_key(b"").is_err());
        assert!(check_key(b"a b").is_err());
        assert!(check_key(b"a\tb").is_err());
        assert!(check_key("é".as_bytes()).is_err());
    }

    #[tokio::test]
    async fn replays_conflicts_and_failures() {
        let l = ledger(Duration::from_secs(60), 10);
        let Claim::Fresh(r) = l.claim(&key("k", "a")).await.unwrap() else {
            panic!("fresh")
        };
        r.finish(&[1, 2]);
        assert!(matches!(l.claim(&key("k", "a")).await.unwrap(), Claim::Replay(s) if s == [1, 2]));
        assert!(l.claim(&key("k", "b")).await.is_err());
        // A failed publish forgets its key.
        let Claim::Fresh(r) = l.claim(&key("j", "a")).await.unwrap() else {
            panic!("fresh")
        };
        drop(r);
        assert!(matches!(l.claim(&key("j", "a")).await.unwrap(), Claim::Fresh(_)));
    }

    #[tokio::test]
    async fn bounded_by_keys_and_bytes() {
        let l = ledger(Duration::from_secs(60), 100);
        for i in 0..1000 {
            let Claim::Fresh(r) = l.claim(&key(&i.to_string(), "a")).await.unwrap() else {
                panic!()
            };
            // Big replies: the byte bound evicts before the key bound.
            r.finish(&[7; 64]);
            let inner = lock(&l.inner);
            assert!(inner.order.len() <= 100 && inner.bytes <= l.max_bytes());
        }
        assert!(matches!(
            l.claim(&key("999", "a")).await.unwrap(),
            Claim::Replay(_)
        ));
        assert!(matches!(l.claim(&key("0", "a")).await.unwrap(), Claim::Fresh(_)));
    }
}
