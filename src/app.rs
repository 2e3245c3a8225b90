//! The state every connection handler shares: the node (hub and broker), settings, metrics, authentication, the
//! trusted proxies, the drain signal, the reaper, the connection counts that enforce
//! `server.max_connections` and `limits.max_connections_per_ip` (per client address, as
//! [`crate::transport::proxy`] determines it behind a trusted proxy), and the request body budget that
//! enforces `http.max_inflight_body_bytes`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::cluster::node::Node;
use crate::metrics::{Metrics, Transport};
use crate::reaper::Reaper;
use crate::settings::Settings;
use crate::transport::proxy::TrustedProxies;

pub struct App {
    pub node: Arc<Node>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    /// `server.trusted_proxies`, parsed.
    pub proxies: TrustedProxies,
    /// Cancelled when the server starts draining.
    pub drain: CancellationToken,
    /// Every connection task; the drain waits for them.
    pub tasks: TaskTracker,
    /// Where departed connections are torn down.
    pub reaper: Reaper,
    open: AtomicUsize,
    /// Open connections (WebSocket and SSE) per client address; an address leaves the map at zero, so
    /// its size is bounded by the open connections.
    per_ip: DashMap<IpAddr, usize>,
    /// Bytes of request bodies reserved by [`BodyPermit`]s, at most
    /// `http.max_inflight_body_bytes`.
    body_bytes: AtomicUsize,
}

/// Why no connection place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections_per_ip` reached for this address.
    IpLimit,
    /// `server.max_connections` reached.
    Limit,
}

/// One of the `server.max_connections` places (and one of its address's places), held for the
/// life of a connection (a WebSocket or an SSE stream).
pub struct ConnectionSlot {
    app: Arc<App>,
    ip: Option<IpAddr>,
    transport: Transport,
}

/// A share of `http.max_inflight_body_bytes`, held while a request body is read and used; given
/// back when dropped, so every way a request ends (error, timeout, cancelled task) releases it.
pub struct BodyPermit<'a> {
    app: &'a App,
    bytes: usize,
}

impl BodyPermit<'_> {
    /// Reserves `n` more bytes; false (and nothing reserved) when the budget has no room.
    pub fn grow(&mut self, n: usize) -> bool {
        let max = self.app.settings.http.max_inflight_body_bytes;
        let taken = (self.app.body_bytes).fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(n).filter(|&total| total <= max)
        });
        if taken.is_ok() {
            self.bytes += n;
        }
        taken.is_ok()
    }
}

impl Drop for BodyPermit<'_> {
    fn drop(&mut self) {
        self.app.body_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The address a client is counted under: IPv4 as is (also when it reaches an IPv6 socket as
/// `::ffff:a.b.c.d`), IPv6 by its /64, the smallest block one subscriber line usually gets.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

impl App {
    pub fn new(
        node: Arc<Node>,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        auth: Auth,
        proxies: TrustedProxies,
    ) -> App {
        App {
            node,
            settings,
            metrics,
            auth,
            proxies,
            drain: CancellationToken::new(),
            tasks: TaskTracker::new(),
            reaper: Reaper::start(tokio::runtime::Handle::current()),
            open: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            body_bytes: AtomicUsize::new(0),
        }
    }

    /// Reserves `n` bytes of the request body budget; `None` when they do not fit.
    pub fn reserve_body(&self, n: usize) -> Option<BodyPermit<'_>> {
        let mut permit = BodyPermit { app: self, bytes: 0 };
        permit.grow(n).then_some(permit)
    }

    /// Takes a connection place for a client at `ip` (the client's address, not a trusted
    /// proxy's): one of its address's, then one of the server's. Every transport shares the
    /// same places; `transport` only labels the connection metrics.
    pub fn try_connection(
        self: &Arc<Self>,
        ip: IpAddr,
        transport: Transport,
    ) -> Result<ConnectionSlot, Refused> {
        let per_ip = self.settings.limits.max_connections_per_ip;
        let ip = (per_ip > 0).then(|| client_key(ip));
        if let Some(ip) = ip {
            let mut count = self.per_ip.entry(ip).or_insert(0);
            if *count >= per_ip {
                return Err(Refused::IpLimit);
            }
            *count += 1;
        }
        let max = self.settings.server.max_connections;
        let taken = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
        if taken.is_err() {
            if let Some(ip) = ip {
                self.release(ip);
            }
            return Err(Refused::Limit);
        }
        self.metrics.connections(transport).inc();
        self.metrics.connections_accepted(transport).inc();
        Ok(ConnectionSlot {
            app: self.clone(),
            ip,
            transport,
        })
    }

    /// Gives back one of the address's places.
    fn release(&self, ip: IpAddr) {
        if let Entry::Occupied(mut count) = self.per_ip.entry(ip) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            self.app.release(ip);
        }
        self.app.open.fetch_sub(1, Ordering::AcqRel);
        self.app.metrics.connections(self.transport).dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_grouped() {
        let key = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff::1"), key("2001:db8:1:2::9"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }
}
