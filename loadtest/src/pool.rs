//! The subscriber connections: opened, subscribed and read by a few receiver threads, each a
//! single-threaded tokio runtime.
//!
//! The receive path is what decides how much of the machine's two cores the client takes from
//! the server, so it is kept lean: per readiness event one `read(2)` into the thread's 256 KiB
//! buffer, frames parsed in place ([`crate::frame`]), messages classified by substring search
//! ([`crate::proto`]), the receive time read once per `read`, counters in `Cell`s, and one
//! atomic add per `read` for the live progress line. With permessage-deflate a compressed
//! message is inflated first, by the thread's one [`Inflater`], into its reused buffer: from
//! there on it is read like any other.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;

use crate::client::{self, Rng};
use crate::deflate::Inflater;
use crate::frame::{self, Event, Reassembler, Wire};
use crate::gaps::SeqTrack;
use crate::opts::Target;
pub use crate::plan::{topic_index, topic_name, SubPlan};
use crate::proto::{self, ServerMsg};
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

impl Pool {
    /// Starts the receiver threads; they begin connecting at once.
    pub fn start(cfg: PoolConfig) -> anyhow::Result<Pool> {
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
                .spawn(move || recv_thread(ids, per_thread, cfg, shared))?;
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

fn recv_thread(ids: Vec<usize>, concurrency: usize, cfg: Arc<PoolConfig>, shared: Arc<Shared>) -> ThreadOut {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a current-thread runtime");
    let local = tokio::task::LocalSet::new();
    let th = Rc::new(Thread {
        cfg: cfg.clone(),
        shared: shared.clone(),
        buf: RefCell::new(vec![0u8; READ_BUFFER]),
        conns: RefCell::new(Vec::with_capacity(ids.len())),
        latency: RefCell::new(histogram()),
        handshake: RefCell::new(histogram()),
        counters: Counters::default(),
        rng: RefCell::new(Rng::new(
            now_us() ^ (ids.first().copied().unwrap_or(0) as u64) << 32,
        )),
        reply: RefCell::new(Vec::new()),
        inflater: RefCell::new(Inflater::default()),
        opening: Arc::new(tokio::sync::Semaphore::new(concurrency)),
        epochs: RefCell::new(std::collections::HashMap::new()),
        rehandshake: RefCell::new(histogram()),
        storm_latency: RefCell::new(histogram()),
    });
    local.block_on(&rt, async {
        let spawner = {
            let th = th.clone();
            async move {
                for i in ids {
                    let Ok(permit) = th.opening.clone().acquire_owned().await else {
                        return;
                    };
                    tokio::task::spawn_local(connection(i, th.clone(), permit));
                }
            }
        };
        tokio::task::spawn_local(spawner);
        loop {
            let stop = shared.stop_at.load(Relaxed);
            if stop != 0 && now_us() >= stop {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    {
        // Dropping the tasks closes the sockets; deregistering them needs the runtime.
        let _guard = rt.enter();
        drop(local);
    }
    let th = Rc::try_unwrap(th).unwrap_or_else(|_| panic!("connection tasks outlived their runtime"));
    let conns = th.conns.into_inner();
    ThreadOut {
        latency: th.latency.into_inner(),
        handshake: th.handshake.into_inner(),
        rehandshake: th.rehandshake.into_inner(),
        storm_latency: th.storm_latency.into_inner(),
        counters: th.counters.snapshot(),
        tracks: (conns.into_iter())
            .flat_map(|mut c| {
                if let Some(w) = c.streams.watch.take() {
                    w.finish();
                }
                c.streams.topics
            })
            .collect(),
    }
}

/// Opens and upgrades connection `i` and writes `request` (a subscribe, if any), retrying up
/// to `connect_attempts` times; the handshake's duration with the stream.
async fn open(i: usize, th: &Thread, request: &[u8]) -> Option<(tokio::net::TcpStream, Vec<u8>, Duration)> {
    let cfg = &th.cfg;
    let src = (!cfg.source_ips.is_empty()).then(|| cfg.source_ips[i % cfg.source_ips.len()]);
    let mut attempt = 0;
    loop {
        let started = Instant::now();
        let r = async {
            let mut s = client::open(cfg.target.addr, src).await?;
            let mut rng = Rng::new(now_us() ^ ((i as u64) << 24));
            let (host, path) = (&cfg.target.host, &cfg.target.path);
            let leftover = client::handshake(&mut s, host, path, &mut rng, cfg.deflate).await?;
            let took = started.elapsed();
            if !request.is_empty() {
                let mut f = Vec::new();
                frame::encode_masked(frame::OP_TEXT, request, rng.mask(), &mut f);
                s.write_all(&f).await?;
            }
            io::Result::Ok((s, leftover, took))
        }
        .await;
        match r {
            Ok(ok) => return Some(ok),
            Err(e) => {
                attempt += 1;
                if attempt >= cfg.connect_attempts.max(1) {
                    th.shared.note_error(format!("connection {i} from {src:?}: {e}"));
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
        }
    }
}

fn register(stream: tokio::net::TcpStream) -> io::Result<AsyncFd<std::net::TcpStream>> {
    stream.into_std().and_then(|s| {
        // SAFETY: the AsyncFd owns the std stream, so the descriptor stays open and the same
        // for as long as it is registered.
        unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) }.map_err(io::Error::from)
    })
}

/// Opens, upgrades and subscribes connection `i`, then reads it until the run ends; in a storm
/// it drops the connection, reconnects and subscribes again with `since`.
async fn connection(i: usize, th: Rc<Thread>, permit: tokio::sync::OwnedSemaphorePermit) {
    let cfg = &th.cfg;
    let names = cfg.plan.request_of(i, &cfg.topic_prefix);
    let request = if names.is_empty() {
        Vec::new()
    } else {
        proto::subscribe_request(&names, &cfg.subscribe)
    };
    let mut storms = th.shared.storm.watch();
    let Some((stream, leftover, took)) = open(i, &th, &request).await else {
        th.shared.failed.fetch_add(1, Relaxed);
        return;
    };
    drop(permit);
    th.handshake
        .borrow_mut()
        .saturating_record(took.as_micros() as u64);
    th.shared.connected.fetch_add(1, Relaxed);
    if names.is_empty() {
        th.shared.last_ready_us.fetch_max(now_us(), Relaxed);
    }
    let mut fd = match register(stream) {
        Ok(fd) => fd,
        Err(e) => {
            th.shared
                .note_error(format!("connection {i}: registering the socket: {e}"));
            th.shared.closed_early.fetch_add(1, Relaxed);
            return;
        }
    };
    let topics = cfg.plan.streams_of(i);
    let idx = {
        let mut conns = th.conns.borrow_mut();
        conns.push(Conn {
            streams: Streams {
                positions: vec![0; topics.len()],
                topics: topics.into_iter().map(|t| (t, SeqTrack::default())).collect(),
                subscribed: false,
                wants_subscribed: !names.is_empty(),
                recovering: false,
                back: false,
                watch: cfg.watch.as_ref().map(|w| (w.0)(i)),
            },
            reasm: Reassembler::new(cfg.deflate),
            carry: leftover,
        });
        conns.len() - 1
    };
    loop {
        let storm = async {
            if storms.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = read_loop(&fd, idx, &th) => {
                if r.is_err() {
                    th.shared.closed_early.fetch_add(1, Relaxed);
                }
                return;
            }
            () = storm => {}
        }
        // The storm: drop the connection (closing the socket), come back with `since`.
        drop(fd);
        let request = {
            let mut conns = th.conns.borrow_mut();
            let conn = &mut conns[idx];
            conn.reasm = Reassembler::new(cfg.deflate);
            conn.carry.clear();
            conn.streams.recovering = true;
            conn.streams.back = false;
            since_request(&th, &names, &conn.streams)
        };
        let Ok(permit) = th.opening.clone().acquire_owned().await else {
            return;
        };
        let Some((stream, leftover, took)) = open(i, &th, &request).await else {
            th.shared.storm.failed.fetch_add(1, Relaxed);
            return;
        };
        drop(permit);
        th.rehandshake
            .borrow_mut()
            .saturating_record(took.as_micros() as u64);
        fd = match register(stream) {
            Ok(fd) => fd,
            Err(e) => {
                th.shared
                    .note_error(format!("connection {i}: registering the socket: {e}"));
                th.shared.storm.failed.fetch_add(1, Relaxed);
                return;
            }
        };
        th.conns.borrow_mut()[idx].carry = leftover;
    }
}

/// The subscribe that recovers a connection: its subscriptions again, with `since` = for each
/// topic whose epoch is known the last `seq` seen (update or position).
fn since_request(th: &Thread, names: &[String], streams: &Streams) -> Vec<u8> {
    let epochs = th.epochs.borrow();
    let since: Vec<(String, u64, &str)> = (streams.topics.iter().zip(&streams.positions))
        .filter_map(|((t, track), &pos)| {
            let epoch = epochs.get(t)?;
            let seq = track.last().map_or(pos, |l| l.max(pos));
            Some((th.cfg.plan.name(&th.cfg.topic_prefix, *t), seq, &**epoch))
        })
        .collect();
    proto::subscribe_since_request(names, &since)
}

/// Reads until the connection closes (an `Err`) or the task is dropped at the end of the run.
async fn read_loop(fd: &AsyncFd<std::net::TcpStream>, idx: usize, th: &Thread) -> Result<(), ()> {
    // Frames that arrived with the upgrade response.
    if !th.conns.borrow()[idx].carry.is_empty() {
        let mut conns = th.conns.borrow_mut();
        let conn = &mut conns[idx];
        let data = std::mem::take(&mut conn.carry);
        let used = process(th, conn, &data, now_us())?;
        conn.carry = data[used..].to_vec();
        drop(conns);
        flush_reply(fd, th)?;
    }
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return Err(());
        };
        {
            let mut buf = th.buf.borrow_mut();
            let mut conns = th.conns.borrow_mut();
            let conn = &mut conns[idx];
            let cap = buf.len();
            let k = conn.carry.len();
            let result = if k <= cap / 2 {
                // Read after room for the carried partial frame, then put it in front.
                match guard.get_inner().read(&mut buf[k..]) {
                    Ok(0) => return Err(()),
                    Ok(n) => {
                        if k + n < cap {
                            guard.clear_ready(); // short read: the socket is drained
                        }
                        buf[..k].copy_from_slice(&conn.carry);
                        conn.carry.clear();
                        let now = now_us();
                        let used = process(th, conn, &buf[..k + n], now)?;
                        conn.carry.extend_from_slice(&buf[used..k + n]);
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            } else {
                // A frame larger than half the buffer: collect it in the connection's carry.
                match guard.get_inner().read(&mut buf[..]) {
                    Ok(0) => return Err(()),
                    Ok(n) => {
                        if n < cap {
                            guard.clear_ready();
                        }
                        conn.carry.extend_from_slice(&buf[..n]);
                        let data = std::mem::take(&mut conn.carry);
                        let used = process(th, conn, &data, now_us())?;
                        conn.carry = data;
                        conn.carry.drain(..used);
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(n) => {
                    bump(&th.counters.reads, 1);
                    bump(&th.counters.bytes, n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(()),
            }
            if conn.carry.capacity() > 1 << 20 && conn.carry.len() < 1 << 16 {
                conn.carry.shrink_to(1 << 16);
            }
        }
        flush_reply(fd, th)?;
    }
}

/// Writes owed control frames; `Err` once the connection is closed.
fn flush_reply(fd: &AsyncFd<std::net::TcpStream>, th: &Thread) -> Result<(), ()> {
    let mut reply = th.reply.borrow_mut();
    if !reply.is_empty() {
        // Control replies are tiny; a full send buffer only delays a pong the server can miss.
        let _ = fd.get_ref().write(&reply);
        reply.clear();
    }
    Ok(())
}

/// Parses every complete frame in `data`; returns the bytes consumed, or `Err` when the server
/// closed the connection or broke the protocol.
fn process(th: &Thread, conn: &mut Conn, data: &[u8], now: u64) -> Result<usize, ()> {
    let window = th.shared.window();
    let before = th.counters.updates.get();
    let mut closing = false;
    let mut broken = None;
    let Conn { streams, reasm, .. } = conn;
    // The server never fragments: a message's frame is its payload as it came and a header.
    let result = reasm.feed(data, |event| match event {
        _ if broken.is_some() => {}
        Event::Text(p) => on_message(th, streams, p, Wire::of(p.len(), false), now, window),
        Event::Binary(_) => bump(&th.counters.unparsed, 1),
        Event::Compressed { binary, payload } => {
            bump(&th.counters.compressed, 1);
            let mut inflater = th.inflater.borrow_mut();
            match inflater.inflate(payload, frame::MAX_MESSAGE) {
                Ok(_) if binary => bump(&th.counters.unparsed, 1),
                Ok(p) => on_message(th, streams, p, Wire::of(payload.len(), true), now, window),
                Err(e) => broken = Some(e),
            }
        }
        Event::Ping(p) => {
            bump(&th.counters.pings, 1);
            let mask = th.rng.borrow_mut().mask();
            frame::encode_masked(frame::OP_PONG, p, mask, &mut th.reply.borrow_mut());
        }
        Event::Pong => {}
        Event::Close(code) => {
            let mask = th.rng.borrow_mut().mask();
            let payload = code.map(u16::to_be_bytes);
            let payload: &[u8] = payload.as_ref().map_or(&[], |c| c);
            frame::encode_masked(frame::OP_CLOSE, payload, mask, &mut th.reply.borrow_mut());
            closing = true;
        }
    });
    let received = th.counters.updates.get() - before;
    if received > 0 {
        th.shared.updates.fetch_add(received, Relaxed);
    }
    if let Some(e) = broken {
        th.shared.note_error(format!("from the server: {e}"));
        return Err(());
    }
    match result {
        Ok(_) if closing => Err(()),
        Ok(used) => Ok(used),
        Err(e) => {
            th.shared
                .note_error(format!("protocol error from the server: {e}"));
            Err(())
        }
    }
}

#[inline]
fn on_message(th: &Thread, streams: &mut Streams, p: &[u8], wire: Wire, now: u64, (t0, t1): (u64, u64)) {
    let c = &th.counters;
    match proto::classify(p) {
        ServerMsg::Update { topic, seq, sent_us } => {
            bump(&c.updates, 1);
            let sent_us = match streams.watch.as_mut() {
                Some(w) => w.update(p, wire, seq, now),
                None => sent_us,
            };
            let at = (th.cfg.plan)
                .index_of(topic, th.cfg.topic_prefix.as_bytes())
                .and_then(|t| streams.topics.binary_search_by_key(&t, |(x, _)| *x).ok());
            match at {
                Some(i) => streams.topics[i].1.on_update(seq),
                None => bump(&c.foreign, 1),
            }
            match sent_us {
                Some(t) if t >= t0 && t < t1 => {
                    bump(&c.delivered_in_window, 1);
                    th.latency
                        .borrow_mut()
                        .saturating_record(now.saturating_sub(t).max(1));
                }
                Some(_) => {}
                None => bump(&c.unstamped, 1),
            }
            // A live update (not the catch-up) to a connection back from a storm still going on.
            if let (Some(i), Some(t), true) = (at, sent_us, streams.back) {
                if seq <= streams.positions[i] {
                    th.shared.storm.caught_up.fetch_add(1, Relaxed);
                } else if th.shared.storm.active.load(Relaxed) {
                    th.storm_latency
                        .borrow_mut()
                        .saturating_record(now.saturating_sub(t).max(1));
                }
            }
        }
        ServerMsg::Snapshot { seq, .. } => {
            bump(&c.snapshots, 1);
            if let Some(w) = streams.watch.as_mut() {
                w.snapshot(p, seq);
            }
        }
        ServerMsg::Subscribed(reply) => {
            if th.cfg.recovery {
                on_subscribed(th, streams, reply);
            }
            if streams.wants_subscribed && !streams.subscribed {
                streams.subscribed = true;
                th.shared.subscribed.fetch_add(1, Relaxed);
                th.shared.last_ready_us.fetch_max(now_us(), Relaxed);
            }
        }
        ServerMsg::Error(text) => {
            if c.error_replies.get() == 0 {
                th.shared
                    .note_error(format!("server error reply: {}", String::from_utf8_lossy(text)));
            }
            bump(&c.error_replies, 1);
        }
        ServerMsg::Other => {}
        ServerMsg::Unparsed => bump(&c.unparsed, 1),
    }
}

/// Keeps the positions and epochs of a `subscribed` reply; after a storm's reconnect, counts
/// the connection back, recovered or reset.
#[cold]
fn on_subscribed(th: &Thread, streams: &mut Streams, reply: &[u8]) {
    let parsed = match proto::parse_subscribed(reply) {
        Ok(p) => p,
        Err(e) => {
            th.shared.note_error(format!("unreadable subscribed reply: {e}"));
            proto::Subscribed::default()
        }
    };
    let prefix = th.cfg.topic_prefix.as_bytes();
    let mut epochs = th.epochs.borrow_mut();
    for (name, pos) in &parsed.positions {
        let Some(t) = th.cfg.plan.index_of(name.as_bytes(), prefix) else {
            continue;
        };
        if let Ok(i) = streams.topics.binary_search_by_key(&t, |(x, _)| *x) {
            streams.positions[i] = pos.seq;
        }
        if epochs.get(&t).is_none_or(|e| **e != *pos.epoch) {
            epochs.insert(t, Rc::from(pos.epoch.as_str()));
        }
    }
    if streams.recovering {
        streams.recovering = false;
        streams.back = true;
        let recovered = parsed.recovered.values().filter(|&&r| r).count() as u64;
        let reset = parsed.recovered.len() as u64 - recovered;
        th.shared.storm.back(recovered, reset);
    }
}
