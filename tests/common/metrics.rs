//! `GET /metrics`: a strict Prometheus text parser (a malformed line fails the test), sample
//! look-ups by name and labels, and polling until a value settles.
//!
//! Part of the shared harness; not every test binary uses every helper.

use std::net::SocketAddr;
use std::time::Duration;

use super::http::http_get;
use super::time::RECV_TIMEOUT;

/// The value of one sample in `GET /metrics`, named exactly as exposed (labels included, e.g.
/// `tickwire_recoveries_total{result="reset"}`); None when the sample is absent.
pub async fn metric(addr: SocketAddr, sample: &str) -> Option<f64> {
    let r = http_get(addr, "/metrics").await;
    assert_eq!(r.status, 200, "GET /metrics");
    let text = String::from_utf8(r.body).expect("metrics text is UTF-8");
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| {
            value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("metric {sample}: bad value {value:?}: {e}"))
        })
    })
}

/// Like [`metric`], panicking when the sample is absent.
pub async fn metric_value(addr: SocketAddr, sample: &str) -> f64 {
    metric(addr, sample)
        .await
        .unwrap_or_else(|| panic!("metric sample {sample} not exposed"))
}

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` response.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Metric family name -> type, from the `# TYPE` lines.
    pub types: std::collections::BTreeMap<String, String>,
}

impl Scrape {
    /// Sum of every sample named `name` whose labels include all of `labels`; None when no
    /// sample matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.samples.iter().filter(|s| s.name == name) {
            if labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }

    /// Like [`Scrape::get`], panicking when the series is missing.
    #[track_caller]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("metric {name}{labels:?} is not exported"))
    }

    /// Every distinct sample name plus every `# TYPE` family name.
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        let mut names: std::collections::BTreeSet<String> =
            self.samples.iter().map(|s| s.name.clone()).collect();
        names.extend(self.types.keys().cloned());
        names
    }
}

fn parse_prom_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses the Prometheus text format (version 0.0.4), panicking on a malformed line.
pub fn parse_prometheus(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.split_whitespace();
            if parts.next() == Some("TYPE") {
                let name = parts
                    .next()
                    .unwrap_or_else(|| panic!("line {n}: bad TYPE: {line}"));
                let ty = parts
                    .next()
                    .unwrap_or_else(|| panic!("line {n}: bad TYPE: {line}"));
                out.types.insert(name.to_string(), ty.to_string());
            }
            continue;
        }
        let bad = |why: &str| -> ! { panic!("/metrics line {n} malformed ({why}): {line:?}") };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or_else(|| bad("no value"));
        let name = &line[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            bad("invalid metric name");
        }
        let mut labels = std::collections::BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let end = loop {
                // Skip separators.
                while let Some((_, c)) = chars.peek() {
                    if *c == ',' || *c == ' ' {
                        chars.next();
                    } else {
                        break;
                    }
                }
                match chars.peek() {
                    Some((i, '}')) => break *i,
                    None => bad("unterminated labels"),
                    _ => {}
                }
                let mut key = String::new();
                loop {
                    match chars.next() {
                        Some((_, '=')) => break,
                        Some((_, c)) if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                        _ => bad("bad label name"),
                    }
                }
                if !matches!(chars.next(), Some((_, '"'))) {
                    bad("label value not quoted");
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => bad("bad escape in label value"),
                        },
                        Some((_, c)) => value.push(c),
                        None => bad("unterminated label value"),
                    }
                }
                if labels.insert(key.clone(), value).is_some() {
                    bad("duplicate label");
                }
            };
            rest = &after[end + 1..];
        }
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_prom_value)
            .unwrap_or_else(|| bad("bad value"));
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().unwrap_or_else(|_| bad("bad timestamp"));
        }
        if fields.next().is_some() {
            bad("trailing fields");
        }
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// `GET /metrics`, asserting 200 and the Prometheus text content type.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let r = http_get(addr, "/metrics").await;
    assert_eq!(
        r.status,
        200,
        "GET /metrics: {}",
        String::from_utf8_lossy(&r.body)
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "GET /metrics content-type {ct:?}"
    );
    parse_prometheus(std::str::from_utf8(&r.body).expect("/metrics body is not UTF-8"))
}

/// Scrapes until `name{labels}` satisfies `ok` (within [`RECV_TIMEOUT`]); returns the value.
/// Values that take a moment to settle (gauges after a disconnect, disconnect counters) are
/// polled rather than slept for.
#[track_caller]
pub fn wait_metric<'a>(
    addr: SocketAddr,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
    what: &'a str,
    ok: impl Fn(f64) -> bool + 'a,
) -> impl std::future::Future<Output = f64> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            let v = scrape(addr).await.get(name, labels);
            if let Some(v) = v {
                if ok(v) {
                    return v;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{caller}: {name}{labels:?} never became {what} within {RECV_TIMEOUT:?} (last value {v:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Scrapes until `ok` holds for the scrape (within [`RECV_TIMEOUT`]) and returns that scrape.
/// For counters the writer updates just after the socket write: a client may read a frame a
/// moment before it is counted.
#[track_caller]
pub fn wait_scrape<'a>(
    addr: SocketAddr,
    what: &'a str,
    ok: impl Fn(&Scrape) -> bool + 'a,
) -> impl std::future::Future<Output = Scrape> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            let m = scrape(addr).await;
            if ok(&m) {
                return m;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{caller}: /metrics never showed {what} within {RECV_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
