//! One WebSocket connection, from upgrade to close.
//!
//! Reading and writing run side by side in the connection's task: the reader parses requests
//! and hands them to the hub; the writer drains the connection's [`Outbox`] and writes every
//! waiting frame in one vectored write, straight from the frames' shared bytes (no copy per
//! connection). Neither waits on the other, so a client flooding requests does not stall its
//! deliveries, and [`join`] polls only the side whose waker fired.
//! Beside the reader, the same task runs the connection's [`Watchdog`] (pings, idle timeout,
//! the token's expiry) and watches the drain signal; all of them end the connection the same
//! way, by closing the outbox.
//!
//! Every request is checked against the connection's ACL here, before it reaches the hub: a
//! subscription the ACL does not cover is refused whole, and a token refresh that narrows the
//! ACL drops the subscriptions it no longer covers before its reply is queued.
//!
//! Frames are read by [`FrameReader`] (a small read buffer per connection; see [`wire`] for
//! why not fastwebsockets' reader), which enforces the frame layer's rules. Pings, closes and
//! fragmented messages are handled here: `server.max_message_bytes` bounds the reassembled
//! message, and text must be UTF-8, checked as fragments arrive.
//!
//! The reading is the same for every [`Endpoint`]: only the handler of complete messages
//! differs, so the echo endpoint the conformance suite tests is the machinery `/ws` runs on.

use std::collections::HashSet;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{CloseCode, Frame, OpCode, Payload};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf};
use tracing::debug;

use crate::app::{App, ConnectionSlot};
use crate::auth::acl::Identity;
use crate::metrics::{Metrics, Source};
use crate::protocol::disconnect::Disconnect;
use crate::protocol::error::{Action, RequestError};
use crate::protocol::wire::{self, FrameReader};
use crate::protocol::{parse_request, Reply, Request};
use crate::pubsub::hub::Subscriber;
use crate::pubsub::outbox::{Next, Outbox};
use crate::topic::Pattern;
use crate::transport::proxy::ClientAddr;
use crate::transport::ws::join::join;
use crate::transport::ws::watchdog::Watchdog;

/// How long a closing connection may take to finish its last write.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long to keep reading after our close frame, so the kernel does not reset the
/// connection (and discard what the client has not read yet) while the client answers.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// A client refused this many bursts' worth of requests in a row is closed with 4029.
const ABUSE_FACTOR: u32 = 10;
/// The writer's frame list, grown past this many entries by a burst, is released instead of kept.
const KEEP_FRAMES: usize = 1024;

type Stream = TokioIo<Upgraded>;
type Reader = FrameReader<ReadHalf<Stream>>;

/// What a connection does with the messages its client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws`: JSON requests (subscribe, publish, ...), served through the hub.
    Requests,
    /// `/echo` (`server.echo_endpoint`): every message sent back as it came, so that a
    /// conformance suite can exercise the same reading, limits and close handling as `/ws`.
    Echo,
}

/// Runs a connection after the HTTP upgrade until it closes.
///
/// An `async` block rather than an `async fn`: the latter keeps a second copy of every
/// argument in the future, for the life of the connection.
#[allow(clippy::manual_async_fn)]
pub fn run(
    upgrade: UpgradeFut,
    app: Arc<App>,
    slot: ConnectionSlot,
    addr: ClientAddr,
    identity: Identity,
    endpoint: Endpoint,
) -> impl Future<Output = ()> + Send {
    async move {
        let ws = match upgrade.await {
            Ok(ws) => ws,
            Err(e) => {
                debug!(addr = %addr, proxy = addr.proxy.map(tracing::field::display), error = %e, "websocket upgrade failed");
                return;
            }
        };
        let settings = &app.settings;
        let (read, write) = tokio::io::split(ws.into_inner());
        let mut reader = FrameReader::new(read, settings.server.max_message_bytes);

        let outbox = Arc::new(Outbox::new(settings.queue.max_bytes));
        let who = app.node.hub().new_subscriber(outbox.clone());
        let subject = identity.subject.as_deref().unwrap_or("-");
        debug!(addr = %addr, proxy = addr.proxy.map(tracing::field::display), client = who.id, subject, ?endpoint, "connection opened");
        let connection = Connection {
            app: &app,
            outbox: &outbox,
            watchdog: Watchdog::new(identity.expires),
        };
        let serve = async {
            match endpoint {
                Endpoint::Requests => {
                    let mut session = Session {
                        app: &app,
                        who: &who,
                        identity,
                        watchdog: &connection.watchdog,
                        subscriptions: HashSet::new(),
                        limiter: TokenBucket::new(
                            settings.server.requests_per_second,
                            settings.server.request_burst,
                        ),
                        refused: 0,
                    };
                    connection.serve(&mut reader, &mut session).await;
                    let subscriptions: Vec<Pattern> = session.subscriptions.drain().collect();
                    app.node.hub().unsubscribe(who.id, &subscriptions);
                    app.node.release(&subscriptions);
                    app.metrics.subscriptions.sub(subscriptions.len() as i64);
                }
                Endpoint::Echo => connection.serve(&mut reader, &mut Echo(&outbox)).await,
            }
        };
        // The writer runs beside the reader in this task (a task of its own would cost an idle
        // connection another few hundred bytes); each waits on its own, so neither stalls the
        // other, and a delivery polls only the writer.
        join(serve, write_loop(write, &outbox, &app.metrics)).await;
        // Keep reading until the client closes its side, so unread bytes do not turn our close
        // into a reset that could destroy what the client has not read yet.
        tokio::time::timeout(CLOSE_LINGER, drain(&mut reader)).await.ok();
        let reason = outbox.reason().unwrap_or(Disconnect::Error);
        app.metrics.disconnected(reason);
        debug!(addr = %addr, proxy = addr.proxy.map(tracing::field::display), client = who.id, reason = reason.label(), "connection closed");
        drop(slot);
    }
}

/// A complete message from the client: fragments reassembled, text checked to be UTF-8.
#[derive(Debug, Clone, Copy)]
enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// What an [`Endpoint`] does with each message; the reading around it is the same for all.
trait Handler {
    /// Serves one message; returns a reason to close the connection, if it must close. The
    /// next message is read only after it returns, so requests are served in order.
    async fn message(&mut self, message: Message<'_>) -> Option<Disconnect>;
}

/// What every endpoint's connection has: its queue, its timer, and the server's limits.
struct Connection<'a> {
    app: &'a App,
    outbox: &'a Arc<Outbox>,
    watchdog: Watchdog,
}

impl Connection<'_> {
    /// Serves messages with `handler` until something ends the connection (the client, the
    /// heartbeat, the token's expiry, the drain, the outbox), and closes the outbox with why.
    async fn serve(&self, reader: &mut Reader, handler: &mut impl Handler) {
        let server = &self.app.settings.server;
        let outbox = self.outbox;
        tokio::select! {
            reason = self.read_loop(reader, handler) => outbox.close(reason),
            reason = self.watchdog.run(outbox, server.ping_interval, server.idle_timeout) => outbox.close(reason),
            () = self.app.drain.cancelled() => outbox.close(Disconnect::Shutdown),
            () = outbox.closed() => {}
        }
    }

    /// Reads frames, reassembles them into messages for `handler`, until the connection
    /// should close; returns why.
    async fn read_loop(&self, reader: &mut Reader, handler: &mut impl Handler) -> Disconnect {
        let metrics: &Metrics = &self.app.metrics;
        let max = self.app.settings.server.max_message_bytes;
        let mut partial: Option<Partial> = None;
        loop {
            if !self.outbox.has_room() {
                // Boxed: only a connection whose client reads slower than it asks carries the
                // timer.
                if let Some(reason) = Box::pin(self.wait_for_room()).await {
                    return reason;
                }
            }
            let frame = match reader.read_frame().await {
                Ok(frame) => frame,
                Err(reason) => {
                    debug!(reason = reason.label(), "read ended");
                    return reason;
                }
            };
            self.watchdog.seen();
            metrics.bytes_received.inc_by(frame.payload.len() as u64);
            let reason = match (frame.opcode, partial.as_mut()) {
                (OpCode::Close, _) => return answer_close(self.outbox, &frame.payload),
                (OpCode::Ping, _) => {
                    self.outbox
                        .push(wire::encode(Frame::pong(Payload::Borrowed(&frame.payload))));
                    continue;
                }
                (OpCode::Pong, _) => continue,
                (OpCode::Text | OpCode::Binary, None) if frame.fin => {
                    deliver(handler, frame.opcode, &frame.payload).await
                }
                (OpCode::Text | OpCode::Binary, None) => {
                    let mut p = Partial {
                        opcode: frame.opcode,
                        buf: Vec::new(),
                        checked: 0,
                    };
                    if let Err(reason) = p.extend(&frame.payload) {
                        return reason;
                    }
                    partial = Some(p);
                    continue;
                }
                (OpCode::Continuation, Some(p)) => {
                    if p.buf.len() + frame.payload.len() > max {
                        return Disconnect::MessageTooBig;
                    }
                    if let Err(reason) = p.extend(&frame.payload) {
                        return reason;
                    }
                    if !frame.fin {
                        continue;
                    }
                    let Partial { opcode, buf, .. } = partial.take().expect("matched Some");
                    deliver(handler, opcode, &buf).await
                }
                _ => return Disconnect::ProtocolError,
            };
            if let Some(reason) = reason.or_else(|| self.outbox.reason()) {
                return reason;
            }
        }
    }
}

impl Connection<'_> {
    /// Stops reading until the writer has taken what waits (backpressure on a client that sends
    /// requests faster than it reads the answers); a client that reads nothing for half of
    /// `server.idle_timeout` meanwhile is a slow consumer.
    async fn wait_for_room(&self) -> Option<Disconnect> {
        let limit = self.app.settings.server.idle_timeout / 2;
        match tokio::time::timeout(limit, self.outbox.room()).await {
            Ok(()) => None,
            Err(_) => {
                self.outbox.slow_consumer();
                Some(Disconnect::SlowConsumer)
            }
        }
    }
}

/// Answers the client's close (RFC 6455 §5.5.1): echoes it when its payload is valid (no
/// payload, or an allowed code and a UTF-8 reason), and returns why the connection ends.
fn answer_close(outbox: &Outbox, payload: &[u8]) -> Disconnect {
    if let [hi, lo, reason @ ..] = payload {
        if !CloseCode::from(u16::from_be_bytes([*hi, *lo])).is_allowed() {
            return Disconnect::ProtocolError;
        }
        if std::str::from_utf8(reason).is_err() {
            return Disconnect::InvalidUtf8;
        }
    } else if !payload.is_empty() {
        return Disconnect::ProtocolError; // a code needs two bytes
    }
    let echo = wire::encode(Frame::close_raw(Payload::Borrowed(payload)));
    outbox.close_with(Disconnect::ClientClose, Some(echo));
    Disconnect::ClientClose
}

/// Hands a complete message to `handler`, after checking that text is UTF-8.
async fn deliver(handler: &mut impl Handler, opcode: OpCode, payload: &[u8]) -> Option<Disconnect> {
    let message = if opcode == OpCode::Text {
        let Ok(text) = std::str::from_utf8(payload) else {
            return Some(Disconnect::InvalidUtf8);
        };
        Message::Text(text)
    } else {
        Message::Binary(payload)
    };
    // Boxed: the handler's future (a request waiting on the broker, say) is far larger than
    // the rest of the connection, and would otherwise be carried by every idle one.
    Box::pin(handler.message(message)).await
}

/// A fragmented message being reassembled.
struct Partial {
    opcode: OpCode,
    buf: Vec<u8>,
    /// How much of a text message's `buf` is known to be valid UTF-8.
    checked: usize,
}

impl Partial {
    /// Appends a fragment. Text that can no longer become valid UTF-8 fails at once, not at the
    /// last fragment (RFC 6455 §8.1); a character split between fragments is fine.
    fn extend(&mut self, fragment: &[u8]) -> Result<(), Disconnect> {
        self.buf.extend_from_slice(fragment);
        if self.opcode != OpCode::Text {
            return Ok(());
        }
        match std::str::from_utf8(&self.buf[self.checked..]) {
            Ok(_) => self.checked = self.buf.len(),
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(Disconnect::InvalidUtf8),
        }
        Ok(())
    }
}

/// `/echo`: every message goes back with its own opcode, through the same outbox and writer
/// as deliveries do.
struct Echo<'a>(&'a Outbox);

impl Handler for Echo<'_> {
    async fn message(&mut self, message: Message<'_>) -> Option<Disconnect> {
        let frame = match message {
            Message::Text(text) => Frame::text(Payload::Borrowed(text.as_bytes())),
            Message::Binary(data) => Frame::binary(Payload::Borrowed(data)),
        };
        self.0.push(wire::encode(frame));
        None
    }
}

/// Discards incoming frames until the client closes its side.
async fn drain(reader: &mut Reader) {
    while reader.read_frame().await.is_ok() {}
}

struct Session<'a> {
    app: &'a App,
    who: &'a Subscriber,
    /// Who the client is and what it may do; replaced by a token refresh.
    identity: Identity,
    /// Closes the connection when the token expires.
    watchdog: &'a Watchdog,
    subscriptions: HashSet<Pattern>,
    limiter: TokenBucket,
    /// Requests refused in a row by the rate limiter.
    refused: u32,
}

impl Handler for Session<'_> {
    async fn message(&mut self, message: Message<'_>) -> Option<Disconnect> {
        match message {
            Message::Text(text) => self.handle(text).await,
            Message::Binary(_) => Some(Disconnect::Binary),
        }
    }
}

impl Session<'_> {
    /// Serves one request; every outcome, error included, is one reply queued on the outbox.
    /// Returns a reason to disconnect when the client abuses the rate limit.
    async fn handle(&mut self, text: &str) -> Option<Disconnect> {
        let settings = &self.app.settings.server;
        let (id, mut request) = parse_request(text, settings.max_subscriptions_per_connection);
        // Parsed first so that even a refused request gets its id echoed.
        if self.limiter.take() {
            self.refused = 0;
        } else {
            self.refused += 1;
            if self.refused > settings.request_burst.saturating_mul(ABUSE_FACTOR) {
                return Some(Disconnect::RateLimit);
            }
            request = Err(RequestError::RateLimited);
        }
        let outbox = &self.who.outbox;
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                outbox.push(Reply::error(id, &e).frame());
                return None;
            }
        };
        let hub = self.app.node.hub();
        match request {
            Request::Subscribe { topics, since } => {
                if let Some(denied) = self.identity.acl.first_unreadable(&topics) {
                    let e = RequestError::forbidden(Action::Subscribe, denied);
                    outbox.push(Reply::error(id, &e).frame());
                    return None;
                }
                let mut new: Vec<Pattern> = (topics.iter())
                    .filter(|t| !self.subscriptions.contains(*t))
                    .cloned()
                    .collect();
                new.sort();
                new.dedup();
                let limit = settings.max_subscriptions_per_connection;
                if self.subscriptions.len() + new.len() > limit {
                    let e = RequestError::TooManySubscriptions(limit);
                    outbox.push(Reply::error(id, &e).frame());
                    return None;
                }
                // In a cluster: listen to the new topics' channels and load their state first.
                if let Err(e) = self.app.node.prepare(&new).await {
                    outbox.push(Reply::error(id, &e).frame());
                    return None;
                }
                // Updates published while the hub registers us wait behind the reply and the
                // catch-up frames (see `Hub::subscribe`).
                outbox.cork();
                let done = match hub.subscribe(self.who, &topics, &since) {
                    Ok(done) => done,
                    Err(e) => {
                        outbox.uncork(std::iter::once((Reply::error(id, &e).frame(), None)));
                        self.app.node.release(&new);
                        return None;
                    }
                };
                self.app.metrics.subscriptions.add(new.len() as i64);
                let reply = Reply::Subscribed {
                    id,
                    topics: &topics,
                    positions: &done.positions,
                    recovered: &done.recovered,
                };
                outbox.uncork(std::iter::once((reply.frame(), None)).chain(done.frames));
                self.subscriptions.extend(topics);
            }
            Request::Unsubscribe(topics) => {
                hub.unsubscribe(self.who.id, &topics);
                let removed: Vec<Pattern> = (topics.iter())
                    .filter(|t| self.subscriptions.remove(*t))
                    .cloned()
                    .collect();
                self.app.node.release(&removed);
                self.app.metrics.subscriptions.sub(removed.len() as i64);
                outbox.push(Reply::Unsubscribed { id, topics: &topics }.frame());
            }
            Request::Publish { topic, data } => {
                if !self.identity.acl.may_publish(&topic) {
                    let e = RequestError::forbidden(Action::Publish, &topic);
                    outbox.push(Reply::error(id, &e).frame());
                    return None;
                }
                let published = self
                    .app
                    .node
                    .publish(&[(topic.clone(), data)], Source::Client)
                    .await;
                let reply = match published {
                    Ok(seqs) => Reply::Published {
                        id,
                        topic: &topic,
                        seq: seqs[0],
                    }
                    .frame(),
                    Err(e) => Reply::error(id, &e).frame(),
                };
                outbox.push(reply);
            }
            Request::Auth { token } => {
                let reply = match self.refresh(&token) {
                    Ok(dropped) => Reply::Authed {
                        id,
                        dropped: &dropped,
                    }
                    .frame(),
                    Err(e) => Reply::error(id, &e).frame(),
                };
                outbox.push(reply);
            }
            Request::Ping => {
                outbox.push(Reply::Pong { id }.frame());
            }
        }
        None
    }

    /// Replaces the connection's identity with the one `token` gives, and drops (from the hub
    /// first, so nothing more is queued through them) the subscriptions it no longer allows.
    /// A refused token changes nothing: the current one stays in force until it expires.
    fn refresh(&mut self, token: &str) -> Result<Vec<Pattern>, RequestError> {
        let identity = (self.app.auth.refresh(&self.identity, token))
            .ok_or_else(|| RequestError::BadRequest("no tokens in use (auth.mode = \"none\")".into()))??;
        let mut dropped: Vec<Pattern> = (self.subscriptions.iter())
            .filter(|s| !identity.acl.may_subscribe(s))
            .cloned()
            .collect();
        dropped.sort();
        self.app.node.hub().unsubscribe(self.who.id, &dropped);
        self.app.node.release(&dropped);
        for s in &dropped {
            self.subscriptions.remove(s);
        }
        self.app.metrics.subscriptions.sub(dropped.len() as i64);
        self.watchdog.expire_at(identity.expires);
        self.identity = identity;
        Ok(dropped)
    }
}

/// Writes everything the outbox hands over until it ends, then closes the socket.
async fn write_loop<W: AsyncWrite + Unpin>(mut socket: W, outbox: &Outbox, metrics: &Metrics) {
    let mut frames: Vec<Bytes> = Vec::new();
    loop {
        match outbox.next(&mut frames).await {
            Next::Frames { bytes, oldest } => {
                metrics.queue_bytes.observe(bytes as f64);
                if let Err(e) = write(&mut socket, &frames, outbox).await {
                    debug!(error = %e, "write failed");
                    outbox.close(Disconnect::Error);
                    return;
                }
                if let Some(oldest) = oldest {
                    metrics.delivery_latency.observe(oldest.elapsed().as_secs_f64());
                }
                metrics.delivered.inc_by(frames.len() as u64);
                metrics.bytes_sent.inc_by(bytes as u64);
                frames.clear();
                if frames.capacity() > KEEP_FRAMES {
                    frames = Vec::new();
                }
            }
            // Boxed, like a stalled write: a connection carries the grace timer only when
            // it needs one.
            Next::End(close) => return Box::pin(finish(socket, close)).await,
        }
    }
}

/// Writes the close frame, if any, and shuts the socket down, each within `CLOSE_GRACE`.
async fn finish<W: AsyncWrite + Unpin>(mut socket: W, close: Option<Bytes>) {
    if let Some(close) = close {
        let _ = tokio::time::timeout(CLOSE_GRACE, socket.write_all(&close)).await;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.shutdown()).await;
}

/// Writes `frames`, telling the outbox while the socket does not take them (so it can
/// conflate), and giving up `CLOSE_GRACE` after the outbox starts closing.
async fn write<W: AsyncWrite + Unpin>(socket: &mut W, frames: &[Bytes], outbox: &Outbox) -> io::Result<()> {
    let mut write = pin!(write_all_vectored(socket, frames));
    if let Poll::Ready(result) = poll_once(write.as_mut()).await {
        return result;
    }
    // The socket is full. What waits for it is boxed: the close-grace timer it needs is
    // carried by a stalled connection only, not by every one.
    Box::pin(stalled(write, outbox)).await
}

/// Finishes a write the socket did not take at once.
async fn stalled<F>(mut write: Pin<&mut F>, outbox: &Outbox) -> io::Result<()>
where
    F: Future<Output = io::Result<()>>,
{
    outbox.set_stalled(true);
    let result = tokio::select! {
        r = write.as_mut() => r,
        _ = outbox.closed_for_writer() => match tokio::time::timeout(CLOSE_GRACE, write.as_mut()).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        },
    };
    outbox.set_stalled(false);
    result
}

/// Up to this many frames, the slices of a vectored write are built on the stack; a longer
/// batch (a client catching up) pays one allocation for them, spread over its many frames.
/// Either way they live for one poll only, not in the writer's future, so an idle connection
/// does not carry them.
const STACK_SLICES: usize = 16;
/// Most frames handed to one vectored write (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Writes all of `frames`, in order, straight from their shared buffers: one vectored write
/// (`writev(2)`) per batch instead of a copy into one buffer. Both streams a session runs on
/// (TCP, and rustls over TCP, through hyper's upgrade) are vectored; a writer that is not
/// writes the first slice per call (tokio's default), which stays correct.
async fn write_all_vectored<W: AsyncWrite + Unpin>(socket: &mut W, frames: &[Bytes]) -> io::Result<()> {
    // The first frame not completely written, and how much of it is.
    let (mut next, mut offset) = (0, 0);
    poll_fn(|cx| {
        while next < frames.len() {
            let pending = &frames[next..];
            let slices = (pending.iter().enumerate())
                .map(|(i, frame)| IoSlice::new(if i == 0 { &frame[offset..] } else { frame }));
            let mut socket = Pin::new(&mut *socket);
            let written = if pending.len() <= STACK_SLICES {
                let mut buf = [IoSlice::new(&[]); STACK_SLICES];
                buf.iter_mut().zip(slices).for_each(|(b, s)| *b = s);
                socket.as_mut().poll_write_vectored(cx, &buf[..pending.len()])
            } else {
                let buf: Vec<IoSlice<'_>> = slices.take(MAX_SLICES).collect();
                socket.as_mut().poll_write_vectored(cx, &buf)
            };
            let mut written = ready!(written)?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while written > 0 {
                let left = frames[next].len() - offset;
                if written < left {
                    offset += written;
                    break;
                }
                written -= left;
                (next, offset) = (next + 1, 0);
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

async fn poll_once<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await
}

/// Per-connection request rate limit.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;

    /// Takes at most `chunk` bytes per call and refuses every other call, like a socket whose
    /// buffer keeps filling up.
    struct Trickle {
        written: Vec<u8>,
        chunk: usize,
        vectored: bool,
        refuse: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.refuse = !self.refuse;
            if self.refuse {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let bufs = if self.vectored { bufs } else { &bufs[..1] };
            let mut room = self.chunk;
            for buf in bufs {
                let n = room.min(buf.len());
                self.written.extend_from_slice(&buf[..n]);
                room -= n;
            }
            Poll::Ready(Ok(self.chunk - room))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn vectored_writes_survive_partial_writes_in_order() {
        // More than MAX_SLICES frames: both the stack and the heap slices, and several writes.
        let frames: Vec<Bytes> = (0..1500u32)
            .map(|i| wire::json_frame(&"x".repeat(i as usize % 37)))
            .collect();
        let want: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        for vectored in [true, false] {
            for chunk in [7, 1000, 1 << 20] {
                let mut w = Trickle {
                    written: Vec::new(),
                    chunk,
                    vectored,
                    refuse: false,
                };
                write_all_vectored(&mut w, &frames).await.unwrap();
                assert!(w.written == want, "vectored {vectored}, chunk {chunk}");
            }
        }
    }
}
