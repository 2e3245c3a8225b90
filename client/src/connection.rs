//! The connection task: owns the socket, reconnects, re-subscribes with `since`, matches
//! replies to requests by `id`, deduplicates deliveries and turns everything into [`Event`]s.
//!
//! Per topic it keeps a [`Track`]: the last seq delivered to the application and the topic's
//! epoch (when known). Deliveries at or below the tracked seq are duplicates (overlapping
//! subscriptions, replays) and are dropped; after a reconnect the tracks become the `since`
//! positions of the re-subscription.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::debug;

use crate::error::{Error, Result};
use crate::message::{Event, Frame, Kind, Position, Published, Request, Subscribed, Unsubscribed, Update};
use crate::options::{default_tls, ClientOptions};
use crate::topic::pattern_matches;
use crate::url::with_token;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// Size at which re-subscribe requests are split between patterns.
const BATCH_BYTES: usize = 32 << 10;
/// Hard size limit of one re-subscribe request, under the server's default `max_message_bytes`
/// (64 KiB). A pattern matching more tracked topics than fit asks to recover only those that do;
/// the others get `Reset` and a snapshot.
const SINCE_BYTES: usize = 56 << 10;
/// Most subscriptions per re-subscribe request.
const BATCH_TOPICS: usize = 256;
/// How long a graceful close waits for the close handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Longest a single write may take before the connection counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that lasted less than this does not reset the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(1);
/// Close code for "the server kept refusing our requests": reconnecting would not help.
const CLOSE_RATE_LIMIT: u16 = 4029;

/// A request from a [`Client`](crate::Client) handle.
pub(crate) enum Command {
    Subscribe {
        topics: Vec<String>,
        reply: Reply<Subscribed>,
    },
    Unsubscribe {
        topics: Vec<String>,
        reply: Reply<Unsubscribed>,
    },
    Publish {
        topic: String,
        data: Box<RawValue>,
        /// `None` for fire-and-forget publishes: errors become [`Event::Error`].
        reply: Option<Reply<Published>>,
    },
}

impl Command {
    fn abandoned(&self) -> bool {
        match self {
            Command::Subscribe { reply, .. } => reply.is_closed(),
            Command::Unsubscribe { reply, .. } => reply.is_closed(),
            Command::Publish { reply, .. } => reply.as_ref().is_some_and(|r| r.is_closed()),
        }
    }

    fn fail(self, error: Error) {
        match self {
            Command::Subscribe { reply, .. } => drop(reply.send(Err(error))),
            Command::Unsubscribe { reply, .. } => drop(reply.send(Err(error))),
            Command::Publish { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
            }
        }
    }
}

/// State shared between the task and the handles.
#[derive(Default)]
pub(crate) struct Shared {
    pub connected: AtomicBool,
    /// Whether someone consumes events; until then, events that do not fit are dropped
    /// rather than stalling the connection.
    pub events_taken: AtomicBool,
}

/// What the application has seen of one topic.
#[derive(Debug, Clone)]
struct Track {
    /// Last seq delivered (or, right after subscribing, one less than the snapshot to come).
    seq: u64,
    /// The topic's epoch, when a `subscribed` reply told it.
    epoch: Option<String>,
}

/// A request waiting for its reply.
enum Pending {
    Subscribe {
        topics: Vec<String>,
        reply: Reply<Subscribed>,
    },
    /// An internal re-subscription after a reconnect; `since` are the topics it gave positions for.
    Resubscribe {
        topics: Vec<String>,
        since: BTreeSet<String>,
    },
    Unsubscribe {
        topics: Vec<String>,
        reply: Reply<Unsubscribed>,
    },
    Publish {
        reply: Option<Reply<Published>>,
    },
}

/// One re-subscribe request being assembled.
#[derive(Default)]
struct Batch {
    topics: Vec<String>,
    since: BTreeMap<String, Position>,
    /// Tracked topics whose `since` did not fit.
    unrecoverable: BTreeSet<String>,
    bytes: usize,
}

/// How a connection ended.
struct End {
    code: u16,
    reason: String,
    /// Do not reconnect.
    stop: bool,
}

impl End {
    fn lost(reason: impl Into<String>) -> End {
        End {
            code: 1006,
            reason: reason.into(),
            stop: false,
        }
    }
}

fn tls() -> Arc<rustls::ClientConfig> {
    static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    TLS.get_or_init(default_tls).clone()
}

/// Opens one connection: token, TCP, TLS for `wss://`, WebSocket handshake.
pub(crate) async fn open(url: &str, options: &ClientOptions) -> Result<Ws> {
    let target = match &options.token {
        Some(provider) => with_token(url, &provider.token().await.map_err(Error::Token)?),
        None => url.to_string(),
    };
    let connect_err = |source: tungstenite::Error| Error::Connect {
        url: url.to_string(),
        source: Box::new(source),
    };
    let request = target.as_str().into_client_request().map_err(connect_err)?;
    let connector = if url.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("wss://")) {
        Connector::Rustls(options.tls.clone().unwrap_or_else(tls))
    } else {
        Connector::Plain
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(options.max_message_bytes))
        .max_frame_size(Some(options.max_message_bytes));
    let handshake =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, Some(connector));
    match tokio::time::timeout(options.connect_timeout, handshake).await {
        Err(_) => Err(Error::Connect {
            url: url.to_string(),
            source: format!("timed out after {:?}", options.connect_timeout).into(),
        }),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let body = response.body().as_deref().unwrap_or_default();
            Err(Error::from_http(response.status().as_u16(), body))
        }
        Ok(Err(e)) => Err(connect_err(e)),
        Ok(Ok((ws, _response))) => Ok(ws),
    }
}

/// Writes one message, bounded in time.
async fn send(ws: &mut Ws, message: Message) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, ws.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err(format!("write blocked for {WRITE_TIMEOUT:?}")),
    }
}

/// Resolves when the client is closed (flag set, or every handle dropped).
async fn shut_down(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|closed| *closed).await;
}

pub(crate) struct Task {
    url: String,
    options: ClientOptions,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
    shared: Arc<Shared>,
    /// Subscriptions the server confirmed, in the order they were made.
    subscriptions: Vec<String>,
    tracks: HashMap<String, Track>,
    pending: BTreeMap<i64, Pending>,
    /// Subscribe/unsubscribe requests in flight when the connection dropped, to send again.
    replay: Vec<Command>,
    next_id: i64,
}

impl Task {
    pub fn new(
        url: String,
        options: ClientOptions,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        shutdown: watch::Receiver<bool>,
        shared: Arc<Shared>,
    ) -> Task {
        Task {
            url,
            options,
            commands,
            events,
            shutdown,
            shared,
            subscriptions: Vec::new(),
            tracks: HashMap::new(),
            pending: BTreeMap::new(),
            replay: Vec::new(),
            next_id: 1,
        }
    }

    /// Runs connections until the client is closed or reconnecting stops.
    pub async fn run(mut self, first: Ws) {
        let mut next = Some(first);
        let mut failures: u32 = 0;
        loop {
            let ws = match next.take() {
                Some(ws) => ws,
                None => match self.reconnect(&mut failures).await {
                    Some(ws) => ws,
                    None => break,
                },
            };
            let started = Instant::now();
            let end = self.serve(ws).await;
            self.shared.connected.store(false, Ordering::Release);
            if started.elapsed() >= STABLE_AFTER {
                failures = 0;
            } else {
                failures = failures.saturating_add(1);
            }
            self.connection_lost();
            debug!(code = end.code, reason = %end.reason, "connection closed");
            let closed = *self.shutdown.borrow() || end.stop || self.options.reconnect.is_none();
            let event = Event::Close {
                code: end.code,
                reason: end.reason,
            };
            if closed {
                self.emit_final(event).await;
                break;
            }
            self.emit(event).await;
        }
        self.shared.connected.store(false, Ordering::Release);
        for cmd in self.replay.drain(..) {
            cmd.fail(Error::Closed);
        }
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            cmd.fail(Error::Closed);
        }
    }

    /// Waits out the backoff and opens a new connection; `None` when it is time to stop.
    async fn reconnect(&mut self, failures: &mut u32) -> Option<Ws> {
        loop {
            let backoff = self.options.reconnect.clone()?;
            if backoff.max_attempts.is_some_and(|max| *failures >= max) {
                debug!(failures = *failures, "giving up reconnecting");
                return None;
            }
            let delay = backoff.delay(*failures);
            *failures = failures.saturating_add(1);
            debug!(?delay, attempt = *failures, "reconnecting");
            let opened = tokio::select! {
                () = shut_down(&mut self.shutdown) => return None,
                opened = async {
                    tokio::time::sleep(delay).await;
                    open(&self.url, &self.options).await
                } => opened,
            };
            match opened {
                Ok(ws) => return Some(ws),
                Err(e) => self.emit(Event::Error(e)).await,
            }
        }
    }

    /// Hands an event over, waiting while the consumer is behind (backpressure), but not
    /// past a close request.
    async fn emit(&mut self, event: Event) {
        if self.shared.events_taken.load(Ordering::Acquire) {
            tokio::select! {
                _ = self.events.send(event) => {}
                () = shut_down(&mut self.shutdown) => {}
            }
        } else {
            let _ = self.events.try_send(event);
        }
    }

    /// Emits the last event without waiting forever on a consumer that stopped reading.
    async fn emit_final(&mut self, event: Event) {
        if self.shared.events_taken.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(CLOSE_WAIT, self.events.send(event)).await;
        } else {
            let _ = self.events.try_send(event);
        }
    }

    fn next_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, mut ws: Ws) -> End {
        self.shared.connected.store(true, Ordering::Release);
        self.emit(Event::Open).await;
        if let Err(e) = self.resubscribe(&mut ws).await {
            return End::lost(e);
        }
        for cmd in std::mem::take(&mut self.replay) {
            if let Err(e) = self.send_command(&mut ws, cmd).await {
                return End::lost(e);
            }
        }
        let mut ping = self.options.ping_interval.map(|every| {
            let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        let idle = self.options.idle_timeout;
        let mut heard = Instant::now();
        loop {
            let idle_deadline = idle.map(|d| heard + d);
            tokio::select! {
                () = shut_down(&mut self.shutdown) => return close(ws).await,
                cmd = self.commands.recv() => match cmd {
                    None => return close(ws).await,
                    Some(cmd) => {
                        if let Err(e) = self.send_command(&mut ws, cmd).await {
                            return End::lost(e);
                        }
                    }
                },
                message = ws.next() => {
                    heard = Instant::now();
                    match message {
                        None => return End::lost("connection closed without a close frame"),
                        Some(Err(e)) => return End::lost(format!("connection lost: {e}")),
                        Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                        Some(Ok(Message::Close(frame))) => return closed_by_server(ws, frame).await,
                        Some(Ok(Message::Binary(b))) => {
                            let e = Error::Protocol(format!("unexpected binary message of {} bytes", b.len()));
                            self.emit(Event::Error(e)).await;
                        }
                        Some(Ok(_)) => {} // ping (answered by tungstenite), pong
                    }
                }
                () = async {
                    match ping.as_mut() {
                        Some(ticker) => { ticker.tick().await; }
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = send(&mut ws, Message::Ping(Default::default())).await {
                        return End::lost(e);
                    }
                }
                () = async {
                    match idle_deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let idle = idle.unwrap_or_default();
                    return End::lost(format!("nothing received from the server for {idle:?}"));
                }
            }
        }
    }

    /// Sends a request, registering it as pending first so that a failed write is handled
    /// like any request the connection took down with it.
    async fn send_command(&mut self, ws: &mut Ws, cmd: Command) -> Result<(), String> {
        if cmd.abandoned() {
            return Ok(()); // the caller timed out: a late publish must not happen
        }
        let id = self.next_id();
        let text = match &cmd {
            Command::Subscribe { topics, .. } => Request::subscribe(id, topics, &BTreeMap::new()).encode(),
            Command::Unsubscribe { topics, .. } => Request::unsubscribe(id, topics).encode(),
            Command::Publish { topic, data, .. } => Request::publish(id, topic, data).encode(),
        };
        let pending = match cmd {
            Command::Subscribe { topics, reply } => Pending::Subscribe { topics, reply },
            Command::Unsubscribe { topics, reply } => Pending::Unsubscribe { topics, reply },
            Command::Publish { reply, .. } => Pending::Publish { reply },
        };
        self.pending.insert(id, pending);
        send(ws, Message::text(text)).await
    }

    /// Re-establishes every confirmed subscription with `since` = the tracked positions.
    ///
    /// Each topic's `since` goes with the first request whose patterns match it, so that no
    /// earlier request sends it a snapshot that would hide a gap.
    async fn resubscribe(&mut self, ws: &mut Ws) -> Result<(), String> {
        let subscriptions = &self.subscriptions;
        self.tracks
            .retain(|topic, _| subscriptions.iter().any(|p| pattern_matches(p, topic)));
        let mut assigned: HashSet<&str> = HashSet::new();
        let mut batches: Vec<Batch> = Vec::new();
        for pattern in subscriptions {
            let full = batches
                .last()
                .is_none_or(|b| b.topics.len() >= BATCH_TOPICS || b.bytes + pattern.len() > BATCH_BYTES);
            if full {
                batches.push(Batch::default());
            }
            let batch = batches.last_mut().expect("just ensured");
            batch.topics.push(pattern.clone());
            batch.bytes += pattern.len() + 3;
            for (topic, track) in &self.tracks {
                if !pattern_matches(pattern, topic) || !assigned.insert(topic) {
                    continue;
                }
                let epoch = track.epoch.clone().unwrap_or_default();
                let cost = topic.len() + epoch.len() + 40;
                if batch.bytes + cost > SINCE_BYTES {
                    // No room to ask for recovery: the topic resets (and its snapshot follows).
                    batch.unrecoverable.insert(topic.clone());
                    continue;
                }
                batch.bytes += cost;
                batch.since.insert(
                    topic.clone(),
                    Position {
                        seq: track.seq,
                        epoch,
                    },
                );
            }
        }
        for batch in batches {
            let id = self.next_id();
            let text = Request::subscribe(id, &batch.topics, &batch.since).encode();
            let mut since = batch.unrecoverable;
            since.extend(batch.since.into_keys());
            let topics = batch.topics;
            self.pending.insert(id, Pending::Resubscribe { topics, since });
            send(ws, Message::text(text)).await?;
        }
        Ok(())
    }

    /// After a connection ends: in-flight publishes fail (they may or may not have happened),
    /// subscribe/unsubscribe requests are sent again on the next connection.
    fn connection_lost(&mut self) {
        for (_, pending) in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Subscribe { topics, reply } => {
                    self.replay.push(Command::Subscribe { topics, reply })
                }
                Pending::Unsubscribe { topics, reply } => {
                    self.replay.push(Command::Unsubscribe { topics, reply })
                }
                Pending::Publish { reply: Some(reply) } => drop(reply.send(Err(Error::Disconnected))),
                Pending::Publish { reply: None } | Pending::Resubscribe { .. } => {}
            }
        }
        self.replay.retain(|cmd| !cmd.abandoned());
    }

    async fn on_text(&mut self, text: &str) {
        let frame = match Frame::parse(text) {
            Ok(frame) => frame,
            Err(e) => return self.emit(Event::Error(e)).await,
        };
        match frame {
            Frame::Delivery(update) => self.on_delivery(update).await,
            Frame::Subscribed(id, subscribed) => match self.take_pending(id) {
                Some(Pending::Subscribe { topics, reply }) => {
                    for topic in topics {
                        if !self.subscriptions.contains(&topic) {
                            self.subscriptions.push(topic);
                        }
                    }
                    self.apply_positions(&subscribed, &BTreeSet::new()).await;
                    let _ = reply.send(Ok(subscribed));
                }
                Some(Pending::Resubscribe { since, .. }) => self.apply_positions(&subscribed, &since).await,
                other => self.mismatch(other, "subscribed").await,
            },
            Frame::Unsubscribed(id, unsubscribed) => match self.take_pending(id) {
                Some(Pending::Unsubscribe { topics, reply }) => {
                    self.subscriptions.retain(|s| !topics.contains(s));
                    let subscriptions = &self.subscriptions;
                    self.tracks
                        .retain(|topic, _| subscriptions.iter().any(|p| pattern_matches(p, topic)));
                    let _ = reply.send(Ok(unsubscribed));
                }
                other => self.mismatch(other, "unsubscribed").await,
            },
            Frame::Published(id, published) => match self.take_pending(id) {
                Some(Pending::Publish { reply }) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(published));
                    }
                }
                other => self.mismatch(other, "published").await,
            },
            Frame::Pong => {}
            Frame::Error { id, code, message } => {
                let error = Error::Server { code, message };
                self.on_error_reply(id, error).await;
            }
        }
    }

    fn take_pending(&mut self, id: Option<i64>) -> Option<Pending> {
        id.and_then(|id| self.pending.remove(&id))
    }

    /// A reply whose type does not fit the request it answers (or answers none).
    async fn mismatch(&mut self, pending: Option<Pending>, kind: &str) {
        let Some(pending) = pending else {
            debug!(kind, "reply to no pending request");
            return;
        };
        let e = || Error::Protocol(format!("unexpected `{kind}` reply"));
        match pending {
            Pending::Subscribe { reply, .. } => drop(reply.send(Err(e()))),
            Pending::Unsubscribe { reply, .. } => drop(reply.send(Err(e()))),
            Pending::Publish { reply: Some(reply) } => drop(reply.send(Err(e()))),
            Pending::Publish { reply: None } | Pending::Resubscribe { .. } => {}
        }
        self.emit(Event::Error(e())).await;
    }

    /// An `error` reply: to its caller when one waits, otherwise to the event stream.
    async fn on_error_reply(&mut self, id: Option<i64>, error: Error) {
        let unclaimed = match self.take_pending(id) {
            Some(Pending::Subscribe { reply, .. }) => reply.send(Err(error)).err().and_then(Result::err),
            Some(Pending::Unsubscribe { reply, .. }) => reply.send(Err(error)).err().and_then(Result::err),
            Some(Pending::Publish { reply: Some(reply) }) => {
                reply.send(Err(error)).err().and_then(Result::err)
            }
            Some(Pending::Resubscribe { topics, .. }) => {
                // The new server refuses what the old one accepted: drop those subscriptions.
                self.subscriptions.retain(|s| !topics.contains(s));
                let subscriptions = &self.subscriptions;
                self.tracks
                    .retain(|topic, _| subscriptions.iter().any(|p| pattern_matches(p, topic)));
                Some(error)
            }
            Some(Pending::Publish { reply: None }) | None => Some(error),
        };
        if let Some(error) = unclaimed {
            self.emit(Event::Error(error)).await;
        }
    }

    /// Applies a `subscribed` reply's positions. `since` are the topics the request asked to
    /// recover: each is either recovered (its missed updates follow), reset (a snapshot
    /// follows), or gone from the server (reset, and its next stream starts at seq 1).
    async fn apply_positions(&mut self, subscribed: &Subscribed, since: &BTreeSet<String>) {
        let fresh = |p: &Position| Track {
            seq: p.seq.saturating_sub(1),
            epoch: Some(p.epoch.clone()),
        };
        let mut resets = Vec::new();
        for (topic, position) in &subscribed.positions {
            if since.contains(topic) {
                if subscribed.recovered.get(topic) == Some(&true) {
                    if let Some(track) = self.tracks.get_mut(topic) {
                        track.epoch = Some(position.epoch.clone());
                    }
                } else {
                    resets.push(topic.clone());
                    self.tracks.insert(topic.clone(), fresh(position));
                }
                continue;
            }
            match self.tracks.get_mut(topic) {
                Some(track) if track.epoch.as_ref() == Some(&position.epoch) => {}
                Some(track) if track.epoch.is_none() => track.epoch = Some(position.epoch.clone()),
                Some(track) => {
                    // A different stream than the one delivered so far.
                    resets.push(topic.clone());
                    *track = fresh(position);
                }
                None => {
                    self.tracks.insert(topic.clone(), fresh(position));
                }
            }
        }
        for topic in since {
            if !subscribed.positions.contains_key(topic) {
                if let Some(track) = self.tracks.remove(topic) {
                    if track.seq > 0 {
                        resets.push(topic.clone());
                    }
                }
            }
        }
        for topic in resets {
            self.emit(Event::Reset { topic }).await;
        }
    }

    /// Delivers an update or snapshot unless it is a duplicate.
    async fn on_delivery(&mut self, update: Update) {
        if let Some(epoch) = &update.epoch {
            // A reset: the stream restarted (possibly at a lower seq), so the old track is void.
            let track = Track {
                seq: update.seq,
                epoch: Some(epoch.clone()),
            };
            self.tracks.insert(update.topic.clone(), track);
            let topic = update.topic.clone();
            self.emit(Event::Reset { topic }).await;
            self.emit(Event::Snapshot(update)).await;
            return;
        }
        match self.tracks.get_mut(&update.topic) {
            Some(track) if update.seq <= track.seq => return,
            Some(track) => track.seq = update.seq,
            None => {
                let track = Track {
                    seq: update.seq,
                    epoch: None,
                };
                self.tracks.insert(update.topic.clone(), track);
            }
        }
        let event = match update.kind {
            Kind::Update => Event::Update(update),
            Kind::Snapshot => Event::Snapshot(update),
        };
        self.emit(event).await;
    }
}

/// Closes the connection from our side (code 1000) and waits briefly for the server's echo.
async fn close(mut ws: Ws) -> End {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "client closed".into(),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, ws.close(Some(frame))).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    End {
        code: 1000,
        reason: "client closed".into(),
        stop: true,
    }
}

/// The server closed: let tungstenite finish the close handshake, report its code.
async fn closed_by_server(mut ws: Ws, frame: Option<CloseFrame>) -> End {
    let _ = tokio::time::timeout(CLOSE_WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    let (code, reason) = match frame {
        Some(f) => (u16::from(f.code), f.reason.as_str().to_string()),
        None => (1005, String::new()),
    };
    End {
        code,
        reason,
        stop: code == CLOSE_RATE_LIMIT,
    }
}
