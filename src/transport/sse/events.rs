//! The write half of an SSE stream: the response body, which hyper polls. It drains the
//! connection's [`Outbox`] and re-frames what waits there as events, all of one batch in one
//! chunk.
//!
//! The outbox holds WebSocket frames (the hub encodes each publication once, as a frame, for
//! every subscriber; `protocol::wire`), and an SSE stream's outbox is never compressed, so
//! each frame is a header and a JSON payload:
//!
//! - a text frame becomes `event: <type>`, for an `update` or a `snapshot` an `id:` (the
//!   stream's [`Cursor`] after it), and its JSON as `data:`;
//! - the heartbeat ping becomes the comment `: ping`;
//! - the close frame the outbox ends with becomes `event: close` with
//!   `{"code":…,"reason":"…"}`, and the body ends.
//!
//! Unlike the WebSocket writer, this copies each frame's payload once per stream (the event's
//! lines go around it, and HTTP's chunked encoding around the whole batch); one chunk per batch
//! keeps it to one write.
//!
//! Stalls: a WebSocket's outbox also conflates while its writer's socket refuses bytes
//! (`Outbox::set_stalled`). The body cannot see that: hyper takes each chunk into its own
//! buffer and simply stops polling while the socket is full, and "handed over but not polled
//! again yet" is no stall (the hub pushes a whole batch in that instant: marking it stalled
//! conflated updates of a client that kept up, measured in the reconnect test). So an SSE
//! stream conflates once its queue is over `queue.max_bytes`, which happens when hyper's
//! buffer and the socket's are full.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use fastwebsockets::OpCode;
use hyper::body::{Body, Frame};
use serde::Serialize;

use crate::metrics::Metrics;
use crate::protocol::disconnect::Disconnect;
use crate::protocol::wire;
use crate::pubsub::hub::Hub;
use crate::pubsub::outbox::{Next, Outbox};

use super::cursor::Cursor;
use super::head;

/// The body of a `GET /sse` response.
pub struct Events {
    outbox: Arc<Outbox>,
    cursor: Cursor,
    /// For the epoch of a topic first seen in an update (a pattern's new topic).
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    frames: Vec<Bytes>,
    ended: bool,
}

impl Events {
    pub(super) fn new(outbox: Arc<Outbox>, cursor: Cursor, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Events {
        Events {
            outbox,
            cursor,
            hub,
            metrics,
            frames: Vec::new(),
            ended: false,
        }
    }

    /// Appends the event (or comment) `frame` stands for to `out`.
    fn event(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        match wire::server_payload(frame) {
            Some((OpCode::Text, json)) => {
                let head = head::scan(json);
                if let Some(head) = &head {
                    out.extend_from_slice(b"event: ");
                    out.extend_from_slice(head.kind.as_bytes());
                    out.push(b'\n');
                    if let Some((topic, seq, epoch)) = head.position {
                        let hub = &self.hub;
                        (self.cursor).advance(topic, seq, epoch, |t| hub.position(t));
                        out.extend_from_slice(b"id: ");
                        self.cursor.write_id(out);
                        out.push(b'\n');
                    } else if head.kind == "subscribed" {
                        self.cursor.subscribed(json);
                    }
                }
                data(json, out);
                out.push(b'\n');
            }
            Some((OpCode::Ping, _)) => out.extend_from_slice(b": ping\n\n"),
            // Nothing else is queued on an SSE stream's outbox: it has no reader, so no pong
            // and no close echo, and its close frame comes with `Next::End`.
            _ => {}
        }
    }
}

/// `json` as `data:` lines. The server's own JSON is one line; a publication's `data` is
/// passed through as published and may hold line breaks (whitespace: inside JSON strings they
/// are escaped), which SSE turns into one `data:` line each and the client joins with `\n`. A
/// CR (alone or before LF) in that whitespace thus arrives as LF, the only change SSE forces.
fn data(json: &[u8], out: &mut Vec<u8>) {
    let mut rest = json;
    loop {
        out.extend_from_slice(b"data: ");
        let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
            out.extend_from_slice(rest);
            out.push(b'\n');
            return;
        };
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        // A CRLF is one line break, not two.
        let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
        rest = &rest[end + 1 + usize::from(crlf)..];
    }
}

/// The last event of a stream that the server ends: `close` with its code and reason.
fn close_event(frame: &[u8]) -> Option<Bytes> {
    #[derive(Serialize)]
    struct Close<'a> {
        code: u16,
        reason: &'a str,
    }
    let (OpCode::Close, [hi, lo, reason @ ..]) = wire::server_payload(frame)? else {
        return None;
    };
    let close = Close {
        code: u16::from_be_bytes([*hi, *lo]),
        reason: std::str::from_utf8(reason).ok()?,
    };
    let mut out = b"event: close\ndata: ".to_vec();
    serde_json::to_writer(&mut out, &close).expect("serializing to a Vec cannot fail");
    out.extend_from_slice(b"\n\n");
    Some(out.into())
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let mut frames = std::mem::take(&mut this.frames);
        let next = ready!(this.outbox.poll_next(cx, &mut frames));
        let chunk = match next {
            Next::Frames { bytes, oldest } => {
                let mut out = Vec::with_capacity(bytes + 96 * frames.len());
                for frame in &frames {
                    this.event(frame, &mut out);
                }
                let m = &this.metrics;
                m.queue_bytes.observe(bytes as f64);
                if let Some(oldest) = oldest {
                    m.delivery_latency.observe(oldest.elapsed().as_secs_f64());
                }
                m.delivered.inc_by(frames.len() as u64);
                m.bytes_sent.inc_by(out.len() as u64);
                Some(Bytes::from(out))
            }
            Next::End(close) => {
                this.ended = true;
                close.as_deref().and_then(close_event)
            }
        };
        frames.clear();
        if frames.capacity() <= 1024 {
            this.frames = frames; // kept, unless a burst grew it
        }
        Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// Hyper drops the body when the client goes away (or the response ends): the outbox closes,
/// which ends the stream's session. After the server's own close, this changes nothing.
impl Drop for Events {
    fn drop(&mut self) {
        self.outbox.close(Disconnect::ClientClose);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(json: &str) -> String {
        let mut out = Vec::new();
        data(json.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn line_breaks_in_data_become_data_lines() {
        assert_eq!(lines(r#"{"a":1}"#), "data: {\"a\":1}\n");
        assert_eq!(lines("{\"a\":\n1}"), "data: {\"a\":\ndata: 1}\n");
        assert_eq!(lines("{\"a\":\r\n1}"), "data: {\"a\":\ndata: 1}\n");
        assert_eq!(lines("{\"a\":\r1}"), "data: {\"a\":\ndata: 1}\n");
        assert_eq!(lines("{\n\n}"), "data: {\ndata: \ndata: }\n");
        assert_eq!(lines("{\r\n\r\n}"), "data: {\ndata: \ndata: }\n");
    }

    #[test]
    fn the_close_frame_becomes_the_close_event() {
        let frame = wire::close_frame(4008, "slow consumer");
        let event = close_event(&frame).unwrap();
        assert_eq!(
            &event[..],
            b"event: close\ndata: {\"code\":4008,\"reason\":\"slow consumer\"}\n\n"
        );
    }
}
