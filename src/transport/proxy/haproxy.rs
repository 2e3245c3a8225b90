//! The PROXY protocol (v1 text and v2 binary) header that a trusted load balancer sends before
//! anything else on the connection, and reading it off a stream.
//!
//! PROXY protocol facts (HAProxy's "proxy-protocol.txt"): v1 is one text line
//! `PROXY TCP4|TCP6|UNKNOWN ... \r\n` of at most 107 bytes; v2 is a 16-byte binary head (the
//! 12-byte signature, version/command, family/transport, a big-endian length) followed by that
//! many bytes of addresses and TLVs. A LOCAL (v2) or UNKNOWN (v1) header names no client: the
//! connection's own peer is the client then.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::transport::proxy::rewind::Rewind;

/// Why a PROXY protocol header (`server.proxy_protocol`) was refused; the connection is closed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("PROXY protocol header too long")]
    TooLong,
    #[error("connection closed before the PROXY protocol header was complete")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(std::io::ErrorKind),
}

/// The v2 signature; no valid v1 header or HTTP request starts with it.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the spec's worst case, TCP6 with five-digit ports).
pub const V1_MAX: usize = 107;
/// Longest v2 address-and-TLV block accepted. The spec allows 65,535 bytes; the addresses take
/// at most 216 (AF_UNIX), and the TLVs load balancers add (ALPN, authority, a VPC endpoint id,
/// SSL facts) fit in a few hundred. A longer block is refused rather than buffered.
pub const V2_MAX_BODY: usize = 1024;
/// A complete PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection is the proxy's own (v2 LOCAL, e.g. a health check) or names no address
    /// tickwire can use (v1 UNKNOWN, v2 AF_UNSPEC or AF_UNIX): the TCP peer is the client.
    Local,
    /// A relayed connection from this source address.
    Proxied(SocketAddr),
}

impl Header {
    pub fn source(self) -> Option<SocketAddr> {
        match self {
            Header::Local => None,
            Header::Proxied(source) => Some(source),
        }
    }
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A valid beginning of a header: read more.
    Incomplete,
    /// A header of this many bytes.
    Done(Header, usize),
}

/// Parses a PROXY header (v1 or v2) at the start of `buf`. Never looks past the header's own
/// bytes, never needs more than `16 + V2_MAX_BODY` of them.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    const V1_PREFIX: &[u8] = b"PROXY ";
    if buf.starts_with(V1_PREFIX) {
        return parse_v1(buf);
    }
    if buf.starts_with(&V2_SIGNATURE) {
        return parse_v2(buf);
    }
    let n = buf.len();
    if V1_PREFIX.starts_with(buf) || (n < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(buf)) {
        return Ok(Parsed::Incomplete);
    }
    Err(ProxyHeaderError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(ProxyHeaderError::TooLong);
        }
        // A line never holds a lone CR or LF: fail early instead of waiting for more.
        if window
            .iter()
            .any(|&b| !(b.is_ascii_graphic() || b == b' ' || b == b'\r'))
            || window[..window.len().saturating_sub(1)].contains(&b'\r')
        {
            return Err(ProxyHeaderError::Malformed("v1 line has a control character"));
        }
        return Ok(Parsed::Incomplete);
    };
    let line = std::str::from_utf8(&window[..end])
        .map_err(|_| ProxyHeaderError::Malformed("v1 line is not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY"
    let bad = ProxyHeaderError::Malformed;
    let header = match fields.next() {
        // The spec: whatever follows UNKNOWN is ignored.
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = || fields.next().ok_or(bad("v1 line has too few fields"));
            let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
            if fields.next().is_some() {
                return Err(bad("v1 line has too many fields"));
            }
            let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip = match family {
                    "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4),
                    _ => s.parse::<Ipv6Addr>().map(IpAddr::V6),
                };
                ip.map_err(|_| bad("v1 address does not match its family"))
            };
            let port = |s: &str| -> Result<u16, ProxyHeaderError> {
                let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
                let leading_zero = s.len() > 1 && s.starts_with('0');
                (digits && !leading_zero)
                    .then(|| s.parse().ok())
                    .flatten()
                    .ok_or(bad("v1 port is not 0 to 65535"))
            };
            let (source, _) = (ip(src)?, ip(dst)?);
            let (sport, _) = (port(sport)?, port(dport)?);
            Header::Proxied(SocketAddr::new(source, sport))
        }
        _ => return Err(bad("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Done(header, end + 2))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    const HEAD: usize = 16;
    if buf.len() < HEAD {
        return Ok(Parsed::Incomplete);
    }
    let bad = ProxyHeaderError::Malformed;
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if version != 2 {
        return Err(bad("v2 version is not 2"));
    }
    if command > 1 {
        return Err(bad("v2 command is not LOCAL or PROXY"));
    }
    if family > 3 || transport > 2 {
        return Err(bad("v2 address family or transport is unknown"));
    }
    if len > V2_MAX_BODY {
        return Err(ProxyHeaderError::TooLong);
    }
    if buf.len() < HEAD + len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[HEAD..HEAD + len];
    let header = match (command, family) {
        // LOCAL: the proxy's own connection; the addresses (if any) are to be ignored.
        (0, _) => Header::Local,
        (_, 1) => {
            let a: &[u8; 12] = (body.get(..12).and_then(|a| a.try_into().ok()))
                .ok_or(bad("v2 block is shorter than its IPv4 addresses"))?;
            let source = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let port = u16::from_be_bytes([a[8], a[9]]);
            Header::Proxied(SocketAddr::new(IpAddr::V4(source), port))
        }
        (_, 2) => {
            let a: &[u8; 36] = (body.get(..36).and_then(|a| a.try_into().ok()))
                .ok_or(bad("v2 block is shorter than its IPv6 addresses"))?;
            let mut source = [0u8; 16];
            source.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Header::Proxied(SocketAddr::new(IpAddr::V6(source.into()), port))
        }
        // AF_UNSPEC or AF_UNIX: nothing an IP limit can use.
        _ => Header::Local,
    };
    // Any TLVs after the addresses are skipped: they are inside `len`.
    Ok(Parsed::Done(header, HEAD + len))
}

/// Reads a PROXY header off the start of `stream`, and returns it with the stream, which
/// replays whatever arrived after the header (a proxy may send the header and the client's
/// first bytes in one segment). The caller bounds the time.
pub async fn read_header<S>(mut stream: S) -> Result<(Header, Rewind<S>), ProxyHeaderError>
where
    S: AsyncRead + Unpin,
{
    // On the heap, and gone once the header is parsed: connection futures live as long as the
    // connection, so a buffer on the stack here would cost every connection its size.
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    loop {
        match parse(&buf)? {
            Parsed::Done(header, n) => {
                let rest = Bytes::from(buf).slice(n..);
                return Ok((header, Rewind::new(rest, stream)));
            }
            Parsed::Incomplete => {
                // `parse` never waits for more than 16 + V2_MAX_BODY bytes.
                buf.reserve(512);
                let read = stream
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| ProxyHeaderError::Io(e.kind()))?;
                if read == 0 {
                    return Err(ProxyHeaderError::Closed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;
    use tokio::io::AsyncReadExt;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn done(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Done(h, n)) => (h, n),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn v1_headers() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            done(line),
            (Header::Proxied("192.0.2.1:56324".parse().unwrap()), 45)
        );
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        assert_eq!(done(line).0, Header::Proxied("[2001:db8::1]:1".parse().unwrap()));
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (Header::Local, 15));
        assert_eq!(done(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").0, Header::Local);
        // Every prefix of a valid header is incomplete, never an error.
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        for n in 0..line.len() {
            assert_eq!(parse(&line[..n]).unwrap(), Parsed::Incomplete, "{n}");
        }
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 9\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 080 443\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1\n198.51.100.2",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4\x00",
            b"GET / HTTP/1.1\r\n\r\n",
            b"proxy TCP4 1.2.3.4 1.2.3.4 1 1\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(parse(bad).is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
        // No CRLF within 107 bytes.
        let long = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert_eq!(parse(long.as_bytes()), Err(ProxyHeaderError::TooLong));
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 16));
        assert_eq!(long.len(), V1_MAX);
        assert_eq!(done(long.as_bytes()), (Header::Local, V1_MAX));
    }

    #[test]
    fn v2_headers() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        let h = v2(1, 0x11, &body);
        assert_eq!(
            done(&h),
            (Header::Proxied("192.0.2.1:56324".parse().unwrap()), 28)
        );
        // TLVs after the addresses are skipped; what follows the header is not consumed.
        let mut with_tlv = body.clone();
        with_tlv.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        let mut h = v2(1, 0x11, &with_tlv);
        h.extend_from_slice(b"GET /");
        assert_eq!(done(&h).1, 16 + 17);
        // IPv6.
        let mut body6 = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        body6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&[0x1f, 0x90, 0x01, 0xbb]);
        assert_eq!(
            done(&v2(1, 0x21, &body6)).0,
            Header::Proxied("[2001:db8::1]:8080".parse().unwrap())
        );
        // LOCAL, AF_UNSPEC and AF_UNIX: the peer is the client.
        assert_eq!(done(&v2(0, 0x00, &[])), (Header::Local, 16));
        assert_eq!(done(&v2(0, 0x11, &body)).0, Header::Local);
        assert_eq!(done(&v2(1, 0x00, &[])).0, Header::Local);
        assert_eq!(done(&v2(1, 0x31, &[0; 216])).0, Header::Local);
        // Truncated: incomplete at every length.
        let h = v2(1, 0x11, &body);
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]).unwrap(), Parsed::Incomplete, "{n}");
        }
        // Malformed.
        let mut wrong_version = v2(1, 0x11, &body);
        wrong_version[12] = 0x11;
        let mut wrong_sig = v2(1, 0x11, &body);
        wrong_sig[11] = b'X';
        for bad in [
            wrong_version,
            wrong_sig,
            v2(2, 0x11, &body),
            v2(1, 0x41, &body),
            v2(1, 0x13, &body),
            v2(1, 0x11, &body[..11]),
            v2(1, 0x21, &body),
        ] {
            assert!(parse(&bad).is_err(), "{bad:?} accepted");
        }
        // Over the cap: refused from the 16-byte head alone.
        let mut head = v2(1, 0x11, &[]);
        head[14..16].copy_from_slice(&((V2_MAX_BODY + 1) as u16).to_be_bytes());
        assert_eq!(parse(&head), Err(ProxyHeaderError::TooLong));
        assert!(matches!(
            parse(&v2(1, 0x11, &vec![0; V2_MAX_BODY])),
            Ok(Parsed::Done(_, _))
        ));
    }

    #[tokio::test]
    async fn read_header_replays_what_follows() {
        let mut sent = b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\nGET / HTTP/1.1\r\n\r\n".to_vec();
        let (header, mut rest) = read_header(&sent[..]).await.unwrap();
        assert_eq!(header.source(), Some("192.0.2.1:1".parse().unwrap()));
        let mut after = Vec::new();
        rest.read_to_end(&mut after).await.unwrap();
        assert_eq!(after, b"GET / HTTP/1.1\r\n\r\n");
        sent.truncate(20);
        assert!(matches!(
            read_header(&sent[..]).await,
            Err(ProxyHeaderError::Closed)
        ));
        assert!(matches!(
            read_header(&b"GET / HTTP/1.1\r\n\r\n"[..]).await,
            Err(ProxyHeaderError::Missing)
        ));
    }
}
