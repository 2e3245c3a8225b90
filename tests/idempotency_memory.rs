//! Memory held by the idempotency ledger (`broker.kind = "memory"`): however many distinct
//! `Idempotency-Key`s publishers send, the process's resident memory stops growing once
//! `http.idempotency_max_keys` keys are remembered.
//!
//! Its own test binary with a single test, so that no other test's allocations show up in the
//! RSS measurement.

mod common;

use common::*;
use tickwire_client::{HttpPublisher, Outgoing};

const MAX_KEYS: usize = 1_000;
/// Messages per publish: each remembered key also holds this many seqs.
const BATCH: usize = 64;

/// `n` publishes, each under a new key (the client makes one per call).
async fn publish_many(http: &HttpPublisher, n: usize) {
    let batch: Vec<Outgoing> = (0..BATCH)
        .map(|i| Outgoing::new("mem.idem", &i).unwrap())
        .collect();
    for _ in 0..n {
        http.publish_batch(&batch).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_distinct_keys_do_not_grow_memory_past_the_cap() {
    let server = start(&format!("[http]\nidempotency_max_keys = {MAX_KEYS}\n")).await;
    let http = HttpPublisher::new(&format!("http://{}", server.addr)).unwrap();
    // Fill the ledger (and every allocator pool along the way) twice over, then measure.
    publish_many(&http, 2 * MAX_KEYS).await;
    let before = rss_bytes();
    let more = 8 * MAX_KEYS;
    publish_many(&http, more).await;
    let after = rss_bytes();
    let keys = metric_value(server.addr, "tickwire_http_idempotency_keys").await;
    let bytes = metric_value(server.addr, "tickwire_http_idempotency_bytes").await;
    let growth = after.saturating_sub(before) as f64;
    // Without the cap, every further key would stay: at least its 32-byte digests, its seqs
    // and a map slot, about 250 bytes.
    let uncapped = more as f64 * (BATCH * 8 + 100) as f64;
    eprintln!(
        "idempotency ledger: {keys} keys, {:.2} MiB accounted; RSS {:.1} -> {:.1} MiB (+{:.2} MiB \
         over {more} more keys; uncapped would be >= {:.1} MiB)",
        bytes / MIB,
        before as f64 / MIB,
        after as f64 / MIB,
        growth / MIB,
        uncapped / MIB
    );
    // 64 seqs a key: the byte bound (512 per key) binds before the key count does.
    let budget = (MAX_KEYS * 512) as f64;
    assert!(keys <= MAX_KEYS as f64, "{keys} keys remembered");
    assert!(
        bytes <= budget && bytes > budget * 0.9,
        "{bytes} bytes accounted, budget {budget}"
    );
    assert!(
        growth < uncapped / 4.0,
        "RSS grew {:.2} MiB over {more} keys past the cap",
        growth / MIB
    );
}
