//! The check's own tests: rebuilding deltas, counting bytes (compressed frames too), the rate.

use super::*;
use crate::scenario::bandwidth::shapes::Shape;

fn frame_of(seq: u64, body: &str) -> Vec<u8> {
    format!(r#"{{"type":"update","topic":"bench.bw.doc.0","seq":{seq},"ts":1700000000000,{body}}}"#)
        .into_bytes()
}

fn full(seq: u64, data: &[u8]) -> Vec<u8> {
    frame_of(seq, &format!(r#""data":{}"#, std::str::from_utf8(data).unwrap()))
}

fn delta(seq: u64, from: &[u8], to: &[u8]) -> Vec<u8> {
    let d = tickwire_proto::fossil::create_str(
        std::str::from_utf8(from).unwrap(),
        std::str::from_utf8(to).unwrap(),
    );
    frame_of(seq, &format!(r#""delta":{}"#, serde_json::to_string(&d).unwrap()))
}

/// Publishes `n` doc values (seq 11..) through a recorder; returns them.
fn published(sent: &Arc<Sent>, n: usize) -> Vec<Vec<u8>> {
    sent.set_base(10);
    let mut r = Recorder {
        generator: Generator::new(Shape::Doc, 5),
        sent: sent.clone(),
    };
    (0..n)
        .map(|i| {
            let mut out = b"prefix".to_vec();
            r.next(1_700_000_000_000_000 + i as u64, &mut out);
            out.split_off(6)
        })
        .collect()
}

#[test]
fn rebuilds_deltas_checks_them_and_counts_bytes() {
    let sent = Arc::new(Sent::default());
    let v = published(&sent, 4);
    assert_eq!(sent.len(), 4);
    let shared = Arc::new(Shared::new(sent, 1, None));
    // The window holds the stamps of the first two publications only.
    shared.set_window(1_700_000_000_000_000, 1_700_000_000_000_002);
    let mut c = Box::new(Check::new(0, shared.clone()));
    let wire = |m: &[u8]| Wire::of(m.len(), false);
    let len = |m: &[u8]| frame::server_frame_len(m.len());

    let f = full(11, &v[0]);
    assert_eq!(c.update(&f, wire(&f), 11, 0), Some(1_700_000_000_000_000));
    let d = delta(12, &v[0], &v[1]);
    assert!(
        d.len() * 10 < f.len(),
        "a doc delta is small: {} of {}",
        d.len(),
        f.len()
    );
    assert_eq!(c.update(&d, wire(&d), 12, 0), Some(1_700_000_000_000_001));
    // A delta that does not decode; then a delta after that gap has no base.
    let wrong = frame_of(13, r#""delta":"2g\n7@0,bad;""#);
    assert_eq!(c.update(&wrong, wire(&wrong), 13, 0), None);
    let after_gap = delta(14, &v[2], &v[3]);
    assert_eq!(c.update(&after_gap, wire(&after_gap), 14, 0), None);
    // Full data that is not what was published for its seq.
    let swapped = full(14, &v[2]);
    c.update(&swapped, wire(&swapped), 14, 0);
    let unknown = full(99, &v[3]);
    c.update(&unknown, wire(&unknown), 99, 0);
    c.finish();

    let t = shared.totals();
    assert_eq!((t.updates, t.delta_frames, t.subscribers), (6, 3, 1));
    let m = t.mismatches;
    assert_eq!(
        (m.differs, m.bad_delta, m.no_base, m.unknown_seq, m.unreadable),
        (1, 1, 1, 1, 0)
    );
    assert_eq!(shared.last_seq[0].load(Relaxed), 99);
    // The delta frame counts as the full frame it replaced (the one the server would have
    // sent); the failed ones as they came.
    assert_eq!(
        t.full_wire_bytes as usize,
        len(&f) + len(&full(12, &v[1])) + len(&wrong) + len(&after_gap) + len(&swapped) + len(&unknown)
    );
    assert_eq!(t.window_updates, 2);
    assert_eq!(t.window_wire_bytes as usize, len(&f) + len(&d));
    assert_eq!(t.window_full_wire_bytes as usize, len(&f) + len(&full(12, &v[1])));
    assert_eq!(
        t.wire_bytes as usize,
        [&f, &d, &wrong, &after_gap, &swapped, &unknown]
            .iter()
            .map(|m| len(m))
            .sum::<usize>()
    );
}

#[test]
fn a_snapshot_is_the_base_of_the_first_delta() {
    let sent = Arc::new(Sent::default());
    let v = published(&sent, 1);
    let shared = Arc::new(Shared::new(sent, 1, None));
    let mut c = Check::new(0, shared.clone());
    let old = br#"{"ts":1,"old":"value before the run, long enough to be worth a delta"}"#;
    let snap = full(10, old);
    let snap = [
        b"{\"type\":\"snapshot\"".as_slice(),
        &snap[b"{\"type\":\"update\"".len()..],
    ]
    .concat();
    c.snapshot(&snap, 10);
    let d = delta(11, old, &v[0]);
    assert!(c.update(&d, Wire::of(d.len(), false), 11, 0).is_some());
    assert_eq!(c.mine.mismatches, Mismatches::default());
}

#[test]
fn a_compressed_frame_counts_as_it_came_and_what_compression_saved() {
    let sent = Arc::new(Sent::default());
    let v = published(&sent, 2);
    let shared = Arc::new(Shared::new(sent, 1, None));
    let mut c = Box::new(Check::new(0, shared.clone()));
    // The message as inflated; on the wire a frame of 700 bytes.
    let f = full(11, &v[0]);
    let came = Wire {
        len: 700,
        compressed: true,
    };
    assert!(c.update(&f, came, 11, 0).is_some());
    let d = delta(12, &v[0], &v[1]);
    assert!(c.update(&d, Wire::of(d.len(), false), 12, 0).is_some());
    c.finish();
    let t = shared.totals();
    assert_eq!(t.mismatches, Mismatches::default());
    assert_eq!((t.updates, t.compressed_frames, t.delta_frames), (2, 1, 1));
    let inflated = frame::server_frame_len(f.len());
    assert_eq!(t.deflate_saved_bytes as usize, inflated - 700);
    assert_eq!(t.wire_bytes as usize, 700 + frame::server_frame_len(d.len()));
    let full_delta = frame::server_frame_len(full(12, &v[1]).len());
    assert_eq!(t.full_wire_bytes as usize, inflated + full_delta);
}

#[test]
fn counts_the_most_updates_within_a_second() {
    let sent = Arc::new(Sent::default());
    let v = published(&sent, 5);
    let shared = Arc::new(Shared::new(sent, 1, Some(2.0)));
    let mut c = Box::new(Check::new(0, shared.clone()));
    // 0, 0.4, 0.99 s: three within one second (the bound is 3); then 1.5, 1.6: the window
    // (0.6, 1.6] holds 0.99, 1.5 and 1.6.
    for (i, at) in [0u64, 400_000, 990_000, 1_500_000, 1_600_000]
        .into_iter()
        .enumerate()
    {
        let f = full(11 + i as u64, &v[i]);
        c.update(&f, Wire::of(f.len(), false), 11 + i as u64, at);
    }
    assert_eq!(c.mine.max_in_1s, 3);
    let f = full(16, &v[4]);
    c.update(&f, Wire::of(0, false), 16, 1_700_000);
    assert_eq!(c.mine.max_in_1s, 4);
    c.finish();
    assert_eq!(shared.totals().over_bound, 1);
}
