//! `publish`: HTTP ingest rate. `concurrency` keep-alive connections each POST to
//! `/api/v1/publish` in a closed loop (next request when the previous is answered), one message
//! per request (`single`) or `batch_size` per request (`batch`). Nothing subscribes unless the
//! server has other clients, so this measures accepting, sequencing and encoding publications.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use serde::Serialize;

use super::{secs, ClientUsage, Common, LatencySummary};
use crate::http::HttpClient;
use crate::opts;
use crate::pool::{histogram, topic_name};
use crate::progress::Progress;
use crate::proto;
use crate::sys::{self, now_us, CpuSnap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Single,
    Batch,
}

#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub common: Common,
    pub modes: Vec<Mode>,
    pub batch_size: usize,
    pub concurrency: usize,
    pub topics: u32,
    pub payload_bytes: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub topic_prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishRun {
    pub mode: Mode,
    pub messages_per_request: usize,
    pub requests: u64,
    pub messages: u64,
    pub requests_per_s: f64,
    pub messages_per_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Request round-trip.
    pub latency_ms: Option<LatencySummary>,
    pub server_cpu_pct: Option<f64>,
    pub client: ClientUsage,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishParams {
    pub batch_size: usize,
    pub concurrency: usize,
    pub topics: u32,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    pub scenario: &'static str,
    pub label: String,
    pub url: String,
    pub params: PublishParams,
    pub runs: Vec<PublishRun>,
    pub interrupted: bool,
}

pub fn run(cfg: &PublishConfig) -> anyhow::Result<PublishReport> {
    opts::check_topic_prefix(&cfg.topic_prefix)?;
    if cfg.topics == 0 || cfg.concurrency == 0 || cfg.batch_size == 0 {
        bail!("--topics, --concurrency and --batch-size must be at least 1");
    }
    let c = &cfg.common;
    let mut progress = Progress::new(c.progress);
    let mut warned = false;
    let mut runs = Vec::new();
    for &mode in &cfg.modes {
        if sys::abort_requested() {
            break;
        }
        let per_request = match mode {
            Mode::Single => 1,
            Mode::Batch => cfg.batch_size,
        };
        let t0 = now_us() + cfg.warmup.as_micros() as u64;
        let t1 = t0 + cfg.duration.as_micros() as u64;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let handle = {
            let (cfg, done) = (cfg.clone(), done.clone());
            std::thread::Builder::new()
                .name("publish".into())
                .spawn(move || drive(&cfg, mode, per_request, t0, t1, done))?
        };
        let mut snaps = (None, None);
        let mut cpu = (None, None);
        while now_us() < t1 && !sys::abort_requested() {
            if snaps.0.is_none() && now_us() >= t0 {
                snaps.0 = c.scrape(&progress, &mut warned);
                cpu.0 = Some(CpuSnap::now());
            }
            std::thread::sleep(Duration::from_millis(50));
            let n = done.load(std::sync::atomic::Ordering::Relaxed);
            progress.update(|| {
                let phase = if now_us() < t0 { "warmup " } else { "measure" };
                format!("publish {mode:?} ×{per_request}: {phase} {n} requests")
            });
        }
        snaps.1 = c.scrape(&progress, &mut warned);
        cpu.1 = Some(CpuSnap::now());
        let out = handle
            .join()
            .map_err(|_| anyhow::anyhow!("publish thread panicked"))??;
        let window = secs(cfg.duration);
        runs.push(PublishRun {
            mode,
            messages_per_request: per_request,
            requests: out.requests,
            messages: out.requests * per_request as u64,
            requests_per_s: out.requests as f64 / window,
            messages_per_s: (out.requests * per_request as u64) as f64 / window,
            errors: out.errors,
            first_error: out.first_error,
            latency_ms: LatencySummary::of(&out.latency),
            server_cpu_pct: snaps.0.zip(snaps.1).and_then(|(a, b)| a.cpu_pct(&b)),
            client: match cpu {
                (Some(a), Some(b)) => ClientUsage::between(&a, &b),
                _ => ClientUsage::default(),
            },
        });
    }
    progress.finish();
    Ok(PublishReport {
        scenario: "publish",
        label: c.label.clone(),
        url: c.target.url.clone(),
        params: PublishParams {
            batch_size: cfg.batch_size,
            concurrency: cfg.concurrency,
            topics: cfg.topics,
            payload_bytes: cfg.payload_bytes,
            warmup_s: secs(cfg.warmup),
            duration_s: secs(cfg.duration),
        },
        runs,
        interrupted: sys::abort_requested(),
    })
}

#[derive(Default)]
struct Counters {
    requests: Cell<u64>,
    errors: Cell<u64>,
    first_error: RefCell<Option<String>>,
}

struct DriveOut {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    latency: hdrhistogram::Histogram<u64>,
}

/// Runs the closed-loop publishers on this thread until `t1`; counts requests completed inside
/// the window `[t0, t1)`.
fn drive(
    cfg: &PublishConfig,
    mode: Mode,
    per_request: usize,
    t0: u64,
    t1: u64,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<DriveOut> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let counters = Rc::new(Counters::default());
    let latency = Rc::new(RefCell::new(histogram()));
    let names: Rc<Vec<String>> = Rc::new(
        (0..cfg.topics)
            .map(|t| topic_name(&cfg.topic_prefix, t))
            .collect(),
    );
    let ep = opts::endpoint(&cfg.common.target, "/api/v1/publish");
    local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for worker in 0..cfg.concurrency {
            let (counters, latency, names, ep, done) = (
                counters.clone(),
                latency.clone(),
                names.clone(),
                ep.clone(),
                done.clone(),
            );
            let payload_bytes = cfg.payload_bytes;
            tasks.push(tokio::task::spawn_local(async move {
                let mut client = HttpClient::new(ep);
                let mut body = Vec::new();
                let mut picked: Vec<&str> = Vec::with_capacity(per_request);
                let mut n = worker;
                while now_us() < t1 && !sys::abort_requested() {
                    let started = now_us();
                    match mode {
                        Mode::Single => {
                            proto::single_body(&names[n % names.len()], started, payload_bytes, &mut body);
                            n += 1;
                        }
                        Mode::Batch => {
                            picked.clear();
                            for _ in 0..per_request {
                                picked.push(&names[n % names.len()]);
                                n += 1;
                            }
                            proto::batch_body(&picked, started, payload_bytes, &mut body);
                        }
                    }
                    let left = Duration::from_micros(t1.saturating_sub(now_us())) + Duration::from_secs(1);
                    let r = tokio::time::timeout(left, client.post_json(Bytes::copy_from_slice(&body))).await;
                    let ended = now_us();
                    let in_window = started >= t0 && ended < t1;
                    let error = match r {
                        Err(_) => Some("request timed out".to_string()),
                        Ok(Err(e)) => Some(format!("request failed: {e}")),
                        Ok(Ok(resp)) if resp.status != 200 => Some(format!(
                            "HTTP {}: {}",
                            resp.status,
                            String::from_utf8_lossy(&resp.body).trim()
                        )),
                        Ok(Ok(_)) => None,
                    };
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match error {
                        Some(e) => {
                            counters.errors.set(counters.errors.get() + 1);
                            counters.first_error.borrow_mut().get_or_insert(e);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        None if in_window => {
                            counters.requests.set(counters.requests.get() + 1);
                            latency.borrow_mut().saturating_record(ended - started);
                        }
                        None => {}
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let latency = latency.replace(histogram());
    let first_error = counters.first_error.borrow_mut().take();
    Ok(DriveOut {
        requests: counters.requests.get(),
        errors: counters.errors.get(),
        first_error,
        latency,
    })
}
