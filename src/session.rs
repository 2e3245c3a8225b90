//! One WebSocket connection, from upgrade to close.
//!
//! Reading and writing run as two tasks: the reader parses requests and hands them to the hub;
//! the writer drains the connection's [`Outbox`] and writes every waiting frame in one write.
//! Neither waits on the other, so a client flooding requests does not stall its deliveries.
//!
//! Frames are read with fastwebsockets (masking, control frames, ping → pong, close echo), but
//! fragmented messages are reassembled here: fastwebsockets caps single frames, not reassembled
//! messages, and `server.max_message_bytes` must bound the whole message.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{Frame, OpCode, Role, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf};
use tracing::debug;

use crate::error::RequestError;
use crate::hub::{Hub, Subscriber};
use crate::outbox::{Next, Outbox};
use crate::protocol::{parse_request, Reply, Request};
use crate::settings::Settings;
use crate::topic::Pattern;
use crate::wire;

/// How long a closing connection may take to finish its last write.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long to keep reading after our close frame, so the kernel does not reset the
/// connection (and discard what the client has not read yet) while the client answers.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Write buffers that grew past this during a burst are released instead of kept.
const KEEP_WRITE_BUFFER: usize = 64 << 10;

type Stream = TokioIo<Upgraded>;
type Reader = WebSocketRead<ReadHalf<Stream>>;

/// Why a connection ended, as a close frame to send.
struct Closing {
    code: u16,
    reason: &'static str,
}

impl Closing {
    fn from_error(e: &WebSocketError) -> Option<Closing> {
        let (code, reason) = match e {
            WebSocketError::FrameTooLarge => (1009, "message too big"),
            WebSocketError::InvalidUTF8 => (1007, "invalid UTF-8"),
            WebSocketError::IoError(_) | WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed => {
                return None
            }
            _ => (1002, "protocol error"),
        };
        Some(Closing { code, reason })
    }
}

/// Runs a connection after the HTTP upgrade until it closes.
pub async fn run(upgrade: UpgradeFut, hub: Arc<Hub>, settings: Arc<Settings>) {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    let (read, write) = tokio::io::split(ws.into_inner());
    // Only the read half of fastwebsockets is used: the writer sends pre-encoded frames.
    let (mut reader, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    // fastwebsockets rejects frames whose length is >= the limit; allow exactly the cap.
    reader.set_max_message_size(settings.server.max_message_bytes + 1);

    let outbox = Arc::new(Outbox::new(settings.queue.max_bytes));
    let writer = tokio::spawn(write_loop(write, outbox.clone()));
    let who = hub.new_subscriber(outbox.clone());
    let mut session = Session {
        hub: &hub,
        settings: &settings,
        who: &who,
        subscriptions: HashSet::new(),
        limiter: TokenBucket::new(settings.server.requests_per_second, settings.server.request_burst),
    };

    tokio::select! {
        closing = session.read_loop(&mut reader) => {
            if let Some(c) = closing {
                outbox.close(Some(wire::close_frame(c.code, c.reason)));
            } else {
                outbox.close(None);
            }
        }
        _ = outbox.closed() => {}
    }
    let subscriptions: Vec<Pattern> = session.subscriptions.drain().collect();
    hub.unsubscribe(who.id, &subscriptions);

    let mut writer = pin!(writer);
    let linger = async {
        (&mut writer).await.ok();
        tokio::time::timeout(CLOSE_LINGER, drain(&mut reader)).await.ok();
    };
    // A reader that never sees EOF must not keep the connection alive past the writer.
    linger.await;
    debug!(client = who.id, "connection closed");
}

/// Discards incoming frames until the client closes its side.
async fn drain(reader: &mut Reader) {
    let mut ignore = |_: Frame<'_>| async { Ok::<(), Infallible>(()) };
    while reader.read_frame(&mut ignore).await.is_ok() {}
}

struct Session<'a> {
    hub: &'a Hub,
    settings: &'a Settings,
    who: &'a Subscriber,
    subscriptions: HashSet<Pattern>,
    limiter: TokenBucket,
}

impl Session<'_> {
    /// Reads and serves messages until the connection should close; returns the close to send
    /// (`None` when the client closed or vanished).
    async fn read_loop(&mut self, reader: &mut Reader) -> Option<Closing> {
        let outbox = self.who.outbox.clone();
        // Control frames owed to the client (pong, close echo) go out through the outbox.
        let mut obligated = move |frame: Frame<'_>| {
            let bytes = wire::encode(frame);
            if wire::is_close(&bytes) {
                outbox.close(Some(bytes));
            } else {
                outbox.push(bytes);
            }
            std::future::ready(Ok::<(), Infallible>(()))
        };
        let max = self.settings.server.max_message_bytes;
        let mut partial: Option<Vec<u8>> = None;
        loop {
            let frame = match reader.read_frame(&mut obligated).await {
                Ok(frame) => frame,
                Err(e) => {
                    debug!(error = %e, "read ended");
                    return Closing::from_error(&e);
                }
            };
            let message = match (frame.opcode, frame.fin, partial.as_mut()) {
                (OpCode::Close, ..) => return None, // echoed by `obligated`
                (OpCode::Ping | OpCode::Pong, ..) => continue,
                (OpCode::Binary, ..) => {
                    return Some(Closing {
                        code: 1003,
                        reason: "binary messages are not supported",
                    })
                }
                (OpCode::Text, true, None) => Bytes::from(frame.payload.to_vec()),
                (OpCode::Text, false, None) => {
                    partial = Some(frame.payload.to_vec());
                    continue;
                }
                (OpCode::Continuation, fin, Some(buf)) => {
                    if buf.len() + frame.payload.len() > max {
                        return Some(Closing {
                            code: 1009,
                            reason: "message too big",
                        });
                    }
                    buf.extend_from_slice(&frame.payload);
                    if !fin {
                        continue;
                    }
                    Bytes::from(partial.take().unwrap_or_default())
                }
                _ => {
                    return Some(Closing {
                        code: 1002,
                        reason: "unexpected continuation frame",
                    })
                }
            };
            let Ok(text) = std::str::from_utf8(&message) else {
                return Some(Closing {
                    code: 1007,
                    reason: "invalid UTF-8",
                });
            };
            self.handle(text);
            if self.who.outbox.is_closing() {
                return None;
            }
        }
    }

    /// Serves one request; every outcome, error included, is one reply queued on the outbox.
    fn handle(&mut self, text: &str) {
        let (id, mut request) = parse_request(text, self.settings.server.max_subscriptions_per_connection);
        // Parsed first so that even a refused request gets its id echoed.
        if !self.limiter.take() {
            request = Err(RequestError::RateLimited);
        }
        let outbox = &self.who.outbox;
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                outbox.push(Reply::error(id, &e).frame());
                return;
            }
        };
        match request {
            Request::Subscribe(topics) => {
                let new = topics.iter().filter(|t| !self.subscriptions.contains(*t)).count();
                let limit = self.settings.server.max_subscriptions_per_connection;
                if self.subscriptions.len() + new > limit {
                    let e = RequestError::TooManySubscriptions(limit);
                    outbox.push(Reply::error(id, &e).frame());
                    return;
                }
                // The reply goes first; snapshots follow as the hub registers each topic.
                outbox.push(Reply::Subscribed { id, topics: &topics }.frame());
                self.hub.subscribe(self.who, &topics);
                self.subscriptions.extend(topics);
            }
            Request::Unsubscribe(topics) => {
                self.hub.unsubscribe(self.who.id, &topics);
                for t in &topics {
                    self.subscriptions.remove(t);
                }
                outbox.push(Reply::Unsubscribed { id, topics: &topics }.frame());
            }
            Request::Publish { topic, data } => {
                if !self.hub.rules().client_may_publish(&topic) {
                    let e = RequestError::Forbidden(topic.to_string());
                    outbox.push(Reply::error(id, &e).frame());
                    return;
                }
                let seq = self.hub.publish(&topic, data);
                outbox.push(
                    Reply::Published {
                        id,
                        topic: &topic,
                        seq,
                    }
                    .frame(),
                );
            }
            Request::Ping => {
                outbox.push(Reply::Pong { id }.frame());
            }
        }
    }
}

/// Writes everything the outbox hands over until it ends, then closes the socket.
async fn write_loop<W: AsyncWrite + Unpin>(mut socket: W, outbox: Arc<Outbox>) {
    let mut frames: Vec<Bytes> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match outbox.next(&mut frames).await {
            Next::Frames => {
                let result = if let [single] = frames.as_slice() {
                    write(&mut socket, single, &outbox).await
                } else {
                    frames.iter().for_each(|f| buf.extend_from_slice(f));
                    write(&mut socket, &buf, &outbox).await
                };
                frames.clear();
                buf.clear();
                if buf.capacity() > KEEP_WRITE_BUFFER {
                    buf = Vec::new();
                }
                if let Err(e) = result {
                    debug!(error = %e, "write failed");
                    outbox.close(None);
                    return;
                }
            }
            Next::End(close) => {
                if let Some(close) = close {
                    let _ = tokio::time::timeout(CLOSE_GRACE, socket.write_all(&close)).await;
                }
                let _ = tokio::time::timeout(CLOSE_GRACE, socket.shutdown()).await;
                return;
            }
        }
    }
}

/// Writes `bytes`, telling the outbox while the socket does not take them (so it can
/// conflate), and giving up `CLOSE_GRACE` after the outbox starts closing.
async fn write<W: AsyncWrite + Unpin>(socket: &mut W, bytes: &[u8], outbox: &Outbox) -> io::Result<()> {
    let mut write = pin!(socket.write_all(bytes));
    if let Poll::Ready(result) = poll_once(write.as_mut()).await {
        return result;
    }
    outbox.set_stalled(true);
    let result = tokio::select! {
        r = &mut write => r,
        _ = outbox.closed() => match tokio::time::timeout(CLOSE_GRACE, &mut write).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        },
    };
    outbox.set_stalled(false);
    result
}

async fn poll_once<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut fut).poll(cx))).await
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
