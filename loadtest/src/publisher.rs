//! The fan-out publisher: paced at R msg/s over HTTP batch publish, on its own thread.
//!
//! Every tick (5 ms by default) it sends everything that is due (R × elapsed − sent) as one
//! `POST /api/v1/publish` batch, topics taken round-robin, each payload stamped with the send
//! time just before the request is built. The response's `seq` per message tells which
//! sequence numbers the run produced.
//!
//! In lockstep (`--lockstep N`) it instead sends N messages one request at a time, each only
//! once every subscriber has received the one before, so the server sees the same sequence of
//! wake-ups in every run: a harness for instruction counts (callgrind), not for latency.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::http::HttpClient;
use crate::opts::HttpEndpoint;
use crate::pool::{histogram, Shared};
use crate::proto;
use crate::sys::now_us;

#[derive(Debug)]
pub struct PublisherConfig {
    pub endpoint: HttpEndpoint,
    pub topics: Vec<String>,
    pub rate: f64,
    pub payload_bytes: usize,
    /// Makes each message's `data` in place of the padded stamp of `payload_bytes`.
    pub payloads: Option<Box<dyn Payloads>>,
    pub interval: Duration,
    pub batch_max: u64,
    /// Measurement window, µs since the epoch; publishing stops at `t1`.
    pub t0: u64,
    pub t1: u64,
    /// How long after `t1` a request still in flight may take to be answered.
    pub grace: Duration,
    /// Publish in lockstep with the subscribers instead of at `rate`.
    pub lockstep: Option<Lockstep>,
    /// Stops publishing before `t1` once set (a run whose end is not known in advance).
    pub stop: Option<Arc<AtomicBool>>,
}

/// The `data` of each publication, in publishing order (the bandwidth scenario's shapes).
pub trait Payloads: Send + fmt::Debug {
    /// Appends the next publication's `data` JSON, stamped with `sent_us` (µs since the epoch).
    fn next(&mut self, sent_us: u64, out: &mut Vec<u8>);
}

/// Lockstep publishing: `publications` messages, one per request, each sent once the pool has
/// received every delivery of the ones before.
#[derive(Clone)]
pub struct Lockstep {
    pub publications: u64,
    /// Subscribers of each topic (index as in `topics`): the deliveries one message makes.
    pub fan: Vec<u64>,
    /// The subscriber pool, whose `updates` counter tells what has arrived.
    pub pool: Arc<Shared>,
}

impl fmt::Debug for Lockstep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lockstep")
            .field("publications", &self.publications)
            .field("fan", &self.fan)
            .finish_non_exhaustive()
    }
}

impl Lockstep {
    /// Waits until the pool has received `target` updates, or the window (`t1`) is over.
    async fn wait(&self, target: u64, t1: u64) {
        while self.pool.updates.load(Relaxed) < target && now_us() < t1 && !crate::sys::abort_requested() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PublisherResult {
    /// Messages sent (including any whose request failed or went unanswered).
    pub sent: u64,
    /// Messages stamped inside the measurement window.
    pub sent_in_window: u64,
    /// Messages the server acknowledged with a `seq`.
    pub confirmed: u64,
    pub requests: u64,
    pub errors: u64,
    /// Messages in a request still unanswered when the window closed.
    pub unconfirmed: u64,
    pub first_error: Option<String>,
    /// Messages stamped inside the window, per topic (index as in `topics`).
    #[serde(skip)]
    pub in_window_per_topic: Vec<u64>,
    /// Highest acknowledged `seq` per topic (index as in `topics`).
    #[serde(skip)]
    pub last_seq: Vec<u64>,
    /// Request round-trip, µs.
    #[serde(skip)]
    pub request_us: Option<Histogram<u64>>,
}

/// Creates `topics` with one tiny value each (`"data":0`), `batch` messages per
/// `POST /api/v1/publish`; returns each topic's `seq` after it (the base of the run's
/// accounting). The server's `http.max_body_bytes` must take a batch (about 40 B a message).
pub fn create_topics(endpoint: &HttpEndpoint, topics: &[String], batch: usize) -> anyhow::Result<Vec<u64>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = HttpClient::new(endpoint.clone());
        let mut seqs = Vec::with_capacity(topics.len());
        for chunk in topics.chunks(batch.max(1)) {
            let messages: Vec<String> = (chunk.iter())
                .map(|t| format!(r#"{{"topic":"{t}","data":0}}"#))
                .collect();
            let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
            let resp = client.post_json(Bytes::from(body)).await?;
            if resp.status != 200 {
                anyhow::bail!(
                    "creating topics: publish answered {}: {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                );
            }
            let results = proto::parse_publish_response(&resp.body)?;
            if results.len() != chunk.len() || results.iter().zip(chunk).any(|((t, _), n)| t != n) {
                anyhow::bail!("creating topics: the publish reply does not match the batch");
            }
            seqs.extend(results.into_iter().map(|(_, seq)| seq));
        }
        Ok(seqs)
    })
}

/// Runs on the calling thread until the window closes.
/// Waits for a publisher thread; a panic in it becomes a result that says so.
pub fn join(handle: std::thread::JoinHandle<PublisherResult>) -> PublisherResult {
    handle.join().unwrap_or_else(|_| PublisherResult {
        first_error: Some("publisher thread panicked".into()),
        errors: 1,
        ..PublisherResult::default()
    })
}

impl PublisherResult {
    /// What makes the run's loss and gap counts doubtful, as report lines: the first failed
    /// request, and publications never acknowledged (their seqs are unknown).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(e) = &self.first_error {
            problems.push(format!("publisher: {e}"));
        }
        if self.unconfirmed > 0 || self.confirmed != self.sent {
            problems.push(format!(
                "{} of {} publications unacknowledged: the final seqs (and so the loss and gap counts) are uncertain",
                self.sent - self.confirmed,
                self.sent
            ));
        }
        problems
    }

    /// Each topic's seq after the run: the highest acknowledged, or `base` (before it).
    pub fn final_seqs(&self, base: &[u64]) -> Vec<u64> {
        let last = |t: usize| self.last_seq.get(t).copied().unwrap_or(0);
        (base.iter().enumerate()).map(|(t, &b)| b.max(last(t))).collect()
    }
}

pub fn run(cfg: PublisherConfig) -> PublisherResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a current-thread runtime");
    rt.block_on(publish(cfg))
}

async fn publish(mut cfg: PublisherConfig) -> PublisherResult {
    let mut res = PublisherResult {
        last_seq: vec![0; cfg.topics.len()],
        in_window_per_topic: vec![0; cfg.topics.len()],
        request_us: Some(histogram()),
        ..PublisherResult::default()
    };
    let index: std::collections::HashMap<&str, usize> = (cfg.topics.iter().enumerate())
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut client = HttpClient::new(cfg.endpoint.clone());
    let start = Instant::now();
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut body = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    let n_topics = cfg.topics.len().max(1) as u64;
    // Lockstep: the pool's `updates` count once the last message sent has reached everyone.
    let mut lockstep_target = cfg.lockstep.as_ref().map_or(0, |l| l.pool.updates.load(Relaxed));
    loop {
        match &cfg.lockstep {
            Some(l) if res.sent >= l.publications => break,
            Some(_) => {}
            None => {
                ticker.tick().await;
            }
        }
        let stopped = cfg.stop.as_ref().is_some_and(|s| s.load(Relaxed));
        if now_us() >= cfg.t1 || stopped || crate::sys::abort_requested() {
            break;
        }
        let due = match cfg.lockstep {
            Some(_) => 1,
            None => ((start.elapsed().as_secs_f64() * cfg.rate) as u64)
                .saturating_sub(res.sent)
                .min(cfg.batch_max),
        };
        if due == 0 {
            continue;
        }
        names.clear();
        names.extend((0..due).map(|i| cfg.topics[((res.sent + i) % n_topics) as usize].as_str()));
        let stamp = now_us();
        match cfg.payloads.as_mut() {
            Some(p) => proto::batch_body_with(&names, &mut body, |out| p.next(stamp, out)),
            None => proto::batch_body(&names, stamp, cfg.payload_bytes, &mut body),
        }
        let in_window = stamp >= cfg.t0 && stamp < cfg.t1;
        if in_window {
            res.sent_in_window += due;
            for i in 0..due {
                res.in_window_per_topic[((res.sent + i) % n_topics) as usize] += 1;
            }
        }
        res.sent += due;
        res.requests += 1;
        let sent_at = Instant::now();
        // Never outlive the window by much: a stalled publish endpoint must not hang the run.
        // Waiting for the answer matters: the final `seq` is read once this returns.
        let left = Duration::from_micros(cfg.t1.saturating_sub(now_us())) + cfg.grace;
        let request = client.post_json(Bytes::copy_from_slice(&body));
        let outcome = match tokio::time::timeout(left, request).await {
            Err(_) => {
                res.unconfirmed += due;
                break;
            }
            Ok(r) => r,
        };
        if let Some(h) = res.request_us.as_mut() {
            h.saturating_record(sent_at.elapsed().as_micros() as u64);
        }
        let error = match outcome {
            Ok(resp) if resp.status == 200 => match proto::parse_publish_response(&resp.body) {
                Ok(results) => {
                    res.confirmed += results.len() as u64;
                    for (topic, seq) in results {
                        if let Some(&i) = index.get(topic.as_str()) {
                            res.last_seq[i] = res.last_seq[i].max(seq);
                        }
                    }
                    None
                }
                Err(e) => Some(format!("unexpected publish response: {e}")),
            },
            Ok(resp) => Some(format!(
                "publish returned HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body).trim()
            )),
            Err(e) => Some(format!("publish request failed: {e}")),
        };
        if let Some(e) = error {
            res.errors += 1;
            res.first_error.get_or_insert(e);
            if cfg.lockstep.is_some() {
                break; // its deliveries would never come
            }
        }
        if let Some(l) = &cfg.lockstep {
            lockstep_target += l.fan[((res.sent - 1) % n_topics) as usize];
            l.wait(lockstep_target, cfg.t1).await;
        }
    }
    res
}
