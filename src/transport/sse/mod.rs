//! The Server-Sent Events transport: one `GET /sse` stream, from its subscription to its end.
//! The accepting (origin, credentials, the URL's parameters, the connection slot, CORS) is
//! `transport::http::sse`'s; this module runs what follows, and the session
//! (`crate::session`) does not know which transport it serves.
//!
//! A stream is a subscription opened from a URL: its client cannot send, so [`open`] asks the
//! session to subscribe directly (`Session::subscribe`) and answers with the outcome before any
//! byte is streamed, so that a refusal is an HTTP status. Then two halves run:
//!
//! - the session's task: the stream's timer (the WebSocket transport's `Watchdog`: pings every
//!   `server.ping_interval`, the token's expiry; no idle timeout, since the client cannot send
//!   anything to show it is alive) and the drain; each ends the stream by closing the outbox
//!   with its reason, after which the task ends the session's subscriptions;
//! - the response body ([`events`]), which hyper polls: it drains the outbox, re-frames its
//!   WebSocket frames as events (the `type` as the event's name, the JSON as `data:`, the
//!   stream's position as `id:`, the close as a last `close` event) and ends with it.
//!
//! The body going away (the client left) closes the outbox too, which ends the task. Recovery
//! across reconnects needs nothing kept here: the `id:` of each event ([`cursor`]) is the
//! stream's position in every topic it carries, and comes back as `Last-Event-ID`.
//!
//! A stream costs a task more than a WebSocket connection (whose reader and writer share one):
//! the body is polled by the HTTP connection's task, the session's future lives in its own.

mod cursor;
mod events;
mod head;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::debug;

use crate::app::{App, ConnectionSlot};
use crate::auth::acl::Identity;
use crate::protocol::disconnect::Disconnect;
use crate::protocol::error::RequestError;
use crate::protocol::Position;
use crate::pubsub::outbox::Outbox;
use crate::session::Session;
use crate::topic::{Pattern, Topic};
use crate::transport::proxy::ClientAddr;
use crate::transport::ws::Watchdog;

pub use self::cursor::MAX_ID_CHARS;
pub use self::events::Events;

/// What a stream's URL (and headers) asked for, checked.
pub struct Stream {
    pub identity: Identity,
    pub topics: Vec<Pattern>,
    /// `Last-Event-ID`, or the `last_event_id` parameter: where a reconnecting client stands.
    pub last_event_id: Option<String>,
    pub max_rate: Option<f64>,
    /// `delta=fossil`.
    pub delta: bool,
}

/// Subscribes the stream and returns its body once the `subscribed` event and the catch-up are
/// queued; or the refusal, with nothing streamed.
pub async fn open(
    app: &Arc<App>,
    slot: ConnectionSlot,
    addr: ClientAddr,
    stream: Stream,
) -> Result<Events, RequestError> {
    let since = cursor::since(&stream.topics, stream.last_event_id.as_deref()).unwrap_or_default();
    let cursor = cursor::Cursor::new(&stream.topics, since.clone());
    let outbox = Arc::new(Outbox::compressed(app.settings.queue.max_bytes, None));
    let (answer_tx, answer_rx) = oneshot::channel();
    let subscription = Subscription {
        identity: stream.identity,
        topics: stream.topics,
        since,
        max_rate: stream.max_rate,
        delta: stream.delta,
    };
    (app.tasks).spawn(run(
        app.clone(),
        slot,
        addr,
        outbox.clone(),
        subscription,
        answer_tx,
    ));
    match answer_rx.await {
        Ok(Ok(())) => Ok(Events::new(
            outbox,
            cursor,
            app.node.hub().clone(),
            app.metrics.clone(),
        )),
        Ok(Err(e)) => Err(e),
        // The task ended without answering: only a panic does that.
        Err(_) => Err(RequestError::Unavailable("the stream could not start")),
    }
}

/// The session's side of a stream.
struct Subscription {
    identity: Identity,
    topics: Vec<Pattern>,
    since: HashMap<Topic, Position>,
    max_rate: Option<f64>,
    delta: bool,
}

/// The stream's session: subscribes, answers `answer`, then waits for the end (the timer, the
/// drain, or the outbox closing: the client left, or was too slow) and ends the subscriptions.
///
/// An `async` block rather than an `async fn`: the latter keeps a second copy of every
/// argument in the future, for the life of the stream.
#[allow(clippy::manual_async_fn)]
fn run(
    app: Arc<App>,
    slot: ConnectionSlot,
    addr: ClientAddr,
    outbox: Arc<Outbox>,
    subscription: Subscription,
    answer: oneshot::Sender<Result<(), RequestError>>,
) -> impl Future<Output = ()> + Send {
    async move {
        let Subscription {
            identity,
            topics,
            since,
            max_rate,
            delta,
        } = subscription;
        let who = app.node.new_subscriber(outbox.clone());
        let subject = identity.subject.as_deref().unwrap_or("-");
        let proxy = addr.proxy.map(tracing::field::display);
        debug!(addr = %addr, proxy, client = who.id, subject, "sse stream opened");
        let watchdog = Watchdog::new(identity.expires);
        let mut session = Session::new(&app, &who, identity, &watchdog);
        // Boxed: a subscribe's future is far larger than what the stream keeps afterwards.
        let subscribed = Box::pin(session.subscribe(None, topics, since, max_rate, delta, false)).await;
        let refused = subscribed.is_err();
        if answer.send(subscribed).is_err() || refused {
            // Nobody will read it: the request went away while subscribing, or was refused.
            outbox.close(Disconnect::ClientClose);
        }
        let server = &app.settings.server;
        tokio::select! {
            reason = watchdog.run(&outbox, server.ping_interval, None) => outbox.close(reason),
            () = app.drain.cancelled() => outbox.close(Disconnect::Shutdown),
            () = outbox.closed() => {}
        }
        session.close().await;
        let reason = outbox.reason().unwrap_or(Disconnect::Error);
        if !refused {
            app.metrics.disconnected(reason);
        }
        let proxy = addr.proxy.map(tracing::field::display);
        debug!(addr = %addr, proxy, client = who.id, reason = reason.label(), "sse stream closed");
        drop(slot);
    }
}
