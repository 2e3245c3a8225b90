//! An IP network as `server.trusted_proxies` lists it (`10.0.0.0/8`, `::1`): parsing, so that
//! a bad entry is refused with the settings, and matching, for `transport::proxy`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 network, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `"10.0.0.0/8"`, `"::1/128"`, or a bare address (a /32 or /128). Host bits below the
    /// prefix must be zero: `"10.1.2.3/8"` is more likely a typo than a wish to trust a /8.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                // Written plainly: no sign, no leading zeros (`u8::parse` takes `+8` and `08`).
                Ok(n) if n <= max && n.to_string() == p => n,
                _ => return Err(format!("{s:?}: prefix must be 0 to {max}")),
            },
        };
        let cidr = Cidr { net, prefix };
        if cidr.masked(net) != net {
            return Err(format!(
                "{s:?} has bits set past the /{prefix}: the network is {}/{prefix}",
                cidr.masked(net)
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is inside; an IPv4 address seen on an IPv6 socket (`::ffff:a.b.c.d`)
    /// matches IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(_), v4 @ IpAddr::V4(_)) => self.masked(v4) == self.net,
            (IpAddr::V6(_), v6 @ IpAddr::V6(_)) => self.masked(v6) == self.net,
            (IpAddr::V6(_), IpAddr::V4(v4)) => self.masked(IpAddr::V6(v4.to_ipv6_mapped())) == self.net,
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }

    /// `ip` with the bits past the prefix cleared (same family as `ip`).
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.255.1.2".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()), "v4-mapped peer");
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let c = Cidr::parse("127.0.0.1").unwrap();
        assert_eq!(c.to_string(), "127.0.0.1/32");
        assert!(c.contains("127.0.0.1".parse().unwrap()));
        assert!(!c.contains("127.0.0.2".parse().unwrap()));
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!c.contains("2001:db9::1".parse().unwrap()));
        assert!(!c.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
        assert!(Cidr::parse("::/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("::ffff:1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("::ffff:10.0.0.0/104")
            .unwrap()
            .contains("10.9.9.9".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "10.0.0.1/8",
            "example.com",
            "10.0.0.0/8/8",
            "fe80::1%eth0",
            " /8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
