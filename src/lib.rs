//! tickwire: a real-time data push server.
//!
//! Publishers (HTTP, WebSocket clients, the built-in price feed) produce updates on topics;
//! tickwire fans every update out to the WebSocket clients subscribed to it.
//!
//! # Layout
//!
//! Data flows one way: transport → protocol → hub → outbox → socket.
//!
//! - [`settings`]: the typed configuration, its layering and validation.
//! - [`server`]: the TCP accept loops, graceful drain and process-level set-up (fd limit).
//! - [`tls`]: loading the certificate for wss:// and https://.
//! - [`app`]: the state shared by every connection handler (and the connection limits).
//! - [`proxy`]: the client's address behind trusted proxies: `X-Forwarded-For`, the PROXY
//!   protocol header, the `server.trusted_proxies` CIDRs.
//! - [`auth`]: who a WebSocket client or HTTP publisher is: anonymous, JWT or API key.
//! - [`jwt`]: verifying (and minting) JSON Web Tokens.
//! - [`jwks`]: the JWT key set fetched from the identity provider, kept fresh.
//! - [`reload`]: rotating certificates and keys without a restart (SIGHUP, file changes).
//! - [`swap`]: the snapshot-and-replace cell that makes those parts swappable.
//! - [`apikey`]: HTTP publishers' keys, stored as SHA-256 digests.
//! - [`acl`]: the topic patterns one client may subscribe and publish to.
//! - [`idempotency`]: the `Idempotency-Key` of HTTP publishes and the ledger of recent keys.
//! - [`http`]: HTTP routing, the publish and topic APIs, the WebSocket upgrade, `/metrics`,
//!   `/healthz`, `/readyz`.
//! - [`session`]: one WebSocket connection: reads requests, writes queued frames.
//! - [`protocol`]: the JSON wire format: parsing requests, encoding replies.
//! - [`topic`]: topic names and subscription patterns (validation and matching).
//! - [`node`]: what publishers and sessions go through: the hub alone, or the hub mirroring a
//!   cluster's broker.
//! - [`broker`]: the Redis broker that makes several nodes act as one.
//! - [`hub`]: topic registry, sequence numbers, last values and fan-out.
//! - [`history`]: a topic's recent publications, for clients that recover after reconnecting.
//! - [`patterns`]: the token trie that finds the pattern subscriptions matching a topic.
//! - [`outbox`]: a connection's bounded outbound queue, with conflation.
//! - [`wire`]: WebSocket framing: encoding server frames, reading client frames.
//! - [`feed`]: the built-in simulated price feed.
//! - [`metrics`]: the Prometheus registry and every metric.
//! - [`disconnect`]: why a connection closed (close codes and metric labels).
//! - [`error`]: error types and their wire codes.

pub mod acl;
pub mod apikey;
pub mod app;
pub mod auth;
pub mod broker;
pub mod disconnect;
pub mod error;
pub mod feed;
pub mod history;
pub mod http;
pub mod hub;
pub mod idempotency;
pub mod join;
pub mod jwks;
pub mod jwt;
pub mod keyset;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod patterns;
pub mod prepare;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod session;
pub mod settings;
pub mod swap;
pub mod tls;
pub mod topic;
pub mod watchdog;
pub mod web;
pub mod wire;
