//! Local fan-out: the topic registry with sequence numbers, last values and fan-out ([`hub`]),
//! each subscriber's bounded outbound queue ([`outbox`]), a topic's recent publications
//! ([`history`]), the trie that finds the pattern subscriptions matching a topic
//! ([`patterns`]) and the names of the topics, in order and by token, which find the topics
//! matching a pattern ([`names`]); a topic's subscribers, keyed by connection ([`idmap`]); the
//! max rate of a subscription and the node's one queue of held-back deliveries ([`throttle`]);
//! the members of presence rooms and the occupied topics, kept where subscriptions are added
//! and removed ([`presence`]).
//!
//! Knows nothing of sockets or of other nodes; depends only on `protocol`, `topic`, `settings`
//! and `metrics`.

pub mod history;
pub mod hub;
mod idmap;
pub mod names;
pub mod outbox;
pub mod patterns;
pub mod presence;
pub mod throttle;
