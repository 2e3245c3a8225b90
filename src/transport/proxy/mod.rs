//! Who the client is behind a reverse proxy or load balancer: the trusted proxies (the
//! networks of `server.trusted_proxies`, built by `prepare`) and the client they name, through
//! `X-Forwarded-For` (`forwarded`) or the PROXY protocol header (`haproxy`) that a trusted load
//! balancer sends before anything else on the connection.
//!
//! Trust is per hop: a forwarded address is believed only when the hop that reported it is in
//! `server.trusted_proxies`. Anyone can send `X-Forwarded-For` or a PROXY header, so from any
//! other peer both are ignored (see docs/security.md §9).

mod forwarded;
mod haproxy;
mod rewind;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use hyper::header::HeaderMap;

use crate::settings::Cidr;

pub use haproxy::read_header;

/// `server.trusted_proxies`, parsed once at start-up. Linear search: the list is a handful of
/// networks, and it is consulted once per connection or upgrade, not per message.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

/// The addresses one TCP connection arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddrs {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The source named by a PROXY protocol header that the (trusted) peer sent.
    pub proxied: Option<SocketAddr>,
}

impl PeerAddrs {
    pub fn direct(peer: SocketAddr) -> PeerAddrs {
        PeerAddrs { peer, proxied: None }
    }
}

/// The client of a request, as used for `limits.max_connections_per_ip` and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client; port 0 when it is not known (an `X-Forwarded-For` entry without one).
    pub client: SocketAddr,
    /// The TCP peer, when it is a trusted proxy that named another client.
    pub proxy: Option<SocketAddr>,
}

impl ClientAddr {
    pub fn ip(&self) -> IpAddr {
        self.client.ip()
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.client.port() {
            0 => self.client.ip().fmt(f),
            _ => self.client.fmt(f),
        }
    }
}

impl TrustedProxies {
    /// The networks of `server.trusted_proxies`, as `Settings::trusted_proxies` parsed them.
    pub fn new(networks: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies(networks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client of a request on a connection with `addrs`: the PROXY-protocol source when
    /// there is one, else the peer; and when that hop is trusted, the rightmost
    /// `X-Forwarded-For` entry that is not itself trusted (the leftmost if all are). Multiple
    /// `X-Forwarded-For` headers count as one list, in order. Any malformed entry met on the
    /// walk, or more than [`forwarded::MAX_FORWARDED_HOPS`] entries, leaves the hop as the client.
    pub fn client(&self, addrs: PeerAddrs, headers: &HeaderMap) -> ClientAddr {
        let hop = addrs.proxied.unwrap_or(addrs.peer);
        let via = |client: SocketAddr| ClientAddr {
            client,
            proxy: (client != addrs.peer).then_some(addrs.peer),
        };
        if !self.contains(hop.ip()) {
            return via(hop);
        }
        match forwarded::forwarded_for(headers, |ip| self.contains(ip)) {
            Some(ip) => via(SocketAddr::new(ip, 0)),
            None => via(hop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| Cidr::parse(s).unwrap()).collect())
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn client_of(list: &[&str], peer: &str, xff: &[&str]) -> String {
        let addrs = PeerAddrs::direct(peer.parse().unwrap());
        trusted(list).client(addrs, &headers(xff)).to_string()
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right() {
        let lb = ["127.0.0.1", "10.0.0.0/8"];
        // Untrusted peer: headers ignored.
        assert_eq!(
            client_of(&["10.0.0.0/8"], "127.0.0.1:5", &["6.6.6.6"]),
            "127.0.0.1:5"
        );
        assert_eq!(client_of(&[], "127.0.0.1:5", &["6.6.6.6"]), "127.0.0.1:5");
        // Trusted peer, no header: the peer.
        assert_eq!(client_of(&lb, "127.0.0.1:5", &[]), "127.0.0.1:5");
        assert_eq!(client_of(&lb, "127.0.0.1:5", &["6.6.6.6"]), "6.6.6.6");
        // Trusted hops are skipped; a spoofed leftmost entry is never reached.
        assert_eq!(client_of(&lb, "127.0.0.1:5", &["6.6.6.6, 10.0.0.1"]), "6.6.6.6");
        assert_eq!(client_of(&lb, "127.0.0.1:5", &["1.1.1.1, 6.6.6.6"]), "6.6.6.6");
        assert_eq!(
            client_of(&lb, "127.0.0.1:5", &["1.1.1.1", "6.6.6.6, 10.2.2.2"]),
            "6.6.6.6"
        );
        assert_eq!(client_of(&lb, "127.0.0.1:5", &["6.6.6.6", "10.2.2.2"]), "6.6.6.6");
        // All trusted: the leftmost.
        assert_eq!(client_of(&lb, "127.0.0.1:5", &["10.0.0.3, 10.0.0.2"]), "10.0.0.3");
        // Ports and brackets.
        assert_eq!(client_of(&lb, "127.0.0.1:5", &["6.6.6.6:1234"]), "6.6.6.6");
        assert_eq!(
            client_of(&lb, "127.0.0.1:5", &["[2001:db8::1]:80"]),
            "2001:db8::1"
        );
        assert_eq!(client_of(&lb, "127.0.0.1:5", &["[2001:db8::1]"]), "2001:db8::1");
        assert_eq!(
            client_of(&lb, "127.0.0.1:5", &["2001:db8::1, ,10.0.0.1"]),
            "2001:db8::1"
        );
        // Malformed on the walk: the peer.
        assert_eq!(
            client_of(&lb, "127.0.0.1:5", &["6.6.6.6, unknown"]),
            "127.0.0.1:5"
        );
        assert_eq!(client_of(&lb, "127.0.0.1:5", &["garbage"]), "127.0.0.1:5");
        // ...but not when it is left of the client.
        assert_eq!(client_of(&lb, "127.0.0.1:5", &["garbage, 6.6.6.6"]), "6.6.6.6");
        // Too many hops: the peer.
        let long = vec!["10.0.0.1"; forwarded::MAX_FORWARDED_HOPS + 1].join(",");
        assert_eq!(client_of(&lb, "127.0.0.1:5", &[long.as_str()]), "127.0.0.1:5");
        let huge = ",".repeat(100_000);
        assert_eq!(client_of(&lb, "127.0.0.1:5", &[huge.as_str()]), "127.0.0.1:5");
        // A non-ASCII header value.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"6.6.6.6\xff").unwrap(),
        );
        let addrs = PeerAddrs::direct("127.0.0.1:5".parse().unwrap());
        assert_eq!(trusted(&lb).client(addrs, &h).to_string(), "127.0.0.1:5");
    }

    #[test]
    fn proxied_source_is_the_hop() {
        let lb = trusted(&["127.0.0.1/32"]);
        let peer = "127.0.0.1:9".parse().unwrap();
        let addrs = PeerAddrs {
            peer,
            proxied: Some("192.0.2.1:4000".parse().unwrap()),
        };
        // An untrusted PROXY source: its XFF is not believed.
        let c = lb.client(addrs, &headers(&["6.6.6.6"]));
        assert_eq!((c.to_string(), c.proxy), ("192.0.2.1:4000".into(), Some(peer)));
        // A trusted one: it is.
        let lb = trusted(&["127.0.0.1/32", "192.0.2.1"]);
        let c = lb.client(addrs, &headers(&["6.6.6.6"]));
        assert_eq!((c.to_string(), c.proxy), ("6.6.6.6".into(), Some(peer)));
        let direct = lb.client(PeerAddrs::direct(peer), &headers(&[]));
        assert_eq!(direct.proxy, None);
    }
}
