//! tickwire: a real-time data push server.
//!
//! Publishers (HTTP, WebSocket clients, the built-in price feed) produce updates on topics;
//! tickwire fans every update out to the clients subscribed to it, over WebSocket or
//! Server-Sent Events. Read
//! `docs/architecture.md` first: the path of a publication and of a subscribe, the lock order,
//! who owns which state.
//!
//! # Layout
//!
//! Folders by concern; dependencies point one way, down this list (edge → session → cluster →
//! pubsub → protocol/topic), and `.ci/module-cycles.py` fails CI on any import cycle between
//! modules. `auth` depends only on `settings`, `topic`/`protocol` types, `swap`, `metrics` and
//! `outbound`; `settings` only on `topic`.
//!
//! - [`transport`]: the edge, everything that knows about sockets.
//!   - `listener`: the TCP accept loops, TLS handshakes, graceful drain, fd limit; `serve`.
//!   - `tls`: the certificate for wss:// and https://, swappable on reload.
//!   - `proxy`: the client's address behind trusted proxies; `proxy::forwarded`: the
//!     `X-Forwarded-For` walk; `proxy::haproxy`: the PROXY protocol (v1/v2) header;
//!     `proxy::rewind`: replaying what was read past that header.
//!   - `http`: routing and the responses of `/metrics`, `/healthz`, `/readyz`; `http::api`: the
//!     publish, topic and history endpoints; `http::body`: the response body (whole, or an SSE
//!     stream) and bounded body reading; `http::upgrade`: the WebSocket upgrade (origin check,
//!     auth, connection slot); `http::sse`: accepting an SSE stream (origin, auth, the URL's
//!     parameters, ACL, connection slot, CORS).
//!   - `web`: the dashboard, chat page and JS client, compiled in.
//!   - `ws`: the WebSocket transport: `connection` (one connection after the upgrade: frame
//!     reading, fragment reassembly, ping/pong, the close handshake, `/echo`), `writer`
//!     (vectored writes, stalled sockets, the last write), `join` (reader and writer halves run
//!     together), `watchdog` (the one timer: heartbeat pings, idle timeout, token expiry; the
//!     SSE transport runs it too).
//!   - `sse`: the Server-Sent Events transport (`GET /sse`): the stream's session task (its
//!     subscription, timer and drain), `events` (the response body: the outbox's frames
//!     re-framed as events), `head` (an event's type, topic, seq and epoch, scanned from the
//!     start of a frame), `cursor` (the `id:` token: positions a reconnect recovers from).
//! - `session`: one client's protocol state machine, whatever transport carries it: its
//!   requests (ACL, subscriptions, publish, token refresh), every reply queued on its outbox;
//!   `session::ratelimit`: the request token bucket. It imports nothing from `transport`.
//! - `app`: the state every connection handler shares (node, auth, metrics, connection limits,
//!   the reaper).
//! - `reaper`: tears down connections whose client went away, on a thread of its own, so in a
//!   reconnect storm that work does not queue in the runtime ahead of the clients coming back.
//! - `reload`: rotating certificates and keys without a restart (SIGHUP, file changes).
//! - `cluster`: what publishers and sessions go through. `node`: the hub and the broker, the one
//!   place publications are counted, and a connection's subscribe/unsubscribe sequences; `broker`: the seam, an enum of `memory` (the hub
//!   assigns seqs; the `Idempotency-Key` ledger) and `redis` (Redis assigns and stores; its
//!   `commands`, the wanted `interest`, the pub/sub `link` fed by the bounded `inbox`, the
//!   server to use (fixed or found by Redis Sentinel) in `sentinel`, what differs on a Redis
//!   Cluster (the connection, sharded channels, per-slot batches) in `shards`, the Lua scripts
//!   `publish.lua` and `rebase.lua`, and the cluster's share of presence (`presence`,
//!   `presence.lua`; its channel listener reads through a bounded `inbox` too); `idempotency`: `Idempotency-Key` digests and the in-memory ledger;
//!   `presence`: presence rooms, subscriber counts and occupied topics as clients and the API
//!   see them, and the events (`occupied`/`vacated` with the vacate delay, `join`/`leave`)
//!   each emitted once.
//! - `pubsub`: local fan-out. `hub`: seqs, last values and fan-out (its header holds the lock
//!   order), with `hub::topics` (the registry), `hub::subscribe` (subscribe with catch-up),
//!   `hub::mirror` (a broker's publications) and `hub::fanout` (a publication to the outboxes:
//!   gates, deltas, compressed frames, the pacer's release); `outbox`: a connection's bounded
//!   queue with conflation (its header holds the queue bound rules); `history`: recent publications for
//!   recovery; `patterns`: the token trie of pattern subscriptions; `names`: the topics' names,
//!   in one ordered token trie (the listing, in name order, and the topics a pattern matches); `idmap`: a topic's
//!   subscribers by connection id, one pointer while empty; `throttle`: a subscription's max
//!   rate and delta terms (its `Gate`) and the node's one queue of held-back deliveries;
//!   `presence`: this node's presence rooms (members, `join`/`leave` frames), occupied topics
//!   and the changes for the layers above, kept where subscriptions are added and removed.
//! - `auth`: who a client is. `auth` itself: anonymous, JWT or API key; `jwt`: verifying and
//!   minting tokens; `jwks`: the fetched key set, kept fresh; `keyset`: verification keys and
//!   reading a JWKS (below both `jwt` and `jwks`); `apikey`: publishers' keys as SHA-256
//!   digests; `acl`: the topic patterns a client may use, and its `Identity`.
//! - [`prepare`]: turns the plain settings into runtime objects (auth, TLS, trusted proxies);
//!   used by `serve`, `check-config` and a reload.
//! - [`protocol`]: the JSON wire format (requests, replies, `Position`, epochs);
//!   `protocol::fields`: a request's fields as they arrive (the envelope, escaped strings);
//!   `protocol::encoding`: the bytes of update and snapshot frames, per subscriber class;
//!   `protocol::error`: the errors a client sees and their wire codes; `protocol::disconnect`:
//!   close codes; `protocol::deflate`: permessage-deflate (the handshake's answer, compressing
//!   a frame once, inflating a client's message under a cap); `protocol::wire`: WebSocket
//!   framing. Framing lives here rather than in
//!   `transport` because the hub encodes each update once as a ready-to-write frame and the
//!   outbox queues frames: putting it in `transport` would point `pubsub` up at the edge.
//! - [`settings`]: the typed configuration (plain data: it builds nothing; see `prepare`).
//!   `sections`: the typed sections and defaults; `values`: single values' forms; `tree`: the
//!   layers as TOML trees, typed by the defaults' tree; `env`: the environment layer; `load`: the
//!   layering of files and env vars; `validate`: the checks, one function per section, and the
//!   warnings; `report`: values and sources in messages, the configuration printed as TOML;
//!   `rules`: the parsed topic rules and the
//!   one pattern-list parser; `cidr`: the networks of `server.trusted_proxies`; `origin`:
//!   allowed origins; `pem`: reading certificate files; `error`: `SettingsError`.
//! - [`topic`]: topic names and subscription patterns (validation and matching), `TopicError`:
//!   re-exported from the `tickwire-proto` crate (`proto/`), which the client and the load test
//!   share, as they share `protocol::Position`.
//! - [`logging`]: the log subscriber (level, format, colour only on a terminal) and the
//!   start-up summary line.
//! - `metrics`: the Prometheus registry and every metric.
//! - `feed`: the built-in simulated price feed.
//! - `webhooks`: `[[webhooks]]` delivery: a bounded queue and one task per endpoint, signed
//!   POSTs, retries with backoff (below `cluster`, which decides what to send).
//! - `outbound`: the one outbound HTTP client (`http://` and `https://`, a timeout, a capped
//!   response body), below both `auth::jwks` and `webhooks`.
//! - `swap`: the snapshot-and-replace cell that makes keys and certificates swappable.
//! - `sync`: taking `std::sync` locks without poisoning (`lock`, `read`, `write`).
//!
//! Modules are private unless the binary, the tests, the load test or the fuzz targets use them.

#![forbid(unsafe_code)]

mod app;
mod auth;
mod cluster;
mod feed;
pub mod logging;
mod metrics;
mod outbound;
pub mod prepare;
pub mod protocol;
mod pubsub;
mod reaper;
mod reload;
mod session;
pub mod settings;
mod swap;
mod sync;
pub mod topic;
mod transport;
mod webhooks;

// Paths kept for the binary and tests (they predate the folders).
pub use auth::{apikey, jwt};
/// Test hook of the cluster's bounded receive path (tests/cluster_receive.rs).
#[doc(hidden)]
pub use cluster::broker::pause_redis_links;
pub use transport::listener as server;
