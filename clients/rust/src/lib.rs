//! Client library for tickwire, a real-time push server: subscribe to topics over WebSocket, get a
//! gap-free stream across reconnects, and publish over WebSocket or HTTP.
//!
//! # Quick start
//!
//! ```no_run
//! use tickwire_client::{Client, ClientOptions, Event};
//!
//! # async fn run() -> Result<(), tickwire_client::Error> {
//! let client = Client::connect("ws://127.0.0.1:8080/ws", ClientOptions::default()).await?;
//! let mut events = client.events().expect("first call");
//! client.subscribe(["prices.*"]).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Snapshot(u) | Event::Update(u) => println!("{} #{}: {}", u.topic, u.seq, u.data),
//!         Event::Reset { topic } => println!("{topic}: history lost, a fresh snapshot follows"),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Or with callbacks, see [`ClientBuilder`]:
//!
//! ```no_run
//! # async fn run() -> Result<(), tickwire_client::Error> {
//! let client = tickwire_client::Client::builder("ws://127.0.0.1:8080/ws")
//!     .on_open(|| println!("connected"))
//!     .on_message(|u| println!("{} {}", u.topic, u.data))
//!     .on_close(|code, reason| println!("closed {code} {reason}"))
//!     .on_error(|e| eprintln!("{e}"))
//!     .connect()
//!     .await?;
//! client.subscribe(["chat.lobby"]).await?;
//! # Ok(()) }
//! ```
//!
//! # Delivery guarantees
//!
//! Per topic, the client delivers publications in seq order and never twice. When the
//! connection drops it reconnects with exponential backoff and full jitter, and re-subscribes
//! everything with `since` set to the last position (seq and epoch) it delivered for each topic.
//! The server then either replays exactly the missed publications (the stream stays gap-free) or,
//! when it cannot (history expired, the server restarted so the topic's epoch changed), the
//! client emits [`Event::Reset`] for the topic and a fresh [`Event::Snapshot`] follows when the
//! topic has a value. A topic that no longer exists on the server after a reconnect also gets a
//! `Reset` (its next publication starts a new stream at seq 1).
//!
//! Topics under the default `conflate` policy may skip seqs while the client is behind: that is
//! the server conflating, not a loss the client reports. So do subscriptions with a
//! [`SubscribeOptions::max_rate`].
//!
//! Limitation (protocol v1): update frames carry no epoch, so for a topic the client only ever
//! saw through a pattern subscription made *before* the topic existed, it does not know the
//! epoch and cannot ask for recovery; after a reconnect such a topic gets `Reset` + snapshot.
//!
//! # Subscribe options: max rate, deltas
//!
//! [`Client::subscribe_with`] takes [`SubscribeOptions`]: `max_rate` (at most that many updates
//! a second per topic; the newest always arrives) and `delta` (updates may come as Fossil deltas
//! of the topic's previous data, docs/protocol.md §4.1). The client keeps each subscription's
//! options and sends them again whenever it re-subscribes: after a reconnect (one request per
//! set of options) and on retries.
//!
//! Deltas are applied inside the client: every [`Update`] carries its full `data`, byte for
//! byte as published, whether it came whole or as a delta. For that the client keeps, for each
//! topic a delta subscription matches (and only those; an unsubscribe drops them), the text of
//! the last data it received and its seq. A delta applies only to the data of the seq just
//! before it, and its length and checksum are checked, so it never yields wrong data. One that
//! cannot be applied (no such data, a damaged delta) is not delivered: the client reports
//! [`Error::Delta`] as an [`Event::Error`] and sends the topic's subscription again with `since`
//! the last position it delivered, so the missed publications follow as full data (or, when the
//! server can no longer replay them or the topic's epoch is unknown, an [`Event::Reset`] and a
//! fresh snapshot). Turning deltas on for topics the client already receives (subscribing again
//! with `delta`, or a new delta subscription overlapping a plain one) costs one such round per
//! topic: the client kept no data for the first delta to apply to.
//!
//! # Presence
//!
//! For topics under the server's `presence.patterns`, [`Client::presence`] answers who is there
//! ([`Presence`]: [`Member`]s and their exact count), and a subscription made with
//! [`SubscribeOptions::presence_events`] delivers [`Event::Join`] and [`Event::Leave`] in order
//! with the topic's updates (callbacks `on_join`/`on_leave`). The client keeps no member list
//! and does not replay the joins and leaves of a disconnection: after [`Event::Open`], ask
//! [`Client::presence`] again.
//!
//! # Refused subscriptions
//!
//! A subscribe the server refuses with a transient error (`unavailable`: a cluster node that has
//! lost Redis; `rate_limited`) returns that error to its caller, and the client retries it with
//! backoff ([`ClientOptions::subscribe_retry`]) until a retry is accepted, the topics are
//! unsubscribed, or the client closes. [`Event::Subscription`] reports the
//! [`SubscriptionState`]: `Retrying`, then `Subscribed` or `Failed`. The re-subscription after a
//! reconnect is retried the same way. Other refusals (`forbidden`, `invalid_topic`, ...) are final.
//!
//! # Refused credentials
//!
//! A WebSocket handshake answered with HTTP 401 (missing, invalid or expired token) or 403
//! (origin not allowed) is [`Error::Unauthorized`], and it is permanent: [`Client::connect`]
//! returns it, and when a reconnect gets it the client stops, with the error as the last
//! [`Event::Error`] before the event stream ends. Likewise a connection the server closes
//! because its token expired (close code 4003) is not reconnected with that token: the event
//! stream ends after that [`Event::Close`]. The one exception, both times: a
//! [`TokenProvider`] that, asked again right then, returns a different token; that one is
//! tried next.
//! A URL that answers the handshake with a page or a redirect instead (a wrong path, another
//! server) is [`Error::NotWebSocket`].
//!
//! # Backpressure
//!
//! Events go through a bounded channel ([`ClientOptions::event_buffer`]). A consumer that stops
//! reading events stops the client reading the socket, replies to requests included: consume
//! events concurrently with awaiting requests. The server then conflates or, for `queue` topics,
//! disconnects the client (close 4008), after which it reconnects and recovers.
//!
//! # Why tokio-tungstenite
//!
//! The server uses fastwebsockets, but its client side needs the caller to do the HTTP upgrade
//! (hyper) and TLS wiring, and gives no message-level API. tokio-tungstenite does the handshake,
//! `wss://` through rustls (`rustls-tls-webpki-roots`: no system OpenSSL, Mozilla's roots
//! compiled in), answers pings, reassembles fragments and checks UTF-8, and it is already the
//! WebSocket client of the server's test suite. Per-message cost is irrelevant on the client
//! side compared with correctness and portability.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod command;
mod connection;
mod delta;
mod error;
mod http;
mod message;
mod options;
mod presence;
mod subscriptions;
mod url;

/// The WebSocket layer under [`Client`] (handshake, TLS, message size limits), for the Autobahn
/// TestSuite driver `examples/autobahn_client.rs`. Not a stable API.
#[doc(hidden)]
pub mod conformance {
    pub use crate::connection::{open, Ws};
}

pub use client::{Client, ClientBuilder, Events};
pub use error::{BoxError, Error, Result};
pub use http::{HttpPublisher, Outgoing};
pub use message::{Event, SubscriptionState};
pub use options::{Backoff, ClientOptions, SubscribeOptions, TokenProvider};
pub use presence::{Member, Presence};
/// The wire types and pattern matching, shared with the server (crate `tickwire-proto`).
pub use tickwire_proto::{pattern_matches, Kind, Position, Published, Subscribed, Unsubscribed, Update};

/// Re-export of the rustls version used for `wss://` and `https://`, to build a custom
/// [`ClientOptions::tls_config`] (private CA, client certificates).
pub use rustls;
/// Re-export of `serde_json`'s raw JSON value type used for payloads.
pub use serde_json::value::RawValue;
