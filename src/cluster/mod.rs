//! What publishers and sessions go through: the [`node`], which is the hub alone or the hub
//! mirroring a cluster's Redis [`broker`] (its publish script is `publish.lua`), and the
//! `Idempotency-Key` ledger of HTTP publishes ([`idempotency`]).
//!
//! Depends on `pubsub` and below; the broker delivers between nodes, the hub within one.

pub mod broker;
pub mod idempotency;
pub mod node;
