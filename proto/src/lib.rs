//! tickwire-proto: the wire types shared by the tickwire server, its Rust client
//! (`clients/rust/`, crate `tickwire-client`) and the load test, so that none of them keeps a
//! copy of what a topic is, how a pattern matches, what a server message looks like or what its
//! error and close codes are.
//! `docs/protocol.md` is the protocol's reference; this crate is its Rust vocabulary.
//!
//! # Layout
//!
//! - [`topic`]: [`Topic`] and [`Pattern`] (validation, NATS-style matching and covering),
//!   [`pattern_matches`] on plain strings, [`TopicError`].
//! - `message`: what the server sends: [`Position`] (seq + epoch), deliveries ([`Update`],
//!   [`Kind`]) and replies ([`Subscribed`], [`Unsubscribed`], [`Published`],
//!   [`PublishedBatch`]).
//! - [`code`]: the error codes of error replies; [`close`]: tickwire's own close codes.
//! - [`rate`]: the bounds of a subscription's `max_rate`.
//! - [`fossil`]: the Fossil delta codec of `"delta":"fossil"` subscriptions (create, apply).
//!
//! Depends on serde, serde_json and thiserror only.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod close;
pub mod code;
pub mod fossil;
mod message;
pub mod rate;
pub mod topic;

pub use message::{Kind, Position, Published, PublishedBatch, Subscribed, Unsubscribed, Update};
pub use topic::{pattern_matches, Pattern, Topic, TopicError, MAX_TOPIC_BYTES};
