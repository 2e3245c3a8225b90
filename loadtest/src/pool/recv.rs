//! The receive path: one `read(2)` per readiness event into the thread's buffer, every complete
//! frame parsed in place, compressed messages inflated, each message recognised and counted;
//! on an SSE stream, each event's data in place of a message.

use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::unix::AsyncFd;

use super::*;
use crate::frame::{self, Event, Wire};
use crate::proto::{self, ServerMsg};
use crate::sse;
use crate::sys::now_us;

/// Reads until the connection closes (an `Err`) or the task is dropped at the end of the run.
pub(super) async fn read_loop(fd: &AsyncFd<std::net::TcpStream>, idx: usize, th: &Thread) -> Result<(), ()> {
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
    if let Some(decoder) = conn.sse.as_deref_mut() {
        return process_sse(th, &mut conn.streams, decoder, data, now).map(|()| data.len());
    }
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

/// [`process`] for an SSE stream: every complete event's data read as a WebSocket message;
/// `Err` once the stream ends (its `close` event, its last chunk) or breaks the grammar.
fn process_sse(
    th: &Thread,
    streams: &mut Streams,
    decoder: &mut sse::Decoder,
    data: &[u8],
    now: u64,
) -> Result<(), ()> {
    let window = th.shared.window();
    let before = th.counters.updates.get();
    let mut closing = false;
    let result = decoder.feed(data, |event| match event {
        _ if closing => {}
        sse::Event::Message { name: b"close", data } => {
            closing = true;
            th.shared.note_error(format!(
                "stream closed by the server: {}",
                String::from_utf8_lossy(data)
            ));
        }
        sse::Event::Message { data, .. } => {
            on_message(th, streams, data, Wire::of(data.len(), false), now, window)
        }
        sse::Event::Comment => bump(&th.counters.pings, 1),
    });
    let received = th.counters.updates.get() - before;
    if received > 0 {
        th.shared.updates.fetch_add(received, Relaxed);
    }
    match result {
        Ok(()) if closing => Err(()),
        Ok(()) => Ok(()),
        Err(sse::SseError::Ended) => Err(()),
        Err(e) => {
            th.shared
                .note_error(format!("from the server's event stream: {e}"));
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
