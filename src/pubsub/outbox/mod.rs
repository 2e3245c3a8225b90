//! A connection's outbound queue: bounded, shared by the hub (producer) and the connection's
//! writer (consumer).
//!
//! Two parts of the connection wait on it: the writer, for frames and for the close, and the
//! reader side, for the close only. Each has one [`AtomicWaker`] (cheaper on every delivery
//! than a `Notify`, which locks its list of waiters at every poll), so each side may wait from
//! one place at a time.
//!
//! Producers never wait: a push takes a short std mutex (never held across an await) and
//! returns. The writer takes *all* waiting frames at once and sends them in one write, so a
//! client that keeps up receives every frame, bursts included.
//!
//! Conflation applies only to frames that are actually waiting because the client is behind:
//! while the writer's last write is pending on the socket (`stalled`) or the queue is over its
//! byte bound, an update for a topic replaces the waiting update for the same topic in place. A
//! conflating client's memory is thus bounded by `max_bytes` plus one frame per subscribed topic.
//! Frames that cannot be replaced (updates of `queue`-policy topics, replies) must fit in
//! `max_bytes` on their own: overflowing it ends the connection as a slow consumer (close 4008).
//! Conflatable frames do not count toward that limit, so a client subscribed to many conflated
//! topics is never disconnected for their sake; heartbeat pings are simply dropped when there is
//! no room.
//!
//! A subscription's catch-up (its reply, recovered publications, snapshots of `queue` topics)
//! is the one exception: it goes in whole, so that a recovery never causes a gap or a
//! disconnect by itself, even when it is larger than the bound. What keeps that from becoming a
//! way around the bound is [`Outbox::has_room`]: the connection reads no further request while
//! a catch-up waits for the writer or the fixed part is over half the bound, so at most one
//! catch-up waits here (and one more in the writer's hands), and a client that stops reading
//! stops being served instead of growing its queue. Snapshots of `conflate` topics carry their
//! topic's key and conflate like updates.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use crate::protocol::disconnect::Disconnect;
use crate::protocol::wire;
use crate::settings::Policy;

/// Identifies a topic inside outboxes: conflation replaces frames with equal keys.
pub type TopicKey = u64;

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Appended to the queue.
    Queued,
    /// Replaced an older waiting frame of the same topic.
    Conflated,
    /// The connection is closing; the frame was dropped.
    Closed,
    /// No room, and the frame was optional (a heartbeat ping): dropped.
    Dropped,
    /// This push overflowed the queue and closed the connection as a slow consumer.
    Overflow,
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Next {
    /// Frames were moved into the writer's buffer: write them, in order. `bytes` is their total
    /// size; `oldest` the accept time of the oldest publication among them.
    Frames { bytes: usize, oldest: Option<Instant> },
    /// Nothing more will come: write this close frame (if any) and end the connection.
    End(Option<Bytes>),
}

pub struct Outbox {
    state: Mutex<State>,
    max_bytes: usize,
    /// The writer, woken when the queue turns non-empty or the outbox closes.
    writer: AtomicWaker,
    /// The reader side, woken when the outbox closes, and when the writer takes frames while
    /// the reader waits for room.
    reader: AtomicWaker,
    /// The window its client accepts compressed frames for, if it negotiated permessage-deflate:
    /// the hub picks the compressed frame of a publication by it.
    deflate: Option<u8>,
    /// Topics delivering to this outbox (one per subscribed (topic, connection) pair, kept by
    /// the hub's subscription records): what `limits.max_topics_per_connection` bounds.
    topics: AtomicUsize,
}

struct Waiting {
    frame: Bytes,
    /// Set only for frames that may be conflated.
    key: Option<TopicKey>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    bytes: usize,
    /// The part of `bytes` that conflation cannot reclaim: what the slow-consumer bound applies to.
    fixed: usize,
    /// The part of `bytes` inserted by [`Outbox::uncork`] (a subscription's catch-up): bounded by
    /// the topics' history, and exempt from both the conflation and the slow-consumer bound so
    /// that a recovery never causes a gap or a disconnect by itself.
    exempt: usize,
    /// Position of the newest waiting conflatable frame per topic. Built only once conflation
    /// is needed, so a client that keeps up never pays for a hash map insert per frame.
    index: Option<HashMap<TopicKey, usize>>,
    /// Accept time of the oldest publication waiting.
    oldest: Option<Instant>,
    stalled: bool,
    /// The reader waits in [`Outbox::room`]: the writer wakes it when it takes the frames.
    reader_waiting: bool,
    /// While set, the writer gets nothing: frames pushed meanwhile wait behind this position,
    /// where [`Outbox::uncork`] inserts the frames that must precede them.
    cork: Option<usize>,
    close: Close,
    /// Why the outbox closed, once it has.
    reason: Option<Disconnect>,
}

#[derive(Default)]
enum Close {
    #[default]
    Open,
    /// Deliver what is waiting, then this close frame (if any), then end.
    Pending(Option<Bytes>),
    /// The writer has been told to end.
    Done,
}

impl Outbox {
    #[cfg(test)]
    pub fn new(max_bytes: usize) -> Outbox {
        Outbox::compressed(max_bytes, None)
    }

    /// An outbox whose client takes compressed frames for a window of `deflate` bits.
    pub fn compressed(max_bytes: usize, deflate: Option<u8>) -> Outbox {
        Outbox {
            state: Mutex::default(),
            max_bytes,
            writer: AtomicWaker::new(),
            reader: AtomicWaker::new(),
            deflate,
            topics: AtomicUsize::new(0),
        }
    }

    /// Topics delivering to this outbox now.
    pub fn topics(&self) -> usize {
        self.topics.load(Ordering::Relaxed)
    }

    /// One more topic delivers here (the hub's subscription record was made), or one less.
    pub fn count_topic(&self, added: bool) {
        match added {
            true => self.topics.fetch_add(1, Ordering::Relaxed),
            false => self.topics.fetch_sub(1, Ordering::Relaxed),
        };
    }

    /// The window of the client's permessage-deflate, if it negotiated it.
    pub fn deflate(&self) -> Option<u8> {
        self.deflate
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue itself consistent; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an update (with its accept time) or a snapshot (`None`) of the topic `key`,
    /// applying its delivery `policy`.
    pub fn push_topic(
        &self,
        frame: &Bytes,
        key: TopicKey,
        policy: Policy,
        accepted: Option<Instant>,
    ) -> Pushed {
        self.push_topic_or(frame, frame, key, policy, accepted)
    }

    /// Queues an update as a delta `frame`, which the client applies to the frame before it.
    /// Conflation replaces the waiting update of the topic, and with it the delta's base: then
    /// the `full` frame of the same publication goes in its place.
    pub fn push_delta(
        &self,
        frame: &Bytes,
        full: &Bytes,
        key: TopicKey,
        policy: Policy,
        accepted: Option<Instant>,
    ) -> Pushed {
        self.push_topic_or(frame, full, key, policy, accepted)
    }

    /// [`Outbox::push_topic`], with `replacement` as what conflation puts in place of the
    /// waiting update.
    #[inline(always)]
    fn push_topic_or(
        &self,
        frame: &Bytes,
        replacement: &Bytes,
        key: TopicKey,
        policy: Policy,
        accepted: Option<Instant>,
    ) -> Pushed {
        let mut st = self.lock();
        if !matches!(st.close, Close::Open) {
            return Pushed::Closed;
        }
        if st.oldest.is_none() {
            st.oldest = accepted;
        }
        let over = st.bytes - st.exempt + frame.len() > self.max_bytes;
        let fixed_over = st.fixed + frame.len() > self.max_bytes;
        match policy {
            Policy::Conflate => {
                if st.stalled || over {
                    if let Some(i) = st.conflation_index().get(&key).copied() {
                        let old = std::mem::replace(&mut st.waiting[i].frame, replacement.clone());
                        st.bytes = st.bytes - old.len() + replacement.len();
                        return Pushed::Conflated;
                    }
                }
                self.append(&mut st, frame.clone(), Some(key))
            }
            Policy::Queue if fixed_over => self.overflow(&mut st),
            Policy::Queue => self.append(&mut st, frame.clone(), None),
        }
    }

    /// Queues a reply or control frame. These are never conflated; a client that lets them
    /// pile up past the bound is a slow consumer.
    pub fn push(&self, frame: Bytes) -> Pushed {
        let mut st = self.lock();
        if !matches!(st.close, Close::Open) {
            return Pushed::Closed;
        }
        if st.fixed + frame.len() > self.max_bytes {
            return self.overflow(&mut st);
        }
        self.append(&mut st, frame, None)
    }

    /// Queues a frame that may be skipped (a heartbeat ping): dropped when there is no room.
    pub fn push_optional(&self, frame: Bytes) -> Pushed {
        let mut st = self.lock();
        if !matches!(st.close, Close::Open) {
            return Pushed::Closed;
        }
        if st.fixed + frame.len() > self.max_bytes {
            return Pushed::Dropped;
        }
        self.append(&mut st, frame, None)
    }

    // Always inlined: with two callers of `push_topic_or` the compiler stopped inlining it into
    // `push_topic`, +24 instructions a delivery (callgrind).
    #[inline(always)]
    fn append(&self, st: &mut State, frame: Bytes, key: Option<TopicKey>) -> Pushed {
        let was_empty = st.waiting.is_empty();
        st.bytes += frame.len();
        if key.is_none() {
            st.fixed += frame.len();
        }
        if let (Some(index), Some(key)) = (st.index.as_mut(), key) {
            index.insert(key, st.waiting.len());
        }
        st.waiting.push(Waiting { frame, key });
        if was_empty {
            self.writer.wake();
        }
        Pushed::Queued
    }

    fn overflow(&self, st: &mut State) -> Pushed {
        st.waiting.clear();
        st.bytes = 0;
        st.fixed = 0;
        st.exempt = 0;
        st.index = None;
        st.oldest = None;
        self.begin_close(st, Disconnect::SlowConsumer, None);
        Pushed::Overflow
    }

    /// Ends the connection after the waiting frames, then the close frame `reason` calls for.
    /// The first close wins.
    pub fn close(&self, reason: Disconnect) {
        self.close_with(reason, None);
    }

    /// Like [`Outbox::close`], but ends with `frame` (e.g. the echo of the client's close).
    pub fn close_with(&self, reason: Disconnect, frame: Option<Bytes>) {
        let mut st = self.lock();
        if matches!(st.close, Close::Open) {
            self.begin_close(&mut st, reason, frame);
        }
    }

    fn begin_close(&self, st: &mut State, reason: Disconnect, frame: Option<Bytes>) {
        let frame = frame.or_else(|| {
            reason
                .close_frame()
                .map(|(code, text)| wire::close_frame(code, text))
        });
        st.close = Close::Pending(frame);
        st.reason = Some(reason);
        self.writer.wake();
        self.reader.wake();
    }

    /// Why the outbox closed, if it has.
    pub fn reason(&self) -> Option<Disconnect> {
        self.lock().reason
    }

    pub fn is_closing(&self) -> bool {
        !matches!(self.lock().close, Close::Open)
    }

    /// Resolves once the outbox has started closing: for the reader side.
    pub async fn closed(&self) {
        self.wait_closing(&self.reader).await
    }

    /// Like [`Outbox::closed`], for the writer (while a write is pending).
    pub async fn closed_for_writer(&self) {
        self.wait_closing(&self.writer).await
    }

    async fn wait_closing(&self, waker: &AtomicWaker) {
        poll_fn(|cx| {
            // Registered before the check, so a close in between still wakes us.
            waker.register(cx.waker());
            if self.is_closing() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Holds back everything pushed from now on, until the returned [`Cork`] is uncorked with
    /// the frames that must go first (a subscription's reply and catch-up). One cork at a time.
    pub fn cork(&self) -> Cork<'_> {
        let mut st = self.lock();
        debug_assert!(st.cork.is_none(), "an outbox corked twice");
        st.cork = Some(st.waiting.len());
        Cork { outbox: self }
    }

    /// Inserts `first` ahead of everything pushed since [`Outbox::cork`] and releases it all.
    /// Frames with a key (snapshots of `conflate` topics) conflate with later updates of their
    /// topic like any update; the others are the catch-up, exempt from both bounds (see the
    /// module header for what bounds it instead). Only through [`Cork::uncork`].
    fn uncork(&self, first: impl IntoIterator<Item = (Bytes, Option<TopicKey>)>) {
        let mut st = self.lock();
        let Some(at) = st.cork.take() else { return };
        if !matches!(st.close, Close::Open) {
            return;
        }
        let at = at.min(st.waiting.len());
        let first: Vec<Waiting> = (first.into_iter())
            .map(|(frame, key)| Waiting { frame, key })
            .collect();
        for w in &first {
            st.bytes += w.frame.len();
            if w.key.is_none() {
                st.exempt += w.frame.len();
            }
        }
        st.waiting.splice(at..at, first);
        st.index = None;
        if !st.waiting.is_empty() {
            self.writer.wake();
        }
    }

    /// Whether the connection may serve its client's next request: no catch-up is waiting for
    /// the writer, and the frames that cannot be replaced fill at most half the bound (so that
    /// the replies of the next request, a pong included, fit). A client whose requests come
    /// faster than it reads the answers is thereby slowed down to its own reading pace instead
    /// of being disconnected.
    pub fn has_room(&self) -> bool {
        self.lock().has_room(self.max_bytes)
    }

    /// Waits until [`Outbox::has_room`] (or the outbox closes): for the reader side.
    pub async fn room(&self) {
        poll_fn(|cx| {
            self.reader.register(cx.waker());
            let mut st = self.lock();
            if st.has_room(self.max_bytes) || !matches!(st.close, Close::Open) {
                st.reader_waiting = false;
                return Poll::Ready(());
            }
            st.reader_waiting = true;
            Poll::Pending
        })
        .await
    }

    /// Ends the connection as a slow consumer now, dropping what waits: for a client that
    /// leaves its answers unread.
    pub fn slow_consumer(&self) {
        let mut st = self.lock();
        if matches!(st.close, Close::Open) {
            self.overflow(&mut st);
        }
    }

    /// Marks whether the writer is blocked on a socket that does not accept more bytes.
    pub fn set_stalled(&self, stalled: bool) {
        self.lock().stalled = stalled;
    }

    /// Bytes currently waiting (not yet handed to the writer).
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Waits for work, then moves every waiting frame into `out` (in order): for the writer.
    pub async fn next(&self, out: &mut Vec<Bytes>) -> Next {
        poll_fn(|cx| self.poll_next(cx, out)).await
    }

    /// [`Outbox::next`] as a poll, for a writer that is itself polled (an SSE response body,
    /// which hyper polls). Always inlined: `next` compiles to what it was before the split.
    #[inline(always)]
    pub fn poll_next(&self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Next> {
        // Registered before the check, so a push in between still wakes us.
        self.writer.register(cx.waker());
        let mut st = self.lock();
        if st.cork.is_none() && !st.waiting.is_empty() {
            out.extend(st.waiting.drain(..).map(|w| w.frame));
            if st.waiting.capacity() > 1024 {
                st.waiting = Vec::new(); // do not pin the memory of a burst
            }
            st.index = None;
            let bytes = std::mem::take(&mut st.bytes);
            st.fixed = 0;
            st.exempt = 0;
            if std::mem::take(&mut st.reader_waiting) {
                self.reader.wake();
            }
            let oldest = st.oldest.take();
            return Poll::Ready(Next::Frames { bytes, oldest });
        }
        match std::mem::replace(&mut st.close, Close::Done) {
            Close::Open => {
                st.close = Close::Open;
                Poll::Pending
            }
            Close::Pending(frame) => Poll::Ready(Next::End(frame)),
            Close::Done => Poll::Ready(Next::End(None)),
        }
    }
}

/// A corked outbox: the writer gets nothing until [`Cork::uncork`] puts the frames that must
/// precede what was pushed meanwhile. The guard makes the order a type rule: uncorking needs a
/// cork, and a cork dropped without being uncorked (a subscribe whose connection ended between
/// its slices, or a panic in between) releases the held frames, so the connection never wedges.
#[must_use = "a corked outbox sends nothing until uncorked"]
pub struct Cork<'a> {
    outbox: &'a Outbox,
}

impl Cork<'_> {
    /// Puts `first` ahead of everything pushed since the cork, and releases it all.
    pub fn uncork(self, first: impl IntoIterator<Item = (Bytes, Option<TopicKey>)>) {
        self.outbox.uncork(first);
        // Uncorked: nothing left for `drop` to do (and no second lock to take).
        std::mem::forget(self);
    }
}

impl Drop for Cork<'_> {
    fn drop(&mut self) {
        self.outbox.uncork([]);
    }
}

impl State {
    fn has_room(&self, max_bytes: usize) -> bool {
        self.exempt == 0 && self.fixed <= max_bytes / 2
    }

    fn conflation_index(&mut self) -> &HashMap<TopicKey, usize> {
        let waiting = &self.waiting;
        self.index.get_or_insert_with(|| {
            (waiting.iter().enumerate())
                .filter_map(|(i, w)| w.key.map(|k| (k, i)))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests;
