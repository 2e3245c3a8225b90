//! Topic names and subscription patterns (validation, matching, covering) and `TopicError`:
//! defined in the shared wire crate `tickwire-proto` (`proto/src/topic.rs`), which the client and
//! the load test use too, and re-exported here so the server's modules, the tests and the fuzz
//! targets keep one path for them.

pub use tickwire_proto::topic::{Pattern, Topic, TopicError, MAX_TOPIC_BYTES};
