//! The state every connection handler shares: the hub, settings, metrics, the drain signal and
//! the connection count that enforces `server.max_connections`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::settings::Settings;

pub struct App {
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server starts draining.
    pub drain: CancellationToken,
    /// Every connection task; the drain waits for them.
    pub tasks: TaskTracker,
    open: AtomicUsize,
}

/// One of the `server.max_connections` places, held for the life of a WebSocket connection.
pub struct ConnectionSlot {
    app: Arc<App>,
}

impl App {
    pub fn new(hub: Arc<Hub>, settings: Arc<Settings>, metrics: Arc<Metrics>) -> App {
        App {
            hub,
            settings,
            metrics,
            drain: CancellationToken::new(),
            tasks: TaskTracker::new(),
            open: AtomicUsize::new(0),
        }
    }

    /// Takes a connection place, or `None` when all are taken.
    pub fn try_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.settings.server.max_connections;
        let taken = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
        taken.ok()?;
        self.metrics.connections.inc();
        self.metrics.connections_accepted.inc();
        Some(ConnectionSlot { app: self.clone() })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.app.open.fetch_sub(1, Ordering::AcqRel);
        self.app.metrics.connections.dec();
    }
}
