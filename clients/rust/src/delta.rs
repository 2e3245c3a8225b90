//! Fossil delta updates (`"delta":"fossil"` subscriptions, docs/protocol.md §4.1): per topic,
//! the last data the client received, which the next delta applies to.
//!
//! The server sends seq N as a delta only when this connection was sent seq N-1 of the topic
//! just before, so a base is the data of the highest seq received, whatever the frame (update,
//! snapshot, replay, or a delta applied). A delta applies only to the base of seq N-1, and
//! [`tickwire_proto::fossil::apply`] checks the result's length and checksum: a missing or other
//! base, or a damaged delta, is an error, never wrong data. Only topics that a delta
//! subscription matches have a base (the connection task decides which, and drops them on
//! unsubscribe).

use std::collections::HashMap;

use serde_json::value::RawValue;
use tickwire_proto::fossil;

use crate::message::DeltaUpdate;

/// The largest data a delta may produce: it bounds what a damaged or hostile delta can make the
/// client allocate (the header declares the length before anything is built).
const MAX_DATA_BYTES: usize = 64 << 20;

/// A topic's last data, as JSON text.
#[derive(Debug)]
struct Base {
    seq: u64,
    text: String,
}

#[derive(Debug, Default)]
pub(crate) struct Bases {
    map: HashMap<String, Base>,
}

impl Bases {
    pub fn has(&self, topic: &str) -> bool {
        self.map.contains_key(topic)
    }

    /// Records the data of `seq`, unless the topic's base is already as new (a replayed or
    /// duplicate frame does not move it back).
    pub fn record(&mut self, topic: &str, seq: u64, data: &str) {
        match self.map.get_mut(topic) {
            Some(base) if base.seq >= seq => {}
            Some(base) => {
                // The text's allocation is reused: a topic's documents tend to keep their size.
                base.seq = seq;
                base.text.clear();
                base.text.push_str(data);
            }
            None => {
                let base = Base {
                    seq,
                    text: data.to_owned(),
                };
                self.map.insert(topic.to_owned(), base);
            }
        }
    }

    pub fn forget(&mut self, topic: &str) {
        self.map.remove(topic);
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.map.retain(|topic, _| keep(topic));
    }

    /// The full data of `update`, or why it cannot be had.
    pub fn apply(&self, update: &DeltaUpdate) -> Result<Box<RawValue>, String> {
        let Some(base) = self.map.get(&update.topic) else {
            return Err("no data to apply it to".into());
        };
        if base.seq.checked_add(1) != Some(update.seq) {
            let wanted = update.seq.saturating_sub(1);
            return Err(format!(
                "it applies to seq {wanted}, the last data is seq {}",
                base.seq
            ));
        }
        let out = fossil::apply(base.text.as_bytes(), update.delta.as_bytes(), MAX_DATA_BYTES)
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8(out).map_err(|_| "its result is not UTF-8".to_string())?;
        RawValue::from_string(text).map_err(|e| format!("its result is not JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(topic: &str, seq: u64, from: &str, to: &str) -> DeltaUpdate {
        DeltaUpdate {
            topic: topic.into(),
            seq,
            ts: 1,
            delta: fossil::create_str(from, to),
        }
    }

    #[test]
    fn a_delta_applies_only_to_the_data_before_it() {
        let v1 = r#"{"name": "мир 🟢", "n": 1, "text": "line\nbreak \"q\" 中文 é", "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
        let v2 = r#"{"name": "мир 🟢", "n": 2, "text": "line\nbreak \"q\" 中文 è", "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
        let mut bases = Bases::default();
        let d2 = delta("doc", 2, v1, v2);
        assert_eq!(bases.apply(&d2).unwrap_err(), "no data to apply it to");
        bases.record("doc", 1, v1);
        assert_eq!(bases.apply(&d2).unwrap().get(), v2);

        // The base must be seq - 1, however the delta would fare.
        let d3 = delta("doc", 3, v1, v2);
        assert_eq!(
            bases.apply(&d3).unwrap_err(),
            "it applies to seq 2, the last data is seq 1"
        );
        // Applied to other data than it was made from (the bytes it copies differ), a delta
        // fails its checksum instead of producing a wrong document.
        let mut other = Bases::default();
        other.record("doc", 1, &v1.replace('x', "y"));
        let e = other.apply(&d2).unwrap_err();
        assert!(e.contains("checksum"), "{e}");
        // Valid Fossil, but the result is not JSON.
        let broken = delta("doc", 2, v1, &v2[1..]);
        assert!(bases
            .apply(&broken)
            .unwrap_err()
            .starts_with("its result is not JSON"));

        // Older seqs (replays) do not move the base back; newer ones replace it.
        bases.record("doc", 2, v2);
        bases.record("doc", 1, v1);
        assert_eq!(bases.apply(&delta("doc", 3, v2, v1)).unwrap().get(), v1);
        bases.retain(|t| t != "doc");
        assert!(!bases.has("doc"));
    }

    #[test]
    fn a_declared_size_over_the_cap_is_refused_before_allocating() {
        let mut bases = Bases::default();
        bases.record("doc", 1, "1");
        // The header declares 64^5 bytes (1 GiB), over the 64 MiB cap.
        let huge = DeltaUpdate {
            topic: "doc".into(),
            seq: 2,
            ts: 1,
            delta: "100000\n1@0,0;".into(),
        };
        let e = bases.apply(&huge).unwrap_err();
        assert!(e.contains("over the cap"), "{e}");
    }
}
