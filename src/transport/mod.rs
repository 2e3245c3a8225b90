//! The edge: everything that knows about sockets. Accepting TCP connections and draining them
//! ([`listener`]), TLS ([`tls`]), the PROXY protocol and forwarded addresses ([`proxy`]), HTTP
//! routing and the publish/topic/history API ([`http`]), the web pages ([`web`]), the
//! WebSocket transport ([`ws`]: frames, reader and writer, timers) and the Server-Sent Events
//! transport ([`sse`]: a stream's session, its events and their `id:` tokens).
//!
//! Depends on `session` (the transport-agnostic state of one client, which a transport feeds
//! requests and whose replies it writes) and below; nothing below depends on it.

pub mod http;
pub mod listener;
pub mod proxy;
pub mod sse;
pub mod tls;
pub mod web;
pub mod ws;
