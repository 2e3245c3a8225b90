//! tickwire-loadtest: load generator and benchmark suite for the tickwire push server.
//!
//! Scenarios ([`scenario`]): `fanout` (end-to-end latency, deliveries/s, conflation and loss
//! with N subscribers over T topics and an HTTP publisher at R msg/s), `idle` (server memory
//! per connection), `connect` (handshake rate and time), `publish` (HTTP ingest rate),
//! `patterns` (pattern subscribe cost among many topics), `topics` (many topics, many exact and
//! pattern subscriptions: deliveries, loss, memory per topic and per subscription),
//! `reconnect` (every connection drops at once and recovers with `since`) and `bandwidth` (bytes
//! per delivery of changing payloads, plain, as Fossil deltas or under a max rate, every
//! update's data checked).
//! Each is a library call returning a serializable report, so tests can run them against an
//! in-process server; the `tickwire-loadtest` binary wraps them in a CLI.
//!
//! Every target must be a loopback address: the tool refuses anything else.
//!
//! # Layout
//!
//! - [`opts`]: URL, source address range and duration parsing (loopback enforcement), topic
//!   prefixes (checked with `tickwire-proto`'s `Topic`).
//! - [`client`]: TCP connections bound to a source address, the WebSocket upgrade.
//! - [`frame`]: the zero-copy WebSocket frame parser and the masked frame encoder.
//! - [`deflate`]: permessage-deflate (`--deflate`): the offer, the answer's check, the
//!   per-thread inflater of compressed messages.
//! - [`sse`]: `fanout --sse`: the `GET /sse` request and the bounded parser of its stream
//!   (chunked coding, `event:`/`data:` lines), whose data is read as a WebSocket message.
//! - [`proto`]: recognising tickwire's frames, building requests and publish bodies (the
//!   publish replies parse into the shared `tickwire-proto` types).
//! - [`plan`]: topic names (flat or in groups for patterns) and who subscribes to what.
//! - [`pool`]: the subscriber connections and their receiver threads; a scenario's own look at
//!   each update goes through its `Watch`.
//! - [`storm`]: dropping every connection of a pool at once and recovering with `since`.
//! - [`gaps`]: per (connection, topic) sequence accounting: received, conflated, lost.
//! - [`publisher`]: the paced fan-out publisher (padded stamps, or a scenario's `Payloads`).
//! - [`http`]: the keep-alive HTTP client used to publish.
//! - [`server`]: reading the server's `/metrics` and topic `seq`s.
//! - [`report`]: the human summary tables.
//! - [`bench`]: the benchmark page and chart built from saved JSON results; [`scale`]: its
//!   many-topics and reconnect-storm tables, [`bench_bandwidth`] the bandwidth tables.
//! - [`progress`], [`sys`]: the live progress line; clocks, /proc, limits, Ctrl-C.

pub mod bench;
pub mod bench_bandwidth;
pub mod client;
pub mod deflate;
pub mod frame;
pub mod gaps;
pub mod http;
pub mod opts;
pub mod plan;
pub mod pool;
pub mod progress;
pub mod proto;
pub mod publisher;
pub mod report;
pub mod scale;
pub mod scenario;
pub mod server;
pub mod sse;
pub mod storm;
pub mod sys;
