//! The `X-Forwarded-For` walk: which entry of the header, read from the right, names the client
//! when every hop to its right is trusted. What "trusted" means is the caller's
//! (`TrustedProxies`); this only reads the header.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use hyper::header::HeaderMap;

/// Most `X-Forwarded-For` entries examined from the right. No real chain has this many trusted
/// proxies; past it the walk gives up and the peer is the client.
pub const MAX_FORWARDED_HOPS: usize = 32;

/// The walk, right to left, over every `X-Forwarded-For` header in order; `None`: no usable entry.
pub(super) fn forwarded_for(headers: &HeaderMap, trusted: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    let mut examined = 0;
    let mut leftmost = None;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let value = value.to_str().ok()?;
        for entry in value.rsplit(',') {
            examined += 1;
            if examined > MAX_FORWARDED_HOPS {
                return None;
            }
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let ip = parse_hop(entry)?;
            if !trusted(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
    }
    leftmost
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`) or
/// in brackets (`[::1]`), as various proxies write them.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}
