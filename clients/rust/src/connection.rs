//! The connection task: owns the socket, reconnects, re-subscribes with `since`, matches
//! replies to requests by `id`, deduplicates deliveries and turns everything into [`Event`]s.
//!
//! Per topic it keeps a [`Track`]: the last seq delivered to the application and the topic's
//! epoch (when known). Deliveries at or below the tracked seq are duplicates (overlapping
//! subscriptions, replays) and are dropped; after a reconnect the tracks become the `since`
//! positions of the re-subscription.
//!
//! A subscribe refused with a transient error (`unavailable`: a cluster node without Redis;
//! `rate_limited`) becomes a [`Retry`]: one entry per refused request, re-sent on its own
//! backoff by the connection loop's single retry timer (the earliest due entry), and at once
//! on a new connection. Until a retry is accepted its patterns are not in `subscriptions`, so
//! the reconnect path never subscribes them twice; an unsubscribe cancels them.
//!
//! Every subscription keeps its [`SubscribeOptions`], sent again with each re-subscription and
//! retry. Topics of delta subscriptions keep a base ([`Bases`]) that delta updates apply to;
//! one that cannot be applied is not delivered, and a [`Pending::Resync`] re-subscribes its
//! topic with `since` the last delivered position, so the server sends full data from there.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tickwire_proto::{close, code, pattern_matches};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::debug;

use crate::command::{Command, Reply};
use crate::delta::Bases;
use crate::error::{Error, Result};
use crate::message::{
    DeltaUpdate, Event, Frame, Kind, Position, Published, Request, Subscribed, SubscriptionState,
    Unsubscribed, Update,
};
use crate::options::{default_tls, ClientOptions, SubscribeOptions};
use crate::presence::Presence;
use crate::subscriptions::Subscriptions;
use crate::url::with_token;

/// The client's WebSocket: tokio-tungstenite over TCP or rustls.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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

/// Refusals that say "not now" rather than "no": the request was not carried out and the same
/// request may succeed later (Redis back, rate limit refilled).
fn transient(code: &str) -> bool {
    code == code::UNAVAILABLE || code == code::RATE_LIMITED
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
    epoch: Option<Arc<str>>,
}

/// A request waiting for its reply.
enum Pending {
    Subscribe {
        topics: Vec<String>,
        options: SubscribeOptions,
        reply: Reply<Subscribed>,
        /// Topics unsubscribed since it was sent: not retried if it is refused.
        cancelled: Vec<String>,
    },
    /// An internal re-subscription after a reconnect; `since` are the topics it gave positions for.
    Resubscribe {
        topics: Vec<String>,
        options: SubscribeOptions,
        since: BTreeSet<String>,
    },
    /// A retry of a refused subscribe (the `attempt`th); unsubscribed topics are removed from
    /// `topics` while it is in flight.
    Retry {
        topics: Vec<String>,
        options: SubscribeOptions,
        attempt: u32,
        since: BTreeSet<String>,
    },
    /// A subscription sent again, with `since` for `topic` alone, because a delta update of
    /// `topic` could not be applied: the server replays (or snapshots) it as full data. The
    /// subscription itself is unchanged either way.
    Resync {
        topic: String,
    },
    Unsubscribe {
        topics: Vec<String>,
        reply: Reply<Unsubscribed>,
    },
    Publish {
        reply: Option<Reply<Published>>,
    },
    Presence {
        topic: String,
        reply: Reply<Presence>,
    },
}

/// One re-subscribe request being assembled.
#[derive(Default)]
struct Batch {
    topics: Vec<String>,
    /// The options of all of `topics`.
    options: SubscribeOptions,
    since: BTreeMap<String, Position>,
    /// Tracked topics whose `since` did not fit.
    unrecoverable: BTreeSet<String>,
    bytes: usize,
}

/// A refused subscribe waiting for its next attempt.
struct Retry {
    topics: Vec<String>,
    options: SubscribeOptions,
    /// The number of the coming attempt: 1 after the first refusal.
    attempt: u32,
}

/// What the token provider says after the server refused a token.
enum Renewal {
    /// A different token: worth another attempt.
    New(String),
    /// The same token, or no provider: the refusal is final.
    None,
    /// The provider failed.
    Failed(Error),
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

/// A token from the provider, when there is one.
pub(crate) async fn token(options: &ClientOptions) -> Result<Option<String>> {
    match &options.token {
        Some(provider) => Ok(Some(provider.token().await.map_err(Error::Token)?)),
        None => Ok(None),
    }
}

/// Opens one connection with `token`: TCP, TLS for `wss://`, WebSocket handshake.
pub async fn open(url: &str, options: &ClientOptions, token: Option<&str>) -> Result<Ws> {
    let target = match token {
        Some(token) => with_token(url, token),
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
            let content_type = (response.headers().get(tungstenite::http::header::CONTENT_TYPE))
                .and_then(|v| v.to_str().ok());
            let status = response.status().as_u16();
            Err(Error::from_handshake(url, status, content_type, body))
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
    /// Subscriptions the server confirmed, with their options.
    subscriptions: Subscriptions,
    tracks: HashMap<String, Track>,
    /// The last data of each topic a delta subscription matches.
    bases: Bases,
    /// Delta updates that could not be applied since the last read, (topic, seq): their topics
    /// are re-subscribed for full data once the frame is handled.
    resyncs: Vec<(String, u64)>,
    /// Topics with a [`Pending::Resync`] in flight: their deltas are dropped until it is
    /// answered, without asking again.
    resyncing: HashSet<String>,
    pending: BTreeMap<i64, Pending>,
    /// Subscribe/unsubscribe requests in flight when the connection dropped, to send again.
    replay: Vec<Command>,
    /// Refused subscribes by due time (the `u64` tells equal times apart); never more entries
    /// than distinct refused subscriptions, since a topic already waiting is not added twice.
    retries: BTreeMap<(Instant, u64), Retry>,
    next_retry: u64,
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
            subscriptions: Subscriptions::default(),
            tracks: HashMap::new(),
            bases: Bases::default(),
            resyncs: Vec::new(),
            resyncing: HashSet::new(),
            pending: BTreeMap::new(),
            replay: Vec::new(),
            retries: BTreeMap::new(),
            next_retry: 0,
            next_id: 1,
        }
    }

    /// Runs connections, the first opened with `token`, until the client is closed or
    /// reconnecting stops.
    pub async fn run(mut self, first: Ws, token: Option<String>) {
        let mut next = Some(first);
        // The token of the open connection, and a replacement for the next one.
        let mut current = token;
        let mut fresh: Option<String> = None;
        let mut failures: u32 = 0;
        loop {
            let ws = match next.take() {
                Some(ws) => ws,
                None => match self.reconnect(&mut failures, fresh.take()).await {
                    Some((ws, token)) => {
                        current = token;
                        ws
                    }
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
            if end.code == close::TOKEN_EXPIRED {
                // Reconnecting with the token that just expired would be refused (or, within
                // its last second, accepted and closed again at once): only a new one helps.
                match self.renewed_token(current.as_deref()).await {
                    Renewal::New(token) => fresh = Some(token),
                    Renewal::Failed(e) => self.emit(Event::Error(e)).await,
                    Renewal::None => {
                        debug!("token expired and no new one: not reconnecting");
                        break;
                    }
                }
            }
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

    /// Waits out the backoff and opens a new connection (with `fresh` as its token, else one
    /// from the provider); returns it with its token, or `None` when it is time to stop.
    ///
    /// Refused credentials (401/403) stop it unless the token provider, asked again at once,
    /// supplies a token other than the refused one: the same token would only be refused again,
    /// forever (an expired token in a loop). The new token is kept for the next attempt.
    async fn reconnect(
        &mut self,
        failures: &mut u32,
        mut fresh: Option<String>,
    ) -> Option<(Ws, Option<String>)> {
        loop {
            let backoff = self.options.reconnect.clone()?;
            if backoff.max_attempts.is_some_and(|max| *failures >= max) {
                debug!(failures = *failures, "giving up reconnecting");
                return None;
            }
            let delay = backoff.delay(*failures);
            *failures = failures.saturating_add(1);
            debug!(?delay, attempt = *failures, "reconnecting");
            let given = fresh.take();
            let (used, opened) = tokio::select! {
                () = shut_down(&mut self.shutdown) => return None,
                opened = async {
                    tokio::time::sleep(delay).await;
                    let used = match given {
                        Some(token) => Some(token),
                        None => match token(&self.options).await {
                            Ok(token) => token,
                            Err(e) => return (None, Err(e)),
                        },
                    };
                    let opened = open(&self.url, &self.options, used.as_deref()).await;
                    (used, opened)
                } => opened,
            };
            match opened {
                Ok(ws) => return Some((ws, used)),
                Err(e @ Error::Unauthorized { .. }) => match self.renewed_token(used.as_deref()).await {
                    Renewal::New(token) => {
                        fresh = Some(token);
                        self.emit(Event::Error(e)).await;
                    }
                    Renewal::Failed(provider) => {
                        self.emit(Event::Error(e)).await;
                        self.emit(Event::Error(provider)).await;
                    }
                    Renewal::None => {
                        debug!(error = %e, "credentials refused: not reconnecting");
                        self.emit_final(Event::Error(e)).await;
                        return None;
                    }
                },
                Err(e) => self.emit(Event::Error(e)).await,
            }
        }
    }

    /// Asks the token provider for a token to replace `refused`; a close request ends the
    /// wait (and the client).
    async fn renewed_token(&mut self, refused: Option<&str>) -> Renewal {
        let asked = tokio::select! {
            () = shut_down(&mut self.shutdown) => return Renewal::None,
            asked = token(&self.options) => asked,
        };
        match asked {
            Ok(Some(token)) if Some(token.as_str()) != refused => Renewal::New(token),
            Ok(_) => Renewal::None,
            // Maybe the provider's own source is down for a moment: the next attempt asks again.
            Err(e) => Renewal::Failed(e),
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
        // A new connection may reach a node that can serve them: retry now, not on the old
        // schedule. One at a time, so that a failed write leaves the rest waiting.
        while let Some((_, retry)) = self.retries.pop_first() {
            if let Err(e) = self.send_retry(&mut ws, retry).await {
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
            let retry_due = self.retries.keys().next().map(|(due, _)| *due);
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
                        Some(Ok(Message::Text(text))) => {
                            self.on_text(text.as_str()).await;
                            if let Err(e) = self.send_resyncs(&mut ws).await {
                                return End::lost(e);
                            }
                        }
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
                () = async {
                    match retry_due {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = self.send_due_retries(&mut ws).await {
                        return End::lost(e);
                    }
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
            Command::Subscribe { topics, options, .. } => {
                Request::subscribe(id, topics, &BTreeMap::new(), *options).encode()
            }
            Command::Unsubscribe { topics, .. } => Request::unsubscribe(id, topics).encode(),
            Command::Publish { topic, data, .. } => Request::publish(id, topic, data).encode(),
            Command::Presence { topic, .. } => Request::presence(id, topic).encode(),
        };
        if let Command::Unsubscribe { topics, .. } = &cmd {
            self.cancel_retries(topics);
        }
        let pending = match cmd {
            Command::Subscribe {
                topics,
                options,
                reply,
            } => Pending::Subscribe {
                topics,
                options,
                reply,
                cancelled: Vec::new(),
            },
            Command::Unsubscribe { topics, reply } => Pending::Unsubscribe { topics, reply },
            Command::Publish { reply, .. } => Pending::Publish { reply },
            Command::Presence { topic, reply } => Pending::Presence { topic, reply },
        };
        self.pending.insert(id, pending);
        send(ws, Message::text(text)).await
    }

    /// Sends the retries that are due.
    async fn send_due_retries(&mut self, ws: &mut Ws) -> Result<(), String> {
        let now = Instant::now();
        while let Some(entry) = self.retries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let retry = entry.remove();
            self.send_retry(ws, retry).await?;
        }
        Ok(())
    }

    /// Sends one retry, asking to recover the tracked topics only its patterns cover (those a
    /// refused re-subscription left without a subscription).
    async fn send_retry(&mut self, ws: &mut Ws, retry: Retry) -> Result<(), String> {
        let mut bytes: usize = retry.topics.iter().map(|t| t.len() + 3).sum();
        let mut since = BTreeMap::new();
        let mut asked = BTreeSet::new();
        for (topic, track) in &self.tracks {
            let ours = retry.topics.iter().any(|p| pattern_matches(p, topic));
            if !ours || self.subscriptions.covers(topic) {
                continue;
            }
            asked.insert(topic.clone());
            let epoch: Arc<str> = track.epoch.clone().unwrap_or_else(|| "".into());
            let cost = topic.len() + epoch.len() + 40;
            if bytes + cost > SINCE_BYTES {
                continue; // no room to ask for recovery: the topic resets, as in `resubscribe`
            }
            bytes += cost;
            since.insert(
                topic.clone(),
                Position {
                    seq: track.seq,
                    epoch,
                },
            );
        }
        let id = self.next_id();
        let text = Request::subscribe(id, &retry.topics, &since, retry.options).encode();
        let pending = Pending::Retry {
            topics: retry.topics,
            options: retry.options,
            attempt: retry.attempt,
            since: asked,
        };
        self.pending.insert(id, pending);
        send(ws, Message::text(text)).await
    }

    fn schedule_retry(&mut self, retry: Retry, due: Instant) {
        self.next_retry = self.next_retry.wrapping_add(1);
        self.retries.insert((due, self.next_retry), retry);
    }

    /// An unsubscribe stops the retries of its topics, waiting or in flight.
    fn cancel_retries(&mut self, topics: &[String]) {
        self.retries.retain(|_, retry| {
            retry.topics.retain(|t| !topics.contains(t));
            !retry.topics.is_empty()
        });
        for pending in self.pending.values_mut() {
            match pending {
                Pending::Retry { topics: retried, .. } => retried.retain(|t| !topics.contains(t)),
                Pending::Subscribe { cancelled, .. } => cancelled.extend(topics.iter().cloned()),
                _ => {}
            }
        }
    }

    /// A subscribe nobody else will send again was refused: schedules a retry when the
    /// refusal is transient and retries remain (`done` refused so far), and returns the state.
    fn refused(
        &mut self,
        topics: &[String],
        options: SubscribeOptions,
        done: u32,
        error: Error,
    ) -> SubscriptionState {
        let delay = match &self.options.subscribe_retry {
            Some(backoff)
                if error.code().is_some_and(transient)
                    && backoff.max_attempts.is_none_or(|max| done < max) =>
            {
                backoff.delay(done)
            }
            _ => return SubscriptionState::Failed { error },
        };
        // A topic already active or already waiting needs no second retry.
        let waiting: Vec<String> = (topics.iter())
            .filter(|t| !self.subscriptions.contains(t))
            .filter(|t| !self.retries.values().any(|r| r.topics.contains(*t)))
            .cloned()
            .collect();
        let attempt = done.saturating_add(1);
        if !waiting.is_empty() {
            let retry = Retry {
                topics: waiting,
                options,
                attempt,
            };
            self.schedule_retry(retry, Instant::now() + delay);
        }
        SubscriptionState::Retrying {
            error,
            attempt,
            delay,
        }
    }

    /// Forgets the tracks of topics no subscription, waiting retry or retry in flight covers,
    /// and the bases of topics no such one asking for deltas covers.
    fn prune_tracks(&mut self) {
        let retried = (self.retries.values()).map(|r| (r.topics.as_slice(), r.options.delta));
        let in_flight = self.pending.values().filter_map(|p| match p {
            Pending::Retry { topics, options, .. } => Some((topics.as_slice(), options.delta)),
            _ => None,
        });
        let mut wanted: Vec<(&String, bool)> = Vec::new();
        for (topics, delta) in retried.chain(in_flight) {
            wanted.extend(topics.iter().map(|t| (t, delta)));
        }
        let covered = |topic: &str, delta_only: bool| {
            (wanted.iter()).any(|(p, delta)| (*delta || !delta_only) && pattern_matches(p, topic))
        };
        let subscriptions = &self.subscriptions;
        self.tracks
            .retain(|topic, _| subscriptions.covers(topic) || covered(topic, false));
        self.bases
            .retain(|topic| subscriptions.delta_for(topic).is_some() || covered(topic, true));
    }

    /// Re-establishes every confirmed subscription with `since` = the tracked positions.
    ///
    /// Each topic's `since` goes with the first request whose patterns match it, so that no
    /// earlier request sends it a snapshot that would hide a gap.
    async fn resubscribe(&mut self, ws: &mut Ws) -> Result<(), String> {
        self.prune_tracks();
        let mut assigned: HashSet<&str> = HashSet::new();
        let mut batches: Vec<Batch> = Vec::new();
        for sub in self.subscriptions.by_options() {
            let pattern = &sub.pattern;
            let full = batches.last().is_none_or(|b| {
                b.options != sub.options
                    || b.topics.len() >= BATCH_TOPICS
                    || b.bytes + pattern.len() > BATCH_BYTES
            });
            if full {
                batches.push(Batch {
                    options: sub.options,
                    ..Batch::default()
                });
            }
            let batch = batches.last_mut().expect("just ensured");
            batch.topics.push(pattern.clone());
            batch.bytes += pattern.len() + 3;
            for (topic, track) in &self.tracks {
                if !pattern_matches(pattern, topic) || !assigned.insert(topic) {
                    continue;
                }
                let epoch: Arc<str> = track.epoch.clone().unwrap_or_else(|| "".into());
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
            let text = Request::subscribe(id, &batch.topics, &batch.since, batch.options).encode();
            let mut since = batch.unrecoverable;
            since.extend(batch.since.into_keys());
            let pending = Pending::Resubscribe {
                topics: batch.topics,
                options: batch.options,
                since,
            };
            self.pending.insert(id, pending);
            send(ws, Message::text(text)).await?;
        }
        Ok(())
    }

    /// After a connection ends: in-flight publishes fail (they may or may not have happened),
    /// subscribe/unsubscribe requests are sent again on the next connection.
    fn connection_lost(&mut self) {
        for (_, pending) in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Subscribe {
                    topics,
                    options,
                    reply,
                    ..
                } => self.replay.push(Command::Subscribe {
                    topics,
                    options,
                    reply,
                }),
                Pending::Retry {
                    topics,
                    options,
                    attempt,
                    ..
                } if !topics.is_empty() => {
                    let retry = Retry {
                        topics,
                        options,
                        attempt,
                    };
                    self.schedule_retry(retry, Instant::now())
                }
                Pending::Unsubscribe { topics, reply } => {
                    self.replay.push(Command::Unsubscribe { topics, reply })
                }
                Pending::Presence { topic, reply } => self.replay.push(Command::Presence { topic, reply }),
                Pending::Publish { reply: Some(reply) } => drop(reply.send(Err(Error::Disconnected))),
                // The re-subscription of the next connection asks for what these asked for.
                Pending::Publish { reply: None }
                | Pending::Resubscribe { .. }
                | Pending::Retry { .. }
                | Pending::Resync { .. } => {}
            }
        }
        self.replay.retain(|cmd| !cmd.abandoned());
        self.resyncs.clear();
        self.resyncing.clear();
    }

    async fn on_text(&mut self, text: &str) {
        let frame = match Frame::parse(text) {
            Ok(frame) => frame,
            Err(e) => return self.emit(Event::Error(e)).await,
        };
        match frame {
            Frame::Delivery(update) => self.on_delivery(update).await,
            Frame::Delta(update) => self.on_delta(update).await,
            Frame::Subscribed(id, subscribed) => match self.take_pending(id) {
                Some(Pending::Subscribe {
                    topics,
                    options,
                    reply,
                    ..
                }) => {
                    // Accepted now: an older refusal of the same topics needs no retry.
                    self.retries.retain(|_, retry| {
                        retry.topics.retain(|t| !topics.contains(t));
                        !retry.topics.is_empty()
                    });
                    self.confirmed(&topics, options);
                    self.apply_positions(&subscribed, &BTreeSet::new()).await;
                    let _ = reply.send(Ok(subscribed));
                }
                Some(Pending::Resubscribe { since, .. }) => self.apply_positions(&subscribed, &since).await,
                Some(Pending::Retry {
                    topics,
                    options,
                    since,
                    ..
                }) => {
                    if topics.is_empty() {
                        return; // unsubscribed while in flight: the `unsubscribed` reply follows
                    }
                    self.confirmed(&topics, options);
                    let state = SubscriptionState::Subscribed;
                    self.emit(Event::Subscription { topics, state }).await;
                    self.apply_positions(&subscribed, &since).await;
                }
                Some(Pending::Resync { topic }) => {
                    self.resyncing.remove(&topic);
                    self.apply_positions(&subscribed, &BTreeSet::from([topic])).await;
                }
                other => self.mismatch(other, "subscribed").await,
            },
            Frame::Unsubscribed(id, unsubscribed) => match self.take_pending(id) {
                Some(Pending::Unsubscribe { topics, reply }) => {
                    self.subscriptions.remove(&topics);
                    self.prune_tracks();
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
            Frame::Presence(id, presence) => match self.take_pending(id) {
                Some(Pending::Presence { reply, .. }) => drop(reply.send(Ok(presence))),
                other => self.mismatch(other, "presence").await,
            },
            Frame::Join(c) => {
                self.emit(Event::Join {
                    topic: c.topic,
                    member: c.member,
                })
                .await
            }
            Frame::Leave(c) => {
                self.emit(Event::Leave {
                    topic: c.topic,
                    member: c.member,
                })
                .await
            }
            Frame::Pong => {}
            Frame::Error { id, code, message } => self.on_error_reply(id, code, message).await,
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
            Pending::Presence { reply, .. } => drop(reply.send(Err(e()))),
            Pending::Resync { topic } => drop(self.resyncing.remove(&topic)),
            Pending::Publish { reply: None } | Pending::Resubscribe { .. } | Pending::Retry { .. } => {}
        }
        self.emit(Event::Error(e())).await;
    }

    /// An `error` reply: to its caller when one waits, otherwise to the event stream. A
    /// refused subscribe may also become a retry (see [`Task::refused`]).
    async fn on_error_reply(&mut self, id: Option<i64>, code: String, message: String) {
        let error = || Error::Server {
            code: code.clone(),
            message: message.clone(),
        };
        let unclaimed = match self.take_pending(id) {
            Some(Pending::Subscribe {
                topics,
                options,
                reply,
                cancelled,
            }) => {
                let wanted: Vec<String> = (topics.iter())
                    .filter(|t| !cancelled.contains(t))
                    .cloned()
                    .collect();
                let state = self.refused(&wanted, options, 0, error());
                let unclaimed = reply.send(Err(error())).err().and_then(Result::err);
                // A refusal for good is the caller's to report; a retry is news.
                if matches!(state, SubscriptionState::Retrying { .. }) && !wanted.is_empty() {
                    self.emit(Event::Subscription { topics, state }).await;
                }
                unclaimed
            }
            Some(Pending::Unsubscribe { reply, .. }) => reply.send(Err(error())).err().and_then(Result::err),
            Some(Pending::Presence { reply, .. }) => reply.send(Err(error())).err().and_then(Result::err),
            Some(Pending::Publish { reply: Some(reply) }) => {
                reply.send(Err(error())).err().and_then(Result::err)
            }
            Some(Pending::Resubscribe { topics, options, .. }) => {
                // The new server refuses what the old one accepted: drop those subscriptions,
                // and retry them when the refusal is transient (their tracks are kept for it).
                self.subscriptions.remove(&topics);
                self.background_refusal(topics, options, 0, error())
                    .await
                    .then(error)
            }
            Some(Pending::Retry {
                topics,
                options,
                attempt,
                ..
            }) if !topics.is_empty() => self
                .background_refusal(topics, options, attempt, error())
                .await
                .then(error),
            Some(Pending::Retry { .. }) => None, // unsubscribed while in flight
            Some(Pending::Resync { topic }) => {
                // The subscription stands (a refused subscribe changes nothing); the topic has
                // no base, so its next delta asks again.
                self.resyncing.remove(&topic);
                Some(error())
            }
            Some(Pending::Publish { reply: None }) | None => Some(error()),
        };
        if let Some(error) = unclaimed {
            self.emit(Event::Error(error)).await;
        }
    }

    /// A refused subscribe nobody awaits (a re-subscription or a retry): reports its state;
    /// true when the refusal is final (the error then goes to [`Event::Error`] too).
    async fn background_refusal(
        &mut self,
        topics: Vec<String>,
        options: SubscribeOptions,
        done: u32,
        error: Error,
    ) -> bool {
        let state = self.refused(&topics, options, done, error);
        let failed = matches!(state, SubscriptionState::Failed { .. });
        self.prune_tracks();
        self.emit(Event::Subscription { topics, state }).await;
        failed
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
                self.bases.forget(topic);
                if let Some(track) = self.tracks.remove(topic) {
                    if track.seq > 0 {
                        resets.push(topic.clone());
                    }
                }
            }
        }
        for topic in resets {
            // Another stream: its next delta cannot apply to this one's data.
            self.bases.forget(&topic);
            self.emit(Event::Reset { topic }).await;
        }
    }

    /// Delivers an update or snapshot unless it is a duplicate; keeps its data as the base of
    /// the topic's next delta when a delta subscription matches the topic.
    async fn on_delivery(&mut self, update: Update) {
        if let Some(epoch) = &update.epoch {
            // A reset: the stream restarted (possibly at a lower seq), so the old track is void.
            let track = Track {
                seq: update.seq,
                epoch: Some(epoch.as_str().into()),
            };
            self.tracks.insert(update.topic.clone(), track);
            self.bases.forget(&update.topic);
            self.keep_base(&update);
            let topic = update.topic.clone();
            self.emit(Event::Reset { topic }).await;
            self.emit(Event::Snapshot(update)).await;
            return;
        }
        // Before the duplicate check: whatever the server sent last is what it bases on.
        self.keep_base(&update);
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

    fn keep_base(&mut self, update: &Update) {
        if self.bases.has(&update.topic) || self.subscriptions.delta_for(&update.topic).is_some() {
            (self.bases).record(&update.topic, update.seq, update.data.get());
        }
    }

    /// A delta update: delivered with its full data when it applies; otherwise dropped, with
    /// the topic's base, and the topic re-subscribed for full data (once the frame is handled,
    /// see [`Task::send_resyncs`]).
    async fn on_delta(&mut self, delta: DeltaUpdate) {
        match self.bases.apply(&delta) {
            Ok(data) => {
                let update = Update {
                    kind: Kind::Update,
                    topic: delta.topic,
                    seq: delta.seq,
                    ts: delta.ts,
                    data,
                    epoch: None,
                };
                self.on_delivery(update).await;
            }
            // The deltas sent before the server saw the resync's request: expected.
            Err(_) if self.resyncing.contains(&delta.topic) => {
                debug!(topic = %delta.topic, seq = delta.seq, "delta dropped while resyncing");
            }
            Err(reason) => {
                self.bases.forget(&delta.topic);
                let error = Error::Delta {
                    topic: delta.topic.clone(),
                    seq: delta.seq,
                    reason,
                };
                self.resyncing.insert(delta.topic.clone());
                self.resyncs.push((delta.topic, delta.seq));
                self.emit(Event::Error(error)).await;
            }
        }
    }

    /// Sends a subscription again, with its options, for each topic whose delta could not be
    /// applied, with `since` its last delivered position (and at most the seq before the
    /// failed delta), so that the server replays the missed publications as full data, or
    /// resets the topic with a snapshot. The subscription that matches the topic is sent as
    /// it is: the server keeps one it holds and only catches the topic up.
    async fn send_resyncs(&mut self, ws: &mut Ws) -> Result<(), String> {
        for (topic, seq) in std::mem::take(&mut self.resyncs) {
            let sub = (self.subscriptions.delta_for(&topic)).or_else(|| {
                self.subscriptions
                    .iter()
                    .find(|s| pattern_matches(&s.pattern, &topic))
            });
            let Some(sub) = sub.cloned() else {
                self.resyncing.remove(&topic); // unsubscribed meanwhile: nothing to resync
                continue;
            };
            let track = self.tracks.get(&topic);
            let position = Position {
                seq: track.map_or(u64::MAX, |t| t.seq).min(seq.saturating_sub(1)),
                epoch: track.and_then(|t| t.epoch.clone()).unwrap_or_else(|| "".into()),
            };
            let id = self.next_id();
            let since = BTreeMap::from([(topic.clone(), position)]);
            let patterns = [sub.pattern];
            let text = Request::subscribe(id, &patterns, &since, sub.options).encode();
            self.pending.insert(id, Pending::Resync { topic });
            send(ws, Message::text(text)).await?;
        }
        Ok(())
    }

    /// Records subscriptions the server accepted, with their options.
    fn confirmed(&mut self, topics: &[String], options: SubscribeOptions) {
        let mut dropped_delta = false;
        for topic in topics {
            dropped_delta |= self.subscriptions.insert(topic.clone(), options);
        }
        if dropped_delta {
            self.prune_tracks(); // bases of topics no delta subscription matches any more
        }
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
        stop: code == close::RATE_LIMIT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn task() -> Task {
        let (_commands_tx, commands) = mpsc::channel(1);
        let (events, _events_rx) = mpsc::channel(64);
        let (_shutdown_tx, shutdown) = watch::channel(false);
        let options = ClientOptions::default();
        Task::new(
            "ws://x/ws".into(),
            options,
            commands,
            events,
            shutdown,
            Arc::default(),
        )
    }

    fn update(topic: &str, seq: u64) -> Update {
        Update {
            kind: Kind::Update,
            topic: topic.into(),
            seq,
            ts: 1,
            data: RawValue::from_string(format!("{{\"seq\": {seq}}}")).unwrap(),
            epoch: None,
        }
    }

    #[tokio::test]
    async fn only_topics_of_delta_subscriptions_keep_a_base_until_unsubscribed() {
        let mut task = task();
        let delta = SubscribeOptions::default().delta(true);
        task.confirmed(&["doc.*".into()], delta);
        task.confirmed(&["doc.7".into(), "plain.>".into()], SubscribeOptions::default());
        for (topic, seq) in [("doc.7", 3), ("doc.8", 1), ("plain.x", 5)] {
            task.on_delivery(update(topic, seq)).await;
        }
        assert!(task.bases.has("doc.7") && task.bases.has("doc.8"));
        assert!(!task.bases.has("plain.x"), "no delta subscription matches it");

        // doc.7 keeps its track (its own subscription) but not its base.
        task.subscriptions.remove(&["doc.*".into()]);
        task.prune_tracks();
        assert!(!task.bases.has("doc.7") && !task.bases.has("doc.8"));
        assert!(task.tracks.contains_key("doc.7") && !task.tracks.contains_key("doc.8"));

        // Subscribing again without deltas drops the bases too.
        task.confirmed(&["doc.*".into()], delta);
        task.on_delivery(update("doc.8", 2)).await;
        assert!(task.bases.has("doc.8"));
        task.confirmed(&["doc.*".into()], SubscribeOptions::default());
        assert!(!task.bases.has("doc.8"));
    }
}
