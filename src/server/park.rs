//! The parking lot: where idle plain HTTP/1 keep-alive connections wait for their next
//! request with no task, no buffer and no timer of their own.
//!
//! A connection that has been idle for the linger gives hyper's connection back (see
//! [`super::h1guard::IdleGate`]); its task then takes the socket out of tokio's driver and
//! hands it here, and ends. The lot keeps its sockets in an epoll set of its own (one per
//! accept loop, waited on by a small thread: see [`Watcher`]), the way nginx keeps an idle
//! keep-alive connection: what a parked connection costs is its [`Parked`] record in
//! one slab per worker (a descriptor, its slot and its deadline: 40 bytes) and the kernel's
//! epoll item. Left in tokio's driver, each socket kept a `ScheduledIo` (128-byte aligned, in
//! an `Arc`: 256 bytes and the allocator's alignment slack) and needed a waker allocation of
//! its own to know which entry woke; a task of its own cost over a kilobyte (the task's
//! future, its timer and the join set's entry).
//!
//! The accept loop polls [`Lot::poll_next`] beside `accept`; a socket with bytes to read (or closed
//! by its peer) leaves the epoll set and tokio registers it again for a new connection task,
//! like a new connection that already has its slot. Each registration's token carries the
//! entry's key and a generation, so an event for an entry that left (its key maybe reused)
//! is recognised and skipped. Idle timeouts are one sweep over the slab every `idle / 4` (at
//! most 1 s), not a timer per connection. Dropping the lot (the drain) closes every parked
//! socket: they are idle between requests, so nothing is cut.
//!
//! A burst of connections that each made a request and went idle leaves the heap holding
//! what their requests used (hyper's 16 KiB of buffers each), freed but still resident: an
//! allocator keeps freed pages for reuse and gives them back as its thread allocates again,
//! which an idle worker does not. So once a burst has parked (no arrival for
//! [`RELEASE_AFTER`], at most once per [`RELEASE_EVERY`]), the lot calls the heap release
//! hook ([`set_heap_release`]; the binary sets it to mimalloc's `mi_collect`), the way Envoy
//! shrinks its heap: idle connections then cost what the lot holds, not the burst's peak.

use crate::metrics::Metrics;
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use slab::Slab;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};

/// Quiet time after the last arrival before the heap is given back.
pub const RELEASE_AFTER: Duration = Duration::from_millis(200);
/// The least time between two heap releases of one lot.
pub const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// Readiness events taken from the lot's epoll set per wait.
const EVENTS: usize = 256;
/// The token of the waker that stops a lot's watcher thread.
const STOP: Token = Token(usize::MAX);
/// The watcher thread's stack: it waits and pushes tokens, nothing deeper.
const WATCHER_STACK: usize = 64 * 1024;

static HEAP_RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Set, once per process, what gives freed heap memory back to the system after a burst of
/// connections parked (the library has no unsafe code; the binary passes its allocator's
/// collection).
pub fn set_heap_release(release: fn()) {
    let _ = HEAP_RELEASE.set(release);
}

/// An idle plain HTTP/1 connection between two requests: its socket (out of tokio's driver)
/// and what serving it again needs.
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
    /// Tells this entry's events from those of an earlier entry with the same key.
    generation: u32,
}

/// The token of entry `key` in its `generation`.
fn token(key: usize, generation: u32) -> Token {
    Token((u64::from(generation) << 32 | key as u64) as usize)
}

/// The key and generation a token names.
fn untoken(t: Token) -> (usize, u32) {
    let t = t.0 as u64;
    ((t & u64::from(u32::MAX)) as usize, (t >> 32) as u32)
}

/// Tokens the watcher saw ready, and the lot's wake-up.
#[derive(Default)]
struct Ready {
    tokens: Mutex<Vec<Token>>,
    notify: Arc<Notify>,
    stop: AtomicBool,
}

/// A lot's epoll set, waited on by a small thread of its own that lists the ready tokens and
/// wakes the lot. A thread rather than registering the set with tokio's driver: that takes
/// `unsafe` (`AsyncFd::register`), which this crate forbids; the thread costs its 64 KiB
/// stack once per lot and a wake-up per batch of resumed connections, which only ever
/// follow 250 ms of idleness.
struct Watcher {
    registry: mio::Registry,
    waker: mio::Waker,
}

impl Watcher {
    fn start(ready: Arc<Ready>) -> std::io::Result<Watcher> {
        let mut poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), STOP)?;
        std::thread::Builder::new()
            .name("canaryd-park".into())
            .stack_size(WATCHER_STACK)
            .spawn(move || {
                let mut events = Events::with_capacity(EVENTS);
                loop {
                    match poll.poll(&mut events, None) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::error!(error = %e, "the parking lot's epoll set failed");
                            return;
                        }
                    }
                    if ready.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let mut tokens = ready.tokens.lock().unwrap_or_else(|e| e.into_inner());
                    tokens.extend(events.iter().map(|e| e.token()).filter(|t| *t != STOP));
                    drop(tokens);
                    ready.notify.notify_one();
                }
            })?;
        Ok(Watcher { registry, waker })
    }
}

/// One worker's parked connections.
pub(super) struct Lot {
    entries: Slab<Entry>,
    /// Started with the first connection that parks (TLS listeners never need one).
    watcher: Option<Watcher>,
    ready: Arc<Ready>,
    /// Tokens taken from `ready`, being looked at.
    due: Vec<Token>,
    generation: u32,
    arrivals: mpsc::UnboundedReceiver<Parked>,
    sweep: Interval,
    metrics: Arc<Metrics>,
    /// When to give the heap back (set by arrivals, debounced), and when it last was.
    release_at: Option<Instant>,
    released: Instant,
    /// The watcher's wake-up, waited on across polls.
    woken: Pin<Box<OwnedNotified>>,
    /// Armed at `release_at`.
    release_timer: Pin<Box<Sleep>>,
}

impl Lot {
    /// A lot whose idle connections close `idle` after their last request ended.
    pub fn new(metrics: Arc<Metrics>, idle: Duration) -> (Lot, ToLot) {
        let (tx, arrivals) = mpsc::unbounded_channel();
        let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut sweep = tokio::time::interval_at(Instant::now() + every, every);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ready = Arc::<Ready>::default();
        let lot = Lot {
            entries: Slab::new(),
            watcher: None,
            woken: Box::pin(ready.notify.clone().notified_owned()),
            release_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            ready,
            due: Vec::new(),
            generation: 0,
            arrivals,
            sweep,
            metrics,
            release_at: None,
            released: Instant::now(),
        };
        (lot, tx)
    }

    /// The next parked connection with something to read (a request, or its peer's close),
    /// taken out of the lot to be served again; meanwhile admits arrivals, closes expired
    /// connections and releases the heap. A poll, not an `async fn`: the accept loop polls
    /// it beside `accept` on every wake-up, and a future made afresh each time registered
    /// and dropped a waiter and two timers per accepted connection (~4k instructions,
    /// callgrind). Its waiter and timers live in the lot instead. Nothing is lost between
    /// polls (ready tokens stay listed, arrivals stay queued).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Parked> {
        loop {
            if let Some(p) = self.take_ready() {
                return Poll::Ready(p);
            }
            // Registered before the tokens are looked at again: a wake-up between the two
            // is kept as the notification's permit.
            if self.woken.as_mut().poll(cx).is_ready() {
                self.woken = Box::pin(self.ready.notify.clone().notified_owned());
                continue;
            }
            while let Poll::Ready(Some(p)) = self.arrivals.poll_recv(cx) {
                self.admit(p);
            }
            while self.sweep.poll_tick(cx).is_ready() {
                self.close_expired();
            }
            let Some(at) = self.release_at else {
                return Poll::Pending;
            };
            if self.release_timer.deadline() != at {
                self.release_timer.as_mut().reset(at);
            }
            if self.release_timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Sets a new `release_at` only when the last release was too recent.
            self.release_heap();
        }
    }

    fn admit(&mut self, parked: Parked) {
        if self.watcher.is_none() {
            match Watcher::start(self.ready.clone()) {
                Ok(w) => self.watcher = Some(w),
                Err(e) => {
                    // Closed instead: it is idle between requests.
                    tracing::error!(error = %e, "cannot start the parking lot; closing an idle connection");
                    return;
                }
            }
        }
        let Some(watcher) = &self.watcher else {
            return;
        };
        let key = self.entries.vacant_key();
        self.generation = self.generation.wrapping_add(1);
        let fd = parked.stream.as_raw_fd();
        // Edge-triggered, and epoll reports at once what is already there to read.
        let registered = watcher.registry.register(
            &mut SourceFd(&fd),
            token(key, self.generation),
            Interest::READABLE,
        );
        if let Err(e) = registered {
            tracing::debug!(error = %e, "cannot park a connection; closing it");
            return;
        }
        self.entries.insert(Entry {
            parked,
            generation: self.generation,
        });
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
                let mut tokens = self.ready.tokens.lock().unwrap_or_else(|e| e.into_inner());
                std::mem::swap(&mut self.due, &mut tokens);
                if self.due.is_empty() {
                    return None;
                }
            }
            while let Some(t) = self.due.pop() {
                let (key, generation) = untoken(t);
                if self
                    .entries
                    .get(key)
                    .is_none_or(|e| e.generation != generation)
                {
                    // The entry left (timed out) after its event was reported.
                    continue;
                }
                let parked = self.remove(key);
                if let Some(w) = &self.watcher {
                    // Out of the lot's set before tokio's driver takes it.
                    let fd = parked.stream.as_raw_fd();
                    let _ = w.registry.deregister(&mut SourceFd(&fd));
                }
                return Some(parked);
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
            // Closing the descriptor takes it out of the epoll set.
            drop(self.remove(key));
        }
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            // A burst that has gone leaves nothing behind.
            self.entries.shrink_to_fit();
        }
    }
}

impl Drop for Lot {
    fn drop(&mut self) {
        let n = self.entries.len() as i64;
        self.metrics.parked_connections.dec_by(n);
        self.metrics.open_connections.dec_by(n);
        if let Some(w) = &self.watcher {
            self.ready.stop.store(true, Ordering::Release);
            let _ = w.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a parked connection holds in the lot is under a cache line: the descriptor, its
    /// slot, its deadline and its generation. No waker and no tokio registration: the
    /// kernel's epoll item is all there is besides.
    #[test]
    fn a_parked_connection_is_small() {
        // A vacant slab slot is a key, an occupied one this (plus the tag, within padding).
        let entry = std::mem::size_of::<Option<Entry>>();
        eprintln!("slab entry {entry} B");
        assert!(
            entry <= 48,
            "a parked connection's slab entry grew to {entry} B"
        );
    }

    /// An event names its entry's key and generation, whatever the key's size on 64 bits.
    #[test]
    fn tokens_carry_key_and_generation() {
        for (key, generation) in [(0, 0), (7, 1), (u32::MAX as usize, u32::MAX), (123_456, 99)] {
            assert_eq!(untoken(token(key, generation)), (key, generation));
        }
        assert_ne!(token(3, 1), token(3, 2));
    }
}
