//! One WebSocket connection, from upgrade to close: everything the session must not know.
//!
//! Reading and writing run side by side in the connection's task: the reader parses frames
//! and hands complete messages to the [`Session`] (or, at `/echo`, sends them back); the
//! writer ([`writer`](super::writer)) drains the connection's [`Outbox`] and writes every
//! waiting frame in one vectored write. Neither waits on the other, so a client flooding
//! requests does not stall its deliveries, and [`join`] polls only the side whose waker fired.
//! Beside the reader, the same task runs the connection's [`Watchdog`] (pings, idle timeout,
//! the token's expiry) and watches the drain signal; all of them end the connection the same
//! way, by closing the outbox.
//!
//! Frames are read by [`FrameReader`] (a small read buffer per connection; see [`wire`] for
//! why not fastwebsockets' reader), which enforces the frame layer's rules. Pings, closes and
//! fragmented messages are handled here: `server.max_message_bytes` bounds the reassembled
//! message, and text must be UTF-8, checked as fragments arrive.
//!
//! The reading is the same for every [`Endpoint`]: only the handler of complete messages
//! differs, so the echo endpoint the conformance suite tests is the machinery `/ws` runs on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{CloseCode, Frame, OpCode, Payload};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::ReadHalf;
use tracing::debug;

use crate::app::{App, ConnectionSlot};
use crate::auth::acl::Identity;
use crate::metrics::Metrics;
use crate::protocol::deflate::{self, Negotiated};
use crate::protocol::disconnect::Disconnect;
use crate::protocol::wire::{self, FrameReader};
use crate::pubsub::outbox::Outbox;
use crate::reaper::Remains;
use crate::session::{Expiry, Session};
use crate::transport::proxy::ClientAddr;

use super::join::join;
use super::watchdog::Watchdog;
use super::writer::write_loop;

/// How long to keep reading after our close frame, so the kernel does not reset the
/// connection (and discard what the client has not read yet) while the client answers.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

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

/// What the handshake settled for a connection: who the client is, which endpoint it asked
/// for, and whether it agreed to permessage-deflate.
pub struct Link {
    pub identity: Identity,
    pub endpoint: Endpoint,
    pub deflate: Option<Negotiated>,
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
    link: Link,
) -> impl Future<Output = ()> + Send {
    async move {
        let Link {
            identity,
            endpoint,
            deflate,
        } = link;
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
        reader.allow_compressed(deflate.is_some());
        let window_bits = deflate.map(|d| d.window_bits);
        let outbox = Arc::new(Outbox::compressed(settings.queue.max_bytes, window_bits));
        let who = app.node.new_subscriber(outbox.clone());
        let subject = identity.subject.as_deref().unwrap_or("-");
        debug!(addr = %addr, proxy = addr.proxy.map(tracing::field::display), client = who.id, subject, ?endpoint, "connection opened");
        let connection = Connection {
            app: &app,
            outbox: &outbox,
            watchdog: Watchdog::new(identity.expires),
        };
        // What the session still holds when it ends, and the socket when nothing is left to
        // write on it: both go to the reaper.
        let mut subscriptions = Vec::new();
        let mut socket = None;
        let serve = async {
            match endpoint {
                Endpoint::Requests => {
                    let mut session = Session::new(&app, &who, identity, &connection.watchdog);
                    connection.serve(&mut reader, &mut session).await;
                    match outbox.reason() {
                        // The client left: its subscriptions may go to the reaper with the socket.
                        Some(Disconnect::ClientClose | Disconnect::Error) => {
                            subscriptions = session.into_subscriptions()
                        }
                        // We close it: its subscriptions end now, while the writer still has
                        // the close frame to write (up to `CLOSE_GRACE` to a stalled client).
                        _ => session.close().await,
                    }
                }
                Endpoint::Echo => {
                    let level = settings.compression.level;
                    let echo = &mut Echo {
                        outbox: &outbox,
                        level,
                    };
                    connection.serve(&mut reader, echo).await
                }
            }
        };
        // The writer runs beside the reader in this task (a task of its own would cost an idle
        // connection another few hundred bytes); each waits on its own, so neither stalls the
        // other, and a delivery polls only the writer.
        let write = async { socket = write_loop(write, &outbox, &app.metrics).await };
        join(serve, write).await;
        let reason = outbox.reason().unwrap_or(Disconnect::Error);
        app.metrics.disconnected(reason);
        debug!(addr = %addr, proxy = addr.proxy.map(tracing::field::display), client = who.id, reason = reason.label(), "connection closed");
        let Some(socket) = socket else {
            // Left over only when the client's close was answered, or a write failed.
            (app.node).unsubscribe(&who, &subscriptions, &subscriptions).await;
            // We closed, or answered the client's close: keep reading until the client closes
            // its side, so unread bytes do not turn our close into a reset that could destroy
            // what the client has not read yet.
            tokio::time::timeout(CLOSE_LINGER, drain(&mut reader)).await.ok();
            drop(slot);
            return;
        };
        // The client went away (or the socket broke): nothing to send, nothing to wait for.
        drop(slot);
        let remains = Remains {
            node: app.node.clone(),
            who,
            subscriptions,
            socket: Box::new((socket, reader)),
        };
        if let Err(remains) = app.reaper.bury(remains, app.tasks.token()) {
            remains.dispose_here().await;
        }
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
            reason = self.watchdog.run(outbox, server.ping_interval, Some(server.idle_timeout)) => outbox.close(reason),
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
                (OpCode::Text | OpCode::Binary, None) if frame.fin && !frame.compressed => {
                    deliver(handler, frame.opcode, &frame.payload).await
                }
                (OpCode::Text | OpCode::Binary, None) if frame.fin => {
                    match deflate::inflate(&frame.payload, max) {
                        Ok(message) => deliver(handler, frame.opcode, &message).await,
                        Err(reason) => return reason,
                    }
                }
                (OpCode::Text | OpCode::Binary, None) => {
                    let mut p = Partial {
                        opcode: frame.opcode,
                        buf: Vec::new(),
                        checked: 0,
                        compressed: frame.compressed,
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
                    let Partial {
                        opcode,
                        buf,
                        compressed,
                        ..
                    } = partial.take().expect("matched Some");
                    match compressed {
                        false => deliver(handler, opcode, &buf).await,
                        true => match deflate::inflate(&buf, max) {
                            Ok(message) => deliver(handler, opcode, &message).await,
                            Err(reason) => return reason,
                        },
                    }
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
    /// permessage-deflate: `buf` is compressed, and checked as UTF-8 once inflated.
    compressed: bool,
}

impl Partial {
    /// Appends a fragment. Text that can no longer become valid UTF-8 fails at once, not at the
    /// last fragment (RFC 6455 §8.1); a character split between fragments is fine.
    fn extend(&mut self, fragment: &[u8]) -> Result<(), Disconnect> {
        self.buf.extend_from_slice(fragment);
        if self.opcode != OpCode::Text || self.compressed {
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
/// as deliveries do; compressed (at `level`) when the client negotiated permessage-deflate and
/// that makes it smaller.
struct Echo<'a> {
    outbox: &'a Outbox,
    level: u32,
}

impl Handler for Echo<'_> {
    async fn message(&mut self, message: Message<'_>) -> Option<Disconnect> {
        let frame = match message {
            Message::Text(text) => Frame::text(Payload::Borrowed(text.as_bytes())),
            Message::Binary(data) => Frame::binary(Payload::Borrowed(data)),
        };
        let frame = wire::encode(frame);
        let compressed =
            (self.outbox.deflate()).and_then(|bits| deflate::compress_frame(&frame, bits, self.level));
        self.outbox.push(compressed.unwrap_or(frame));
        None
    }
}

/// Discards incoming frames until the client closes its side.
async fn drain(reader: &mut Reader) {
    while reader.read_frame().await.is_ok() {}
}

/// `/ws`: every text message is a request for the session; binary ones end the connection.
impl<E: Expiry> Handler for Session<'_, E> {
    async fn message(&mut self, message: Message<'_>) -> Option<Disconnect> {
        match message {
            Message::Text(text) => self.handle(text).await,
            Message::Binary(_) => Some(Disconnect::Binary),
        }
    }
}
