//! What publishers and sessions go through: the [`node`], which counts publications and hands
//! them to the [`broker`] (the seam: [`memory`], one node whose hub assigns seqs, or
//! [`redis`], a cluster's Redis with the hub as a mirror), and the `Idempotency-Key` ledger of
//! HTTP publishes ([`idempotency`]); presence and occupancy for the whole cluster, and the
//! events that go to the webhooks ([`presence`]).
//!
//! Depends on `pubsub` and below; the broker delivers between nodes, the hub within one.
//! Imports point node → broker → memory/redis → idempotency.

pub mod broker;
pub mod idempotency;
mod memory;
pub mod node;
pub mod presence;
pub(crate) mod redis;
