//! Interop with the reference encoder: `fossil_vectors.json` holds deltas made by the npm
//! `fossil-delta` package's `createDelta` (v2.0.0, on the UTF-8 bytes of each string), and
//! `tickwire_proto::fossil::apply` must rebuild every target from them. The inputs are JSON
//! documents like publications: ASCII, multi-byte text, escapes, an order book, random ones.
//! The npm encoder splits characters that change into one with the same lead byte (`é` into
//! `è`); those deltas are not UTF-8, so they cannot be JSON strings and are not in the file.

use serde::Deserialize;
use tickwire_proto::fossil;

#[derive(Deserialize)]
struct Vector {
    name: String,
    source: String,
    target: String,
    delta: String,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("fossil_vectors.json")).expect("fossil_vectors.json parses")
}

#[test]
fn reference_deltas_apply() {
    let vectors = vectors();
    assert!(vectors.len() >= 40, "{} vectors", vectors.len());
    for v in &vectors {
        let out = fossil::apply(v.source.as_bytes(), v.delta.as_bytes(), v.target.len());
        assert_eq!(out.as_deref(), Ok(v.target.as_bytes()), "{}", v.name);
        assert_eq!(
            fossil::target_len(v.delta.as_bytes()),
            Ok(v.target.len()),
            "{}",
            v.name
        );
    }
}

#[test]
fn reference_deltas_with_a_wrong_base_are_refused() {
    let mut refused = 0;
    for v in vectors().iter().filter(|v| v.delta.contains('@')) {
        let mut base = v.source.clone().into_bytes();
        // Change one copied byte: the copy stays in range, the checksum catches it.
        let copied = base.iter().position(|&b| b == b':').unwrap_or(0);
        base[copied] ^= 0x01;
        let out = fossil::apply(&base, v.delta.as_bytes(), v.target.len());
        // Never a wrong document; the same one only if the changed byte was not copied.
        assert!(
            out.is_err() || out.as_deref() == Ok(v.target.as_bytes()),
            "{}",
            v.name
        );
        refused += usize::from(out.is_err());
    }
    assert!(refused >= 30, "{refused} refused");
}

#[test]
fn our_deltas_for_the_same_inputs_are_as_small() {
    let (mut ours, mut theirs) = (0, 0);
    for v in &vectors() {
        let delta = fossil::create_str(&v.source, &v.target);
        let out = fossil::apply(v.source.as_bytes(), delta.as_bytes(), v.target.len());
        assert_eq!(out.as_deref(), Ok(v.target.as_bytes()), "{}", v.name);
        ours += delta.len();
        theirs += v.delta.len();
    }
    // A different hash table finds slightly different copies; the sizes stay close.
    assert!(
        ours * 100 <= theirs * 105,
        "ours {ours} bytes, npm {theirs} bytes"
    );
}
