//! The parking lot: where idle plain HTTP/1 keep-alive connections wait for their next
//! request with no task, no buffer and no timer of their own.
//!
//! A connection that has been idle for the linger gives hyper's connection back (see
//! [`super::h1guard::IdleGate`]); its task then hands the bare socket here and ends. What a
//! parked connection costs is its [`Parked`] record in one slab per worker, one small waker,
//! and tokio's registration of the socket: a few hundred bytes, about what nginx keeps for
//! an idle keep-alive connection (its `ngx_connection_t` and two events), where a task of its
//! own cost over a kilobyte (the task's future, its timer and the join set's entry).
//!
//! Each entry's waker puts its key on a ready list and wakes the lot; the worker's accept
//! loop polls [`Lot::next`] beside `accept`, and a socket with bytes to read (or closed by its
//! peer) leaves the lot and is served by a new connection task, like a new connection that
//! already has its slot. Idle timeouts are one sweep over the slab every `idle / 4` (at most
//! 1 s), not a timer per connection. Dropping the lot (the drain) closes every parked socket:
//! they are idle between requests, so nothing is cut.
//!
//! A burst of connections that each made a request and went idle leaves the heap holding
//! what their requests used (hyper's 16 KiB of buffers each), freed but still resident: glibc
//! returns only the top of its heap to the system. So once a burst has parked (no arrival for
//! [`RELEASE_AFTER`], at most once per [`RELEASE_EVERY`]), the lot calls the heap release
//! hook ([`set_heap_release`]; the binary sets it to glibc's `malloc_trim`), the way Envoy
//! shrinks its heap: idle connections then cost what the lot holds, not the burst's peak.

use crate::metrics::Metrics;
use slab::Slab;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Quiet time after the last arrival before the heap is given back.
pub const RELEASE_AFTER: Duration = Duration::from_millis(200);
/// The least time between two heap releases of one lot.
pub const RELEASE_EVERY: Duration = Duration::from_secs(1);

static HEAP_RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Set, once per process, what gives freed heap memory back to the system after a burst of
/// connections parked (the library has no unsafe code; the binary passes `malloc_trim`).
pub fn set_heap_release(release: fn()) {
    let _ = HEAP_RELEASE.set(release);
}

/// An idle plain HTTP/1 connection between two requests: its socket and what serving it
/// again needs.
pub(super) struct Parked {
    pub stream: TcpStream,
    /// Its place under the connection cap, kept while parked.
    pub slot: OwnedSemaphorePermit,
    /// When it closes if no request has come.
    pub deadline: Instant,
}

/// Where connection tasks hand their socket over.
pub(super) type ToLot = mpsc::UnboundedSender<Parked>;

struct Entry {
    parked: Parked,
    /// Registered with the socket's readiness: puts this entry's key on the ready list.
    waker: Waker,
}

/// Keys of entries whose socket reported readiness, and the lot's wake-up.
#[derive(Default)]
struct Ready {
    keys: Mutex<Vec<usize>>,
    notify: Notify,
}

struct EntryWake {
    key: usize,
    ready: Arc<Ready>,
}

impl Wake for EntryWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.key);
        self.ready.notify.notify_one();
    }
}

/// One worker's parked connections.
pub(super) struct Lot {
    entries: Slab<Entry>,
    ready: Arc<Ready>,
    /// Keys taken from `ready`, being looked at.
    due: Vec<usize>,
    arrivals: mpsc::UnboundedReceiver<Parked>,
    sweep: Interval,
    metrics: Arc<Metrics>,
    /// When to give the heap back (set by arrivals, debounced), and when it last was.
    release_at: Option<Instant>,
    released: Instant,
}

impl Lot {
    /// A lot whose idle connections close `idle` after their last request ended.
    pub fn new(metrics: Arc<Metrics>, idle: Duration) -> (Lot, ToLot) {
        let (tx, arrivals) = mpsc::unbounded_channel();
        let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut sweep = tokio::time::interval_at(Instant::now() + every, every);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let lot = Lot {
            entries: Slab::new(),
            ready: Arc::default(),
            due: Vec::new(),
            arrivals,
            sweep,
            metrics,
            release_at: None,
            released: Instant::now(),
        };
        (lot, tx)
    }

    /// The next parked connection with something to read (a request, or its peer's close),
    /// taken out of the lot to be served again. Cancel-safe: nothing is lost when the
    /// future is dropped (ready keys stay listed, arrivals stay queued).
    pub async fn next(&mut self) -> Parked {
        loop {
            if let Some(p) = self.take_ready() {
                return p;
            }
            let release_at = self.release_at.unwrap_or_else(Instant::now);
            tokio::select! {
                biased;
                _ = self.ready.notify.notified() => {}
                Some(p) = self.arrivals.recv() => self.admit(p),
                _ = self.sweep.tick() => self.close_expired(),
                _ = tokio::time::sleep_until(release_at), if self.release_at.is_some() => {
                    self.release_heap()
                }
            }
        }
    }

    fn admit(&mut self, parked: Parked) {
        let key = self.entries.vacant_key();
        let waker = Waker::from(Arc::new(EntryWake {
            key,
            ready: self.ready.clone(),
        }));
        self.entries.insert(Entry { parked, waker });
        // Looked at once now: that registers the waker, or finds bytes already there.
        self.due.push(key);
        self.release_at = Some(Instant::now() + RELEASE_AFTER);
        self.metrics.parked_connections.inc();
        self.metrics.open_connections.inc();
    }

    fn release_heap(&mut self) {
        let now = Instant::now();
        let next = self.released + RELEASE_EVERY;
        if now < next {
            self.release_at = Some(next);
            return;
        }
        self.release_at = None;
        self.released = now;
        if let Some(release) = HEAP_RELEASE.get() {
            release();
        }
    }

    fn remove(&mut self, key: usize) -> Parked {
        self.metrics.parked_connections.dec();
        self.metrics.open_connections.dec();
        self.entries.remove(key).parked
    }

    fn take_ready(&mut self) -> Option<Parked> {
        loop {
            if self.due.is_empty() {
                let mut keys = self.ready.keys.lock().unwrap_or_else(|e| e.into_inner());
                std::mem::swap(&mut self.due, &mut keys);
                if self.due.is_empty() {
                    return None;
                }
            }
            while let Some(key) = self.due.pop() {
                // A stale key (the entry left, its key maybe reused) costs one readiness poll.
                let Some(entry) = self.entries.get(key) else {
                    continue;
                };
                let mut cx = Context::from_waker(&entry.waker);
                if entry.parked.stream.poll_read_ready(&mut cx).is_ready() {
                    // Errors too: the new task reads the error and closes.
                    return Some(self.remove(key));
                }
            }
        }
    }

    fn close_expired(&mut self) {
        let now = Instant::now();
        let expired: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, e)| e.parked.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            drop(self.remove(key));
        }
    }
}

impl Drop for Lot {
    fn drop(&mut self) {
        let n = self.entries.len() as i64;
        self.metrics.parked_connections.dec_by(n);
        self.metrics.open_connections.dec_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a parked connection holds in the lot stays a few cache lines: the socket, its
    /// slot and deadline, and a waker (whose allocation holds a key and an `Arc`).
    /// tokio's registration of the socket comes on top (its `ScheduledIo`).
    #[test]
    fn a_parked_connection_is_small() {
        // A vacant slab slot is a key, an occupied one this (plus the tag, within padding).
        let entry = std::mem::size_of::<Option<Entry>>();
        let wake = std::mem::size_of::<EntryWake>();
        eprintln!("slab entry {entry} B, waker {wake} B (+ Arc counts)");
        assert!(
            entry <= 128,
            "a parked connection's slab entry grew to {entry} B"
        );
        assert!(wake <= 16);
    }
}
