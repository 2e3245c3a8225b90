//! The [`Client`] handle, the [`Events`] stream and the callback [`ClientBuilder`].

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::command::{Command, Reply};
use crate::connection::{self, Shared, Task};
use crate::error::{Error, Result};
use crate::message::{Event, Published, Subscribed, SubscriptionState, Unsubscribed, Update};
use crate::options::{ClientOptions, SubscribeOptions};
use crate::presence::{Member, Presence};
use crate::url::check_scheme;

/// A connection to a tickwire server that reconnects by itself.
///
/// Cheap to clone; every clone drives the same connection. The connection closes when
/// [`Client::close`] is called or the last clone is dropped.
///
/// Requests (`subscribe`, `unsubscribe`, `publish`, `presence`) are matched with their reply by `id` and
/// wait at most [`ClientOptions::request_timeout`], which includes waiting for a reconnect:
/// a request made while disconnected is sent once the connection is back. A subscribe or
/// unsubscribe (or presence query) in flight when the connection drops is sent again; a publish in flight fails
/// with [`Error::Disconnected`] because it may or may not have been carried out.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    shutdown: watch::Sender<bool>,
    events: Mutex<Option<mpsc::Receiver<Event>>>,
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    request_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Connects to `url` (`ws://` or `wss://`, e.g. `ws://127.0.0.1:8080/ws`).
    ///
    /// Fails when the first connection cannot be made ([`Error::Unauthorized`] when the server
    /// refuses the token); after that, the client reconnects by itself (unless
    /// [`ClientOptions::no_reconnect`], or a reconnect's token is refused: see
    /// [`ClientOptions::token_provider`]). Take the event stream with
    /// [`Client::events`]. Must be called within a Tokio runtime.
    pub async fn connect(url: impl Into<String>, options: ClientOptions) -> Result<Client> {
        Client::start(url.into(), options, None).await
    }

    /// A builder for a client driven by callbacks instead of the event stream.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            options: ClientOptions::default(),
            callbacks: Callbacks::default(),
        }
    }

    async fn start(url: String, options: ClientOptions, callbacks: Option<Callbacks>) -> Result<Client> {
        check_scheme(&url, &["ws", "wss"])?;
        let token = connection::token(&options).await?;
        let ws = connection::open(&url, &options, token.as_deref()).await?;
        let (commands, commands_rx) = mpsc::channel(options.request_buffer);
        let (events_tx, events_rx) = mpsc::channel(options.event_buffer);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared::default());
        shared.connected.store(true, Ordering::Release); // the first connection is open
        let request_timeout = options.request_timeout;
        let (events, dispatcher) = match callbacks {
            Some(callbacks) => {
                shared.events_taken.store(true, Ordering::Release);
                (None, Some(tokio::spawn(callbacks.run(events_rx))))
            }
            None => (Some(events_rx), None),
        };
        let task = Task::new(url, options, commands_rx, events_tx, shutdown_rx, shared.clone());
        let task = tokio::spawn(task.run(ws, token));
        Ok(Client {
            inner: Arc::new(Inner {
                commands,
                shutdown,
                events: Mutex::new(events),
                shared,
                task: Mutex::new(Some(task)),
                dispatcher: Mutex::new(dispatcher),
                request_timeout,
            }),
        })
    }

    /// Takes the stream of events. Returns `None` after the first call, and for clients built
    /// with callbacks.
    ///
    /// Until it is taken, events that do not fit the buffer are dropped; once taken, a full
    /// buffer holds the connection back (see the crate docs on backpressure).
    pub fn events(&self) -> Option<Events> {
        let rx = lock(&self.inner.events).take()?;
        self.inner.shared.events_taken.store(true, Ordering::Release);
        Some(Events { rx })
    }

    /// Whether a connection is currently open.
    pub fn is_connected(&self) -> bool {
        self.inner.shared.connected.load(Ordering::Acquire)
    }

    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let timeout = self.inner.request_timeout;
        let (tx, rx) = oneshot::channel();
        let exchange = async {
            (self.inner.commands.send(make(tx)).await).map_err(|_| Error::Closed)?;
            rx.await.map_err(|_| Error::Closed)?
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    /// Subscribes to topics or patterns (`prices.*`, `chat.>`). The snapshots or updates follow
    /// on the event stream; the subscription is re-established after every reconnect.
    ///
    /// A refusal is returned as [`Error::Server`]. When its code is transient (`unavailable`:
    /// a cluster node without Redis; `rate_limited`) the client also keeps retrying the
    /// subscription in the background (see [`ClientOptions::subscribe_retry`]) and reports it
    /// with [`Event::Subscription`]; [`Client::unsubscribe`] with the same topics stops that.
    ///
    /// The same as [`Client::subscribe_with`] with the default [`SubscribeOptions`].
    pub async fn subscribe<I, S>(&self, topics: I) -> Result<Subscribed>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subscribe_with(topics, SubscribeOptions::default()).await
    }

    /// [`Client::subscribe`] with options: a max rate per topic, Fossil deltas (see
    /// [`SubscribeOptions`]). The options are kept with the subscriptions and sent again with
    /// every re-subscription after a reconnect and every retry; subscribing again to a
    /// subscription the client holds replaces its options.
    ///
    /// A `max_rate` out of bounds is [`Error::InvalidMaxRate`], and nothing is sent.
    ///
    /// ```no_run
    /// # async fn run(client: tickwire_client::Client) -> Result<(), tickwire_client::Error> {
    /// use tickwire_client::SubscribeOptions;
    /// // At most 4 updates a second per topic, as deltas of the previous one.
    /// let options = SubscribeOptions::default().max_rate(4.0).delta(true);
    /// client.subscribe_with(["doc.*"], options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with<I, S>(&self, topics: I, options: SubscribeOptions) -> Result<Subscribed>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        options.check()?;
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        self.request(|reply| Command::Subscribe {
            topics,
            options,
            reply,
        })
        .await
    }

    /// Removes subscriptions, exactly as they were given to [`Client::subscribe`]. Nothing
    /// arrives through them once this returns.
    pub async fn unsubscribe<I, S>(&self, topics: I) -> Result<Unsubscribed>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        self.request(|reply| Command::Unsubscribe { topics, reply }).await
    }

    /// Publishes `data` (any serializable value; a [`RawValue`](crate::RawValue) is sent as is)
    /// to `topic` over the WebSocket and returns the seq it got. The server only accepts topics
    /// matching its publish ACL (`auth.anonymous.publish` or the token's `publish` claim) (`chat.>` by default); others fail with
    /// [`Error::Server`] code `forbidden`.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: impl Into<String>,
        data: &T,
    ) -> Result<Published> {
        let topic = topic.into();
        let data = serde_json::value::to_raw_value(data)?;
        self.request(|reply| Command::Publish {
            topic,
            data,
            reply: Some(reply),
        })
        .await
    }

    /// Queues a publish without waiting for the reply; a refusal arrives as [`Event::Error`]
    /// (and `on_error`). Fails at once with [`Error::Busy`] when the request queue is full.
    pub fn publish_nowait<T: Serialize + ?Sized>(&self, topic: impl Into<String>, data: &T) -> Result<()> {
        let command = Command::Publish {
            topic: topic.into(),
            data: serde_json::value::to_raw_value(data)?,
            reply: None,
        };
        self.inner.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Busy,
            mpsc::error::TrySendError::Closed(_) => Error::Closed,
        })
    }

    /// Who is in `topic` now: its members (a connection with an exact subscription to it is
    /// one) across the cluster, listed up to the server's `presence.max_members`, and their
    /// exact count (`{"op":"presence"}`, docs/presence.md). Needs the right to subscribe to
    /// the topic ([`Error::Server`] `forbidden` otherwise), and the topic under the server's
    /// `presence.patterns` (`bad_request` otherwise).
    ///
    /// To follow the list, subscribe with [`SubscribeOptions::presence_events`] and apply
    /// [`Event::Join`] and [`Event::Leave`] to this answer. A join that happens between the
    /// subscribe and this answer may be both in the answer and an event: apply joins by
    /// [`Member::client`], not by counting.
    ///
    /// ```no_run
    /// # async fn run(client: tickwire_client::Client) -> Result<(), tickwire_client::Error> {
    /// use tickwire_client::SubscribeOptions;
    /// client.subscribe_with(["chat.lobby"], SubscribeOptions::default().presence_events(true)).await?;
    /// let here = client.presence("chat.lobby").await?;
    /// println!("{} online: {:?}", here.count, here.members.iter().map(|m| &m.user).collect::<Vec<_>>());
    /// # Ok(()) }
    /// ```
    pub async fn presence(&self, topic: impl Into<String>) -> Result<Presence> {
        let topic = topic.into();
        self.request(|reply| Command::Presence { topic, reply }).await
    }

    /// Closes the connection (close code 1000), stops reconnecting, and waits until the last
    /// event (`Close`) has been handed over and, with callbacks, handled.
    ///
    /// From a callback, spawn it (`tokio::spawn(async move { client.close().await })`); if it
    /// is run on the callbacks' own task anyway, it only starts closing and returns, since
    /// waiting for `on_close` there would wait for itself.
    pub async fn close(&self) {
        let _ = self.inner.shutdown.send(true);
        let in_callback = {
            let dispatcher = lock(&self.inner.dispatcher);
            let current = tokio::task::try_id();
            dispatcher.as_ref().is_some_and(|d| Some(d.id()) == current)
        };
        if in_callback {
            return;
        }
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let dispatcher = lock(&self.inner.dispatcher).take();
        if let Some(dispatcher) = dispatcher {
            let _ = dispatcher.await;
        }
    }
}

/// The client's events, in order. Ends when the client is closed or stops reconnecting.
///
/// Implements [`futures_core::Stream`]; [`Events::recv`] needs no extension trait.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` once the client is done.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

type Callback<A> = Box<dyn FnMut(A) + Send>;
type Callback2<A, B> = Box<dyn FnMut(A, B) + Send>;

#[derive(Default)]
struct Callbacks {
    on_open: Option<Box<dyn FnMut() + Send>>,
    on_message: Option<Callback<Update>>,
    on_reset: Option<Callback<String>>,
    on_close: Option<Callback2<u16, String>>,
    on_error: Option<Callback<Error>>,
    on_subscription: Option<Callback2<Vec<String>, SubscriptionState>>,
    on_join: Option<Callback2<String, Member>>,
    on_leave: Option<Callback2<String, Member>>,
}

impl Callbacks {
    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        while let Some(event) = events.recv().await {
            match event {
                Event::Open => self.on_open.as_mut().map(|f| f()),
                Event::Update(u) | Event::Snapshot(u) => self.on_message.as_mut().map(|f| f(u)),
                Event::Reset { topic } => self.on_reset.as_mut().map(|f| f(topic)),
                Event::Close { code, reason } => self.on_close.as_mut().map(|f| f(code, reason)),
                Event::Error(e) => self.on_error.as_mut().map(|f| f(e)),
                Event::Subscription { topics, state } => {
                    self.on_subscription.as_mut().map(|f| f(topics, state))
                }
                Event::Join { topic, member } => self.on_join.as_mut().map(|f| f(topic, member)),
                Event::Leave { topic, member } => self.on_leave.as_mut().map(|f| f(topic, member)),
            };
        }
    }
}

/// Builds a [`Client`] whose events go to callbacks.
///
/// The callbacks run one at a time, in event order, on a task of their own; keep them short
/// (hand long work to a channel), since a slow callback holds the connection back.
///
/// ```no_run
/// # async fn run() -> Result<(), tickwire_client::Error> {
/// use tickwire_client::{Client, ClientOptions};
/// let client = Client::builder("ws://127.0.0.1:8080/ws")
///     .options(ClientOptions::default())
///     .on_message(|update| println!("{} = {}", update.topic, update.data))
///     .on_reset(|topic| println!("{topic} starts over"))
///     .connect()
///     .await?;
/// client.subscribe(["prices.*"]).await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `connect` is called"]
pub struct ClientBuilder {
    url: String,
    options: ClientOptions,
    callbacks: Callbacks,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Connection options (default: [`ClientOptions::default`]).
    pub fn options(mut self, options: ClientOptions) -> ClientBuilder {
        self.options = options;
        self
    }

    /// Called when a connection opens, the first and after every reconnect.
    pub fn on_open(mut self, f: impl FnMut() + Send + 'static) -> ClientBuilder {
        self.callbacks.on_open = Some(Box::new(f));
        self
    }

    /// Called for every update and snapshot ([`Update::kind`] tells which).
    pub fn on_message(mut self, f: impl FnMut(Update) + Send + 'static) -> ClientBuilder {
        self.callbacks.on_message = Some(Box::new(f));
        self
    }

    /// Called when a topic could not be recovered after a reconnect (see [`Event::Reset`]).
    pub fn on_reset(mut self, f: impl FnMut(String) + Send + 'static) -> ClientBuilder {
        self.callbacks.on_reset = Some(Box::new(f));
        self
    }

    /// Called with the close code and reason whenever a connection closes (see
    /// [`Event::Close`]).
    pub fn on_close(mut self, f: impl FnMut(u16, String) + Send + 'static) -> ClientBuilder {
        self.callbacks.on_close = Some(Box::new(f));
        self
    }

    /// Called for errors no caller awaits (see [`Event::Error`]).
    pub fn on_error(mut self, f: impl FnMut(Error) + Send + 'static) -> ClientBuilder {
        self.callbacks.on_error = Some(Box::new(f));
        self
    }

    /// Called when a subscription the client retries changes state (see
    /// [`Event::Subscription`]): refused with a transient error and retrying, subscribed by a
    /// retry, or failed for good.
    pub fn on_subscription(
        mut self,
        f: impl FnMut(Vec<String>, SubscriptionState) + Send + 'static,
    ) -> ClientBuilder {
        self.callbacks.on_subscription = Some(Box::new(f));
        self
    }

    /// Called with the topic and the member when someone joins a topic subscribed with
    /// [`SubscribeOptions::presence_events`] (see [`Event::Join`]).
    pub fn on_join(mut self, f: impl FnMut(String, Member) + Send + 'static) -> ClientBuilder {
        self.callbacks.on_join = Some(Box::new(f));
        self
    }

    /// Called when someone leaves such a topic (see [`Event::Leave`]).
    pub fn on_leave(mut self, f: impl FnMut(String, Member) + Send + 'static) -> ClientBuilder {
        self.callbacks.on_leave = Some(Box::new(f));
        self
    }

    /// Connects; see [`Client::connect`].
    pub async fn connect(self) -> Result<Client> {
        Client::start(self.url, self.options, Some(self.callbacks)).await
    }
}
