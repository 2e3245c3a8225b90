//! A receiver thread's life: its runtime, and each of its connections opened, upgraded and
//! subscribed (retrying), read until the run ends ([`super::recv`]), and in a storm dropped and
//! brought back with `since`.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;

use super::recv::read_loop;
use super::*;
use crate::client::{self, Rng};
use crate::deflate::Inflater;
use crate::frame::{self, Reassembler};
use crate::gaps::SeqTrack;
use crate::proto;
use crate::sse;
use crate::sys::now_us;

/// One receiver thread: opens connections `ids` (at most `concurrency` at once), reads them on
/// its current-thread runtime until the pool's stop time, and hands back what it measured.
pub(super) fn recv_thread(
    ids: Vec<usize>,
    concurrency: usize,
    cfg: Arc<PoolConfig>,
    shared: Arc<Shared>,
) -> ThreadOut {
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

/// A connection open and ready to read: the stream, what came after the response head, the
/// handshake's duration and, for an SSE stream, its parser.
type Opened = (
    tokio::net::TcpStream,
    Vec<u8>,
    Duration,
    Option<Box<sse::Decoder>>,
);

/// Opens and upgrades connection `i` and writes `request` (a subscribe, if any), retrying up
/// to `connect_attempts` times; the handshake's duration with the stream. With `sse`, `request`
/// is the `GET /sse` request and the handshake lasts until its response head (the server answers
/// once the subscription is in place).
async fn open(i: usize, th: &Thread, request: &[u8]) -> Option<Opened> {
    let cfg = &th.cfg;
    let src = (!cfg.source_ips.is_empty()).then(|| cfg.source_ips[i % cfg.source_ips.len()]);
    let mut attempt = 0;
    loop {
        let started = Instant::now();
        let r = async {
            let target = cfg.target_of(i);
            let mut s = client::open(target.addr, src).await?;
            if cfg.sse {
                let (decoder, leftover) = sse::open(&mut s, request).await?;
                return io::Result::Ok((s, leftover, started.elapsed(), Some(Box::new(decoder))));
            }
            let mut rng = Rng::new(now_us() ^ ((i as u64) << 24));
            let (host, path) = (&target.host, &target.path);
            let leftover = client::handshake(&mut s, host, path, &mut rng, cfg.deflate).await?;
            let took = started.elapsed();
            if !request.is_empty() {
                let mut f = Vec::new();
                frame::encode_masked(frame::OP_TEXT, request, rng.mask(), &mut f);
                s.write_all(&f).await?;
            }
            io::Result::Ok((s, leftover, took, None))
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
    let request = if cfg.sse {
        sse::request(&cfg.target_of(i).host, &names)
    } else if names.is_empty() {
        Vec::new()
    } else {
        proto::subscribe_request(&names, &cfg.subscribe)
    };
    let mut storms = th.shared.storm.watch();
    let Some((stream, leftover, took, sse)) = open(i, &th, &request).await else {
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
            sse,
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
        let Some((stream, leftover, took, _)) = open(i, &th, &request).await else {
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
