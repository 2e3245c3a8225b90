//! The subscriber connections: opened, subscribed and read by a few receiver threads, each a
//! single-threaded tokio runtime.
//!
//! The receive path is what decides how much of the machine's two cores the client takes from
//! the server, so it is kept lean: per readiness event one `read(2)` into the thread's 256 KiB
//! buffer, frames parsed in place ([`crate::frame`]), messages classified by substring search
//! ([`crate::proto`]), the receive time read once per `read`, counters in `Cell`s, and one
//! atomic add per `read` for the live progress line. With permessage-deflate a compressed
//! message is inflated first, by the thread's one [`crate::deflate::Inflater`], into its reused
//! buffer: from there on it is read like any other.
//!
//! With `sse` each connection is a `GET /sse` stream instead: the same read, then
//! [`crate::sse`]'s parser, whose events' data is read like a WebSocket message.
//!
//! Layout: this file the configuration, the shared state and counters, the [`Watch`] seam and
//! the [`Pool`] handle; `connect` a receiver thread and each connection's life (open, upgrade,
//! subscribe, storms); `recv` the receive path (read, parse, inflate, recognise, count).

mod connect;
mod recv;

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::Rng;
use crate::deflate::Inflater;
use crate::frame::{Reassembler, Wire};
use crate::gaps::SeqTrack;
use crate::opts::Target;
pub use crate::plan::{topic_index, topic_name, SubPlan};
use crate::proto;
use crate::storm::{Storm, StormOutcome};
use crate::sys::now_us;

const READ_BUFFER: usize = 256 << 10;

/// A latency histogram in µs, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// How to open the connections.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub target: Target,
    /// Connection i opens on `spread[i % len]` when not empty (the nodes of a cluster).
    pub spread: Vec<Target>,
    pub connections: usize,
    pub source_ips: Vec<IpAddr>,
    pub threads: usize,
    pub connect_concurrency: usize,
    pub connect_attempts: u32,
    /// `per_conn == 0`: connect only, subscribe to nothing.
    pub plan: SubPlan,
    pub topic_prefix: String,
    /// Keep each topic's position (from `subscribed` replies) so that a [`Pool::storm`] can
    /// reconnect with `since`.
    pub recovery: bool,
    /// Options of every subscribe (`max_rate`, `delta`); a storm's recovering subscribe does not
    /// carry them.
    pub subscribe: proto::SubscribeOptions,
    /// A scenario's own look at each connection's updates and snapshots.
    pub watch: Option<Watcher>,
    /// Offer permessage-deflate in every upgrade (a connection the server does not accept it
    /// on fails) and inflate the compressed messages.
    pub deflate: bool,
    /// Subscribe with `GET /sse?topics=…` instead of a WebSocket ([`crate::sse`]); no storms,
    /// no deflate, no watch.
    pub sse: bool,
}

impl PoolConfig {
    /// The node connection `i` opens on.
    pub fn target_of(&self, i: usize) -> &Target {
        match self.spread.len() {
            0 => &self.target,
            n => &self.spread[i % n],
        }
    }
}

/// What a scenario does with every `update` and `snapshot` a connection receives, beside the
/// pool's own accounting (the bandwidth scenario rebuilds delta frames and checks their data).
/// One per connection, made by its [`Watcher`] once the connection is open, run on the
/// receiver thread, and finished when the pool is.
pub trait Watch {
    /// An update (the whole message, inflated if it came compressed; `wire` says how it came);
    /// returns its send stamp (µs since the epoch), which the pool's own parse cannot find in a
    /// frame that carries a delta instead of `data`.
    fn update(&mut self, message: &[u8], wire: Wire, seq: u64, now_us: u64) -> Option<u64>;
    /// A snapshot (the whole message).
    fn snapshot(&mut self, message: &[u8], seq: u64);
    /// The run is over: hand the results over (the watch holds where they go).
    fn finish(self: Box<Self>);
}

/// Makes the [`Watch`] of connection `i`.
#[derive(Clone)]
pub struct Watcher(pub Arc<dyn Fn(usize) -> Box<dyn Watch> + Send + Sync>);

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

/// State shared between the receiver threads and the coordinating thread.
pub struct Shared {
    /// Measurement window, µs since the epoch: updates sent in `[t0, t1)` are measured.
    pub t0: AtomicU64,
    pub t1: AtomicU64,
    /// When set (non-zero), the receiver threads close everything at this time.
    stop_at: AtomicU64,
    pub connected: AtomicUsize,
    pub subscribed: AtomicUsize,
    pub failed: AtomicUsize,
    pub closed_early: AtomicUsize,
    /// Updates received so far (all threads), for the live progress line and the drain.
    pub updates: AtomicU64,
    pub connect_started_us: AtomicU64,
    /// When the last connection became ready (handshake done and, if subscribing, acknowledged).
    pub last_ready_us: AtomicU64,
    pub errors: Mutex<Vec<String>>,
    pub storm: Storm,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            t0: AtomicU64::new(u64::MAX),
            t1: AtomicU64::new(u64::MAX),
            stop_at: AtomicU64::new(0),
            connected: AtomicUsize::new(0),
            subscribed: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            closed_early: AtomicUsize::new(0),
            updates: AtomicU64::new(0),
            connect_started_us: AtomicU64::new(0),
            last_ready_us: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            storm: Storm::new(),
        }
    }

    fn note_error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 5 {
            errors.push(e);
        }
    }

    pub fn first_errors(&self) -> Vec<String> {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_window(&self, t0: u64, t1: u64) {
        self.t0.store(t0, Relaxed);
        self.t1.store(t1, Relaxed);
    }

    fn window(&self) -> (u64, u64) {
        (self.t0.load(Relaxed), self.t1.load(Relaxed))
    }
}

/// Counters of one receiver thread (and, summed, of the pool).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RecvCounters {
    /// `update` frames received.
    pub updates: u64,
    /// Updates stamped inside the measurement window (their latency is in the histogram).
    pub delivered_in_window: u64,
    pub snapshots: u64,
    /// Updates without a send stamp in `data` (published by someone else).
    pub unstamped: u64,
    /// Updates for topics this connection did not subscribe to.
    pub foreign: u64,
    /// `error` replies from the server.
    pub error_replies: u64,
    /// Text messages that are not tickwire frames.
    pub unparsed: u64,
    /// Messages that came compressed (permessage-deflate), all inflated before being read.
    pub compressed: u64,
    pub pings: u64,
    pub reads: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for RecvCounters {
    fn add_assign(&mut self, o: RecvCounters) {
        self.updates += o.updates;
        self.delivered_in_window += o.delivered_in_window;
        self.snapshots += o.snapshots;
        self.unstamped += o.unstamped;
        self.foreign += o.foreign;
        self.error_replies += o.error_replies;
        self.unparsed += o.unparsed;
        self.compressed += o.compressed;
        self.pings += o.pings;
        self.reads += o.reads;
        self.bytes += o.bytes;
    }
}

#[derive(Default)]
struct Counters {
    updates: Cell<u64>,
    delivered_in_window: Cell<u64>,
    snapshots: Cell<u64>,
    unstamped: Cell<u64>,
    foreign: Cell<u64>,
    error_replies: Cell<u64>,
    unparsed: Cell<u64>,
    compressed: Cell<u64>,
    pings: Cell<u64>,
    reads: Cell<u64>,
    bytes: Cell<u64>,
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl Counters {
    fn snapshot(&self) -> RecvCounters {
        RecvCounters {
            updates: self.updates.get(),
            delivered_in_window: self.delivered_in_window.get(),
            snapshots: self.snapshots.get(),
            unstamped: self.unstamped.get(),
            foreign: self.foreign.get(),
            error_replies: self.error_replies.get(),
            unparsed: self.unparsed.get(),
            compressed: self.compressed.get(),
            pings: self.pings.get(),
            reads: self.reads.get(),
            bytes: self.bytes.get(),
        }
    }
}

/// One connection's protocol state.
struct Conn {
    streams: Streams,
    reasm: Reassembler,
    /// Bytes of an incomplete frame, carried to the next read.
    carry: Vec<u8>,
    /// An SSE stream's parser (`sse`), which keeps what is incomplete itself: `carry` stays
    /// empty.
    sse: Option<Box<crate::sse::Decoder>>,
}

/// What one connection receives and has seen.
struct Streams {
    /// Subscribed topics (by index, sorted) and what arrived on each.
    topics: Vec<(u32, SeqTrack)>,
    /// Per topic (as in `topics`), the `seq` of the last `subscribed` reply's position (with
    /// `recovery`): updates above it are live, and a reconnect recovers from the higher of it
    /// and the last update seen.
    positions: Vec<u64>,
    subscribed: bool,
    wants_subscribed: bool,
    /// Reconnected in a storm, the recovering `subscribed` reply not yet parsed.
    recovering: bool,
    /// Back from the current storm.
    back: bool,
    watch: Option<Box<dyn Watch>>,
}

/// Per receiver thread state (single-threaded runtime: no locks).
struct Thread {
    cfg: Arc<PoolConfig>,
    shared: Arc<Shared>,
    buf: RefCell<Vec<u8>>,
    conns: RefCell<Vec<Conn>>,
    latency: RefCell<Histogram<u64>>,
    handshake: RefCell<Histogram<u64>>,
    counters: Counters,
    rng: RefCell<Rng>,
    /// Control frames owed to the server (pong, close echo), written after each read.
    reply: RefCell<Vec<u8>>,
    /// Inflates every compressed message of the thread's connections (no context takeover:
    /// each message stands alone).
    inflater: RefCell<Inflater>,
    /// Bounds the connections being opened at once (first connect and reconnects).
    opening: Arc<tokio::sync::Semaphore>,
    /// Each topic's epoch, from `subscribed` replies (with `recovery`).
    epochs: RefCell<std::collections::HashMap<u32, Rc<str>>>,
    /// Reconnect handshakes in a storm, µs.
    rehandshake: RefCell<Histogram<u64>>,
    /// Live updates to connections already back while the storm goes on: latency, µs.
    storm_latency: RefCell<Histogram<u64>>,
}

/// What a receiver thread hands back.
pub struct ThreadOut {
    pub latency: Histogram<u64>,
    pub handshake: Histogram<u64>,
    pub rehandshake: Histogram<u64>,
    pub storm_latency: Histogram<u64>,
    pub counters: RecvCounters,
    /// (topic index, what one connection saw of it) for every connected subscriber.
    pub tracks: Vec<(u32, SeqTrack)>,
}

/// Everything the pool measured, all threads together.
pub struct PoolResult {
    pub latency: Histogram<u64>,
    pub handshake: Histogram<u64>,
    /// Reconnect handshakes of a storm.
    pub rehandshake: Histogram<u64>,
    /// Live updates to connections already back while the storm went on.
    pub storm_latency: Histogram<u64>,
    pub counters: RecvCounters,
    pub tracks: Vec<(u32, SeqTrack)>,
    pub connected: usize,
    pub failed: usize,
    pub closed_early: usize,
}

/// A running set of subscriber connections.
pub struct Pool {
    shared: Arc<Shared>,
    handles: Vec<std::thread::JoinHandle<ThreadOut>>,
    pub config: Arc<PoolConfig>,
}

/// How the connect phase went.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ConnectOutcome {
    pub requested: usize,
    pub connected: usize,
    pub ready: usize,
    pub failed: usize,
    /// First connect to last connection ready, seconds.
    pub seconds: f64,
    pub timed_out: bool,
}

impl ConnectOutcome {
    /// The summary line every scenario's report starts its `connect` row with.
    pub fn line(&self) -> String {
        format!(
            "{} ready of {} ({} failed) in {:.2} s",
            self.ready, self.requested, self.failed, self.seconds
        )
    }
}

impl Pool {
    /// Starts the receiver threads; they begin connecting at once.
    pub fn start(cfg: PoolConfig) -> anyhow::Result<Pool> {
        if cfg.sse && (cfg.recovery || cfg.deflate || cfg.watch.is_some()) {
            anyhow::bail!("SSE streams are for fan-out only: no recovery, deflate or watch");
        }
        let threads = cfg.threads.clamp(1, 64).min(cfg.connections.max(1));
        let cfg = Arc::new(cfg);
        let shared = Arc::new(Shared::new());
        shared.connect_started_us.store(now_us(), Relaxed);
        let mut handles = Vec::new();
        for ti in 0..threads {
            let ids: Vec<usize> = (ti..cfg.connections).step_by(threads).collect();
            let (cfg, shared) = (cfg.clone(), shared.clone());
            let per_thread = (cfg.connect_concurrency / threads).max(1);
            let h = std::thread::Builder::new()
                .name(format!("recv{ti}"))
                .spawn(move || connect::recv_thread(ids, per_thread, cfg, shared))?;
            handles.push(h);
        }
        Ok(Pool {
            shared,
            handles,
            config: cfg,
        })
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The shared state, for a thread that outlives this borrow (the lockstep publisher).
    pub fn shared_arc(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Connections that are ready: subscribed (acknowledged) when subscribing, else upgraded.
    pub fn ready(&self) -> usize {
        if self.config.plan.per_conn > 0 {
            self.shared.subscribed.load(Relaxed)
        } else {
            self.shared.connected.load(Relaxed)
        }
    }

    /// Waits until every connection is ready or failed, or `timeout` passes; `tick` is called
    /// about every 100 ms (for progress).
    pub fn wait_ready(&self, timeout: Duration, mut tick: impl FnMut(&Pool)) -> ConnectOutcome {
        let n = self.config.connections;
        let all_in = || self.ready() + self.shared.failed.load(Relaxed) >= n;
        let every = Duration::from_millis(2);
        let timed_out = crate::sys::poll_until(timeout, every, all_in, || tick(self));
        let first = self.shared.connect_started_us.load(Relaxed);
        let last = self.shared.last_ready_us.load(Relaxed).max(first);
        ConnectOutcome {
            requested: n,
            connected: self.shared.connected.load(Relaxed),
            ready: self.ready(),
            failed: self.shared.failed.load(Relaxed),
            seconds: (last - first) as f64 / 1e6,
            timed_out,
        }
    }

    /// Drops every connection at once (client side); each reconnects and subscribes again with
    /// `since` (needs `recovery`). Returns the drop time, µs since the epoch.
    pub fn storm(&self) -> u64 {
        self.shared.storm.start()
    }

    /// Waits until `expected` connections are back from the storm (or failed), at most
    /// `timeout`.
    pub fn wait_back(&self, expected: usize, timeout: Duration, tick: impl FnMut(&Storm)) -> StormOutcome {
        self.shared.storm.wait(expected, timeout, tick)
    }

    /// Closes every connection at `stop_at_us` (µs since the epoch) and collects the results.
    pub fn finish(self, stop_at_us: u64) -> PoolResult {
        self.shared.stop_at.store(stop_at_us.max(1), Relaxed);
        let mut out = PoolResult {
            latency: histogram(),
            handshake: histogram(),
            rehandshake: histogram(),
            storm_latency: histogram(),
            counters: RecvCounters::default(),
            tracks: Vec::new(),
            connected: 0,
            failed: 0,
            closed_early: 0,
        };
        for h in self.handles {
            let t = match h.join() {
                Ok(t) => t,
                Err(_) => continue, // a panicking receiver thread already printed its panic
            };
            out.latency.add(&t.latency).expect("same histogram bounds");
            out.handshake.add(&t.handshake).expect("same histogram bounds");
            out.rehandshake
                .add(&t.rehandshake)
                .expect("same histogram bounds");
            out.storm_latency
                .add(&t.storm_latency)
                .expect("same histogram bounds");
            out.counters += t.counters;
            out.tracks.extend(t.tracks);
        }
        out.connected = self.shared.connected.load(Relaxed);
        out.failed = self.shared.failed.load(Relaxed);
        out.closed_early = self.shared.closed_early.load(Relaxed);
        out
    }
}
