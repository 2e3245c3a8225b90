//! Two futures run to completion in one task, each polled only when its own waker fired.
//!
//! A connection's reader and writer share one task (a task each would cost every idle
//! connection a few hundred bytes more), but most wake-ups are deliveries, for the writer
//! alone. `tokio::join!` polls every unfinished branch on every wake-up, so each delivery
//! would also poll the reader's socket, its timer and its signals: measured with callgrind,
//! about a third more instructions per delivery than two tasks. [`join`] gives each branch a
//! waker of its own that marks the branch before waking the task, and polls only marked ones.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;

/// The waker handed to one branch.
struct Branch {
    /// The task's waker.
    task: AtomicWaker,
    woken: AtomicBool,
}

impl Wake for Branch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Marked first: the poll the task wake causes must see it.
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The state of one branch beside its future: its waker, and whether it is done.
struct Side {
    branch: Arc<Branch>,
    waker: Waker,
    done: bool,
}

impl Side {
    fn new() -> Side {
        let branch = Arc::new(Branch {
            task: AtomicWaker::new(),
            // Every branch is polled once at the start.
            woken: AtomicBool::new(true),
        });
        Side {
            waker: Waker::from(branch.clone()),
            branch,
            done: false,
        }
    }

    /// Polls `fut` if its waker fired since its last poll; true once it has finished.
    fn poll<F: Future<Output = ()>>(&mut self, task: &Context<'_>, fut: Pin<&mut F>) -> bool {
        if self.done {
            return true;
        }
        // Registered before the mark is taken: a wake in between wakes the task again.
        self.branch.task.register(task.waker());
        if self.branch.woken.swap(false, Ordering::AcqRel) {
            self.done = fut.poll(&mut Context::from_waker(&self.waker)).is_ready();
        }
        self.done
    }
}

pin_project! {
    /// Runs `a` and `b` in the calling task until both have finished.
    ///
    /// A struct, not an `async fn`: an `async fn` keeps a second copy of its arguments (here the
    /// whole connection's futures) in its state.
    pub struct Join<A, B> {
        #[pin]
        a: A,
        #[pin]
        b: B,
        side_a: Side,
        side_b: Side,
    }
}

/// Runs `a` and `b` in the calling task until both have finished.
pub fn join<A, B>(a: A, b: B) -> Join<A, B>
where
    A: Future<Output = ()>,
    B: Future<Output = ()>,
{
    Join {
        a,
        b,
        side_a: Side::new(),
        side_b: Side::new(),
    }
}

impl<A, B> Future for Join<A, B>
where
    A: Future<Output = ()>,
    B: Future<Output = ()>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let a_done = this.side_a.poll(cx, this.a);
        let b_done = this.side_b.poll(cx, this.b);
        if a_done && b_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    /// Counts every poll it gets; finishes when `wake` is notified.
    async fn counting(polls: &AtomicUsize, wake: &Notify) {
        let mut notified = pin!(wake.notified());
        poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            notified.as_mut().poll(cx)
        })
        .await
    }

    #[tokio::test]
    async fn a_wake_polls_only_its_own_branch() {
        let (polls_a, polls_b) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (wake_a, wake_b) = (Notify::new(), Notify::new());
        let both = join(counting(&polls_a, &wake_a), counting(&polls_b, &wake_b));
        // In the same task: every yield wakes the task, as other branches' events would.
        let driver = async {
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            assert_eq!(polls_a.load(Ordering::Relaxed), 1, "polled once, at the start");
            wake_a.notify_one();
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            assert_eq!(polls_a.load(Ordering::Relaxed), 2, "polled again once woken");
            assert_eq!(
                polls_b.load(Ordering::Relaxed),
                1,
                "never woken, never polled again"
            );
            wake_b.notify_one();
        };
        tokio::join!(both, driver);
        assert_eq!(polls_b.load(Ordering::Relaxed), 2);
    }
}
