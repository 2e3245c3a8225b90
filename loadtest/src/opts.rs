//! Parsing and validating the target URL, source address ranges and durations.
//!
//! The tool only ever sends traffic to loopback addresses (127.0.0.0/8 or ::1): a URL that
//! names or resolves to anything else is refused before any connection is made.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use tickwire_proto::Topic;

/// Where the server is: the WebSocket endpoint and the HTTP base derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    pub addr: SocketAddr,
    /// `host[:port]` as written in the URL, for the `Host` header.
    pub host: String,
    /// Path of the WebSocket endpoint (with query, if any).
    pub path: String,
}

impl Target {
    /// `http://host:port`, the base of the publish and metrics endpoints.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.host)
    }
}

/// An HTTP endpoint on a loopback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

fn split_url<'a>(url: &'a str, schemes: &[&str]) -> anyhow::Result<(&'a str, &'a str, &'a str)> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{url:?} is not a URL (expected e.g. ws://127.0.0.1:8080/ws)"))?;
    if !schemes.contains(&scheme) {
        bail!(
            "unsupported scheme {scheme:?} in {url:?}: expected {}",
            schemes.join(" or ")
        );
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        bail!("{url:?} has no host");
    }
    if host.contains('@') {
        bail!("{url:?}: credentials in the URL are not supported");
    }
    Ok((scheme, host, path))
}

/// Resolves `host` (with `default_port` if it has none) and insists on loopback addresses.
fn resolve_loopback(host: &str, default_port: u16, url: &str) -> anyhow::Result<SocketAddr> {
    let with_port = if host.starts_with('[') {
        if host.contains("]:") {
            host.to_string()
        } else {
            format!("{host}:{default_port}")
        }
    } else if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host:?} in {url:?}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{host:?} in {url:?} resolves to no address");
    }
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "refusing to load {url:?}: {host:?} is {}, not a loopback address. \
             tickwire-loadtest only targets servers on this machine (127.0.0.0/8 or ::1)",
            bad.ip()
        );
    }
    // Prefer IPv4 (localhost may resolve to both).
    Ok(*addrs.iter().find(|a| a.is_ipv4()).unwrap_or(&addrs[0]))
}

/// Parses `ws://host[:port]/path`; the host must be loopback.
pub fn parse_ws_url(url: &str) -> anyhow::Result<Target> {
    if url.starts_with("wss://") {
        bail!("{url:?}: TLS (wss://) is not supported; use ws:// against a local server");
    }
    let (_, host, path) = split_url(url, &["ws"])?;
    let addr = resolve_loopback(host, 80, url)?;
    Ok(Target {
        url: url.to_string(),
        addr,
        host: host.to_string(),
        path: path.to_string(),
    })
}

/// Parses `http://host[:port]/path`; the host must be loopback.
pub fn parse_http_url(url: &str) -> anyhow::Result<HttpEndpoint> {
    let (_, host, path) = split_url(url, &["http"])?;
    let addr = resolve_loopback(host, 80, url)?;
    Ok(HttpEndpoint {
        addr,
        host: host.to_string(),
        path: path.to_string(),
    })
}

/// The HTTP endpoint `path` on the same server as the WebSocket `target`.
pub fn endpoint(target: &Target, path: &str) -> HttpEndpoint {
    HttpEndpoint {
        addr: target.addr,
        host: target.host.clone(),
        path: path.to_string(),
    }
}

/// Most source addresses one run may use.
const MAX_SOURCE_IPS: u32 = 65_536;

/// Parses a comma-separated list of addresses and inclusive IPv4 ranges
/// (`127.0.0.1-127.0.0.16,127.0.1.1`). Every address must be loopback.
pub fn parse_source_ips(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let parse = |s: &str| -> anyhow::Result<Ipv4Addr> {
                s.trim()
                    .parse()
                    .with_context(|| format!("{s:?} in range {part:?} is not an IPv4 address"))
            };
            let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
            if a > b {
                bail!("source range {part:?} is reversed");
            }
            if b - a >= MAX_SOURCE_IPS {
                bail!("source range {part:?} has more than {MAX_SOURCE_IPS} addresses");
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            let ip: IpAddr = part
                .parse()
                .with_context(|| format!("{part:?} is not an IP address or range"))?;
            out.push(ip);
        }
    }
    if out.is_empty() {
        bail!("no source address in {spec:?}");
    }
    if let Some(bad) = out.iter().find(|ip| !ip.is_loopback()) {
        bail!("source address {bad} is not a loopback address (127.0.0.0/8 or ::1)");
    }
    Ok(out)
}

/// Parses a duration: `10` or `10s` (seconds, fractions allowed), `250ms`, `2m`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        _ => bail!("unknown unit {unit:?} in duration {s:?} (use ms, s or m)"),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        bail!("duration {s:?} is out of range");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A topic name prefix must make valid topics when an index is appended: checked as the
/// server checks a topic (`tickwire_proto::Topic`), on the first one.
pub fn check_topic_prefix(prefix: &str) -> anyhow::Result<()> {
    if prefix.is_empty() {
        bail!("the topic prefix must not be empty");
    }
    if let Err(e) = Topic::parse(&format!("{prefix}0")) {
        bail!("topic prefix {prefix:?} does not make valid topics: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls() {
        let t = parse_ws_url("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((t.host.as_str(), t.path.as_str()), ("127.0.0.1:8080", "/ws"));
        assert_eq!(t.http_base(), "http://127.0.0.1:8080");
        let t = parse_ws_url("ws://127.0.0.9").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        let t = parse_ws_url("ws://localhost:9/x?y=1").unwrap();
        assert!(t.addr.ip().is_loopback());
        assert_eq!(t.path, "/x?y=1");
        let t = parse_ws_url("ws://[::1]:8080/ws").unwrap();
        assert_eq!(t.addr, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn refuses_non_loopback_and_bad_urls() {
        for url in [
            "ws://10.0.0.1:8080/ws",
            "ws://192.168.1.2/ws",
            "ws://8.8.8.8/ws",
            "ws://0.0.0.0:8080/ws",
        ] {
            let err = parse_ws_url(url).unwrap_err().to_string();
            assert!(err.contains("not a loopback"), "{url}: {err}");
        }
        assert!(parse_ws_url("wss://127.0.0.1/ws")
            .unwrap_err()
            .to_string()
            .contains("TLS"));
        assert!(parse_ws_url("http://127.0.0.1/ws").is_err());
        assert!(parse_ws_url("127.0.0.1:8080").is_err());
        assert!(parse_ws_url("ws:///ws").is_err());
        assert!(parse_http_url("http://10.1.1.1/metrics").is_err());
        assert_eq!(
            parse_http_url("http://127.0.0.1:9090/metrics").unwrap().path,
            "/metrics"
        );
    }

    #[test]
    fn source_ip_ranges() {
        let v = parse_source_ips("127.0.0.1-127.0.0.16").unwrap();
        assert_eq!(v.len(), 16);
        assert_eq!(v[0], "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(v[15], "127.0.0.16".parse::<IpAddr>().unwrap());
        let v = parse_source_ips("127.0.0.1, 127.0.0.5-127.0.0.6,::1").unwrap();
        assert_eq!(v.len(), 4);
        // a range across an octet boundary
        let v = parse_source_ips("127.0.0.255-127.0.1.1").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[1], "127.0.1.0".parse::<IpAddr>().unwrap());
        assert_eq!(parse_source_ips("127.0.0.3").unwrap().len(), 1);
    }

    #[test]
    fn bad_source_ips() {
        for spec in [
            "",
            "127.0.0.9-127.0.0.1",
            "10.0.0.1",
            "127.0.0.1-10.0.0.1",
            "127.0.0.1-127.2.0.0",
            "banana",
            "127.0.0.1-::1",
        ] {
            assert!(parse_source_ips(spec).is_err(), "{spec:?} should be refused");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn topic_prefixes() {
        assert!(check_topic_prefix("bench.t").is_ok());
        assert!(check_topic_prefix("a-b_c.").is_ok());
        for bad in ["", ".a", "a..b", "a b", "a*", "a>"] {
            assert!(check_topic_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
