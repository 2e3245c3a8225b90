//! The reaper: tears down connections whose client went away, on a thread of its own, so that
//! in a reconnect storm the clients coming back do not wait in the runtime's queues behind the
//! cleaning up after the ones that left.
//!
//! When 10,000 clients drop at once, their 10,000 tasks wake together, and each used to do its
//! whole teardown right away: leave every topic (the hub's per-topic bookkeeping) and shut the
//! socket down and close it (on loopback the kernel runs the peer's side of the FIN in the same
//! call). That work sat in the runtime's queues ahead of the new connections and of `/healthz`
//! (issue 16: `/healthz` max 124–242 ms during a storm). Handed over here, it takes its share of
//! the CPU beside the runtime's workers instead of a place in their queues (`/healthz` max
//! 41–63 ms): a departed connection's task only reads the end of its stream, gives its place
//! back (`server.max_connections` counts live clients) and hands its remains over.
//!
//! At normal priority on purpose. At nice 19 it tore down after the storm, but it takes the
//! hub's locks (a topic's, the pattern index's): preempted while holding one, it kept the
//! workers that needed it waiting until the scheduler gave it the CPU again (`/healthz` max up
//! to 209 ms in one run of three).
//!
//! Bounded: at most `CAPACITY` connections wait here, so at most that many sockets stay open
//! beyond `server.max_connections`. When the queue is full (a machine that stays saturated while
//! clients keep leaving), the task tears its connection down itself, as before. The drain
//! waits for what waits here, as for every connection task.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::warn;

use crate::cluster::node::Node;
use crate::pubsub::hub::Subscriber;
use crate::topic::Pattern;

/// Connections waiting to be torn down, at most.
const CAPACITY: usize = 16_384;

/// What is left of a connection whose client went away.
pub struct Remains {
    pub node: Arc<Node>,
    pub who: Subscriber,
    /// The subscriptions it still held.
    pub subscriptions: Vec<Pattern>,
    /// Its socket, closed when dropped; nothing is left to write on it.
    pub socket: Box<dyn Send>,
}

impl Remains {
    /// Leaves every topic (no delivery is queued for the client after this), then closes the
    /// socket. Off the runtime: the walk over a connection's topics runs in one go.
    fn dispose(self) {
        (self.node).unsubscribe_blocking(&self.who, &self.subscriptions, &self.subscriptions);
        drop(self.socket);
    }

    /// The same, in the connection's own task (the reaper had no room).
    pub async fn dispose_here(self) {
        (self.node)
            .unsubscribe(&self.who, &self.subscriptions, &self.subscriptions)
            .await;
        drop(self.socket);
    }
}

pub struct Reaper {
    queue: Option<SyncSender<(Remains, TaskTrackerToken)>>,
}

impl Reaper {
    /// Starts the reaper's thread, in the context of `runtime` (what it drops may belong to it).
    /// Without a thread (the system refused one), every teardown happens in its task.
    pub fn start(runtime: Handle) -> Reaper {
        let (queue, inbox) = sync_channel::<(Remains, TaskTrackerToken)>(CAPACITY);
        let thread = std::thread::Builder::new()
            .name("tickwire-reaper".into())
            .spawn(move || {
                let _context = runtime.enter();
                for (remains, _token) in inbox {
                    remains.dispose();
                }
            });
        match thread {
            Ok(_) => Reaper { queue: Some(queue) },
            Err(e) => {
                warn!(error = %e, "no reaper thread: connections are torn down in their tasks");
                Reaper { queue: None }
            }
        }
    }

    /// Hands `remains` over, holding `token` (what the drain waits for) until they are disposed
    /// of; gives them back when the reaper has no room.
    pub fn bury(&self, remains: Remains, token: TaskTrackerToken) -> Result<(), Remains> {
        let Some(queue) = &self.queue else {
            return Err(remains);
        };
        match queue.try_send((remains, token)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((remains, _)) | TrySendError::Disconnected((remains, _))) => Err(remains),
        }
    }
}
