//! The connection tasks of one accept loop: counted so the drain can wait for them, abortable
//! once its timeout has passed.
//!
//! A `JoinSet` did this before, at ~2k instructions per connection task (callgrind, a new
//! connection per request): a list entry allocated per task and moved between its lists when
//! the task ended, the task's output stored and then read back by `join_next`, its handle
//! dropped on the slow path. Nothing reads a connection task's output, so here a task holds
//! only a [`Member`] that takes its place out of the set when the task ends (normally, by
//! panic or by abort), and the set keeps only each task's [`AbortHandle`].

use slab::Slab;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// Running connection tasks. Dropping the set does not stop them: [`Tasks::shutdown`] does.
pub(crate) struct Tasks {
    shared: Arc<Shared>,
}

struct Shared {
    /// A place per running task; `None` until `spawn` has the task's abort handle.
    running: Mutex<Slab<Option<AbortHandle>>>,
    /// Notified when the last task ends.
    empty: Notify,
}

impl Shared {
    fn running(&self) -> MutexGuard<'_, Slab<Option<AbortHandle>>> {
        // A panic while holding the lock cannot leave the slab half-changed (every change
        // under it is one slab call), so a poisoned lock is still good.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A task's place in the set, given up when the task's future is dropped.
struct Member {
    shared: Arc<Shared>,
    key: usize,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut running = self.shared.running();
        running.try_remove(self.key);
        let empty = running.is_empty();
        drop(running);
        if empty {
            self.shared.empty.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// A task with its place in the set. A struct, not an `async` block: the block held the
    /// task's future twice (captured, then awaited), which doubled the task's allocation
    /// and copied the future once more (~700 instructions per connection, callgrind).
    struct Tracked<F> {
        #[pin]
        task: F,
        _member: Member,
    }
}

impl<F: Future<Output = ()>> Future for Tracked<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().task.poll(cx)
    }
}

impl Tasks {
    pub(crate) fn new() -> Self {
        Tasks {
            shared: Arc::new(Shared {
                running: Mutex::new(Slab::new()),
                empty: Notify::new(),
            }),
        }
    }

    /// Runs `task` on the current runtime as a member of the set.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let key = self.shared.running().insert(None);
        let member = Member {
            shared: self.shared.clone(),
            key,
        };
        // Not under the lock: a runtime that is shutting down drops the future inside
        // `spawn`, and with it the member, which takes the lock.
        let handle = tokio::spawn(Tracked {
            task,
            _member: member,
        });
        // Only this set inserts, so if the key is still taken it is still this task's.
        if let Some(place) = self.shared.running().get_mut(key) {
            *place = Some(handle.abort_handle());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shared.running().len()
    }

    /// Waits until every task has ended.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.shared.empty.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the count is read: an end in between still wakes us.
            notified.as_mut().enable();
            if self.shared.running().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Aborts every task and waits until they have ended (their futures dropped: sockets
    /// closed), as `JoinSet::shutdown` did.
    pub(crate) async fn shutdown(&self) {
        for (_, handle) in self.shared.running().iter() {
            if let Some(handle) = handle {
                // Only schedules the cancellation: the future is dropped when the runtime
                // next runs the task, not under this lock.
                handle.abort();
            }
        }
        self.wait().await;
    }
}
