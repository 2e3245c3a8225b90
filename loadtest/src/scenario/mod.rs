//! The scenarios. Each is a library call taking its configuration and returning a
//! serializable report; the binary only parses options and prints.

pub mod bandwidth;
pub mod connect;
pub mod fanout;
pub mod idle;
pub mod patterns;
pub mod publish;
pub mod reconnect;
pub mod topics;

use std::net::IpAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::opts::{HttpEndpoint, Target};
use crate::pool::{Pool, PoolConfig, SubPlan};
use crate::progress::Progress;
use crate::server::{self, ServerSnap};

/// Options every scenario shares.
#[derive(Debug, Clone)]
pub struct Common {
    pub target: Target,
    /// Nodes the connections are spread over, round-robin (`--subscribe-urls`); empty: `target`.
    pub spread: Vec<Target>,
    /// Where `/metrics` is (default: on the server's own HTTP port).
    pub metrics: HttpEndpoint,
    pub source_ips: Vec<IpAddr>,
    pub threads: usize,
    pub connect_concurrency: usize,
    pub connect_attempts: u32,
    pub connect_timeout: Duration,
    pub progress: bool,
    pub label: String,
    /// The server process, for precise CPU figures (`/metrics` has whole seconds only).
    pub server_pid: Option<u32>,
    /// Every WebSocket connection offers permessage-deflate and fails if it is not accepted.
    pub deflate: bool,
}

impl Common {
    /// Defaults for a server at `target` (metrics on the same port).
    pub fn new(target: Target) -> Common {
        let metrics = crate::opts::endpoint(&target, "/metrics");
        let server_pid = crate::sys::listener_pid(target.addr);
        Common {
            target,
            spread: Vec::new(),
            metrics,
            source_ips: Vec::new(),
            threads: 2,
            connect_concurrency: 256,
            connect_attempts: 3,
            connect_timeout: Duration::from_secs(30),
            progress: false,
            label: String::new(),
            server_pid,
            deflate: false,
        }
    }

    pub(crate) fn pool_config(&self, connections: usize, plan: SubPlan, topic_prefix: &str) -> PoolConfig {
        PoolConfig {
            target: self.target.clone(),
            spread: self.spread.clone(),
            connections,
            source_ips: self.source_ips.clone(),
            threads: self.threads,
            connect_concurrency: self.connect_concurrency,
            connect_attempts: self.connect_attempts,
            plan,
            topic_prefix: topic_prefix.to_string(),
            recovery: false,
            subscribe: Default::default(),
            watch: None,
            deflate: self.deflate,
            sse: false,
        }
    }

    /// Scrapes `/metrics`; a failure is reported once through `progress` and yields `None`.
    pub(crate) fn scrape(&self, progress: &Progress, warned: &mut bool) -> Option<ServerSnap> {
        match server::scrape(&self.metrics) {
            Ok(mut s) => {
                if let Some(cpu) = self
                    .server_pid
                    .and_then(|p| crate::sys::cpu_seconds(&p.to_string()))
                {
                    s.cpu_seconds = Some(cpu);
                }
                Some(s)
            }
            Err(e) => {
                if !*warned {
                    *warned = true;
                    progress.println(&format!(
                        "warning: cannot read server metrics ({e:#}); server figures will be missing"
                    ));
                }
                None
            }
        }
    }
}

/// Percentiles of a µs histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Option<LatencySummary> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        })
    }
}

/// Client-side resource use over an interval.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ClientUsage {
    /// This process, % of one core.
    pub cpu_pct: f64,
    /// The whole machine, % busy of all cores.
    pub machine_busy_pct: f64,
    pub ncpu: usize,
    pub rss_bytes: Option<u64>,
}

impl ClientUsage {
    pub(crate) fn between(a: &crate::sys::CpuSnap, b: &crate::sys::CpuSnap) -> ClientUsage {
        let (cpu_pct, machine_busy_pct) = a.usage(b);
        ClientUsage {
            cpu_pct,
            machine_busy_pct,
            ncpu: crate::sys::ncpu(),
            rss_bytes: crate::sys::self_rss_bytes(),
        }
    }
}

/// Progress text for a pool while connecting.
pub(crate) fn connect_progress(pool: &Pool) -> String {
    let s = pool.shared();
    use std::sync::atomic::Ordering::Relaxed;
    format!(
        "connecting: {} upgraded, {} ready, {} failed of {}",
        s.connected.load(Relaxed),
        pool.ready(),
        s.failed.load(Relaxed),
        pool.config.connections
    )
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
