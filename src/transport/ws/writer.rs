//! The write half of a WebSocket connection: drains the connection's [`Outbox`] and writes
//! every waiting frame in one vectored write, straight from the frames' shared bytes (no copy
//! per connection); notices a socket that stops taking bytes (so the outbox can conflate); and
//! ends with the close frame, each last write within `CLOSE_GRACE`.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::metrics::Metrics;
use crate::protocol::disconnect::Disconnect;
use crate::pubsub::outbox::{Next, Outbox};

/// How long a closing connection may take to finish its last write.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The writer's frame list, grown past this many entries by a burst, is released instead of kept.
const KEEP_FRAMES: usize = 1024;

/// Writes everything the outbox hands over until it ends, then closes the socket. Returns the
/// socket instead when the connection ended with no close frame to send (the client went away,
/// or the socket failed): nothing is left to write, and the caller disposes of it.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut socket: W,
    outbox: &Outbox,
    metrics: &Metrics,
) -> Option<W> {
    let mut frames: Vec<Bytes> = Vec::new();
    loop {
        match outbox.next(&mut frames).await {
            Next::Frames { bytes, oldest } => {
                metrics.queue_bytes.observe(bytes as f64);
                if let Err(e) = write(&mut socket, &frames, outbox).await {
                    debug!(error = %e, "write failed");
                    outbox.close(Disconnect::Error);
                    return None;
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
            Next::End(None) => return Some(socket),
            Next::End(Some(close)) => {
                Box::pin(finish(socket, close)).await;
                return None;
            }
        }
    }
}

/// Writes the close frame and shuts the socket down, each within `CLOSE_GRACE`.
async fn finish<W: AsyncWrite + Unpin>(mut socket: W, close: Bytes) {
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.write_all(&close)).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire;
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
