//! The daemon's one reader of the kernel's event stream, fanned out to every Watch client.
//!
//! A thread owns the `Watcher` (the ring buffer has one consumer) and publishes each event,
//! numbered, on a broadcast channel. Events the daemon makes itself (a kill done) are numbered
//! in the same sequence, under the same lock, so every client sees one order. A client that
//! falls more than the channel's capacity behind loses its oldest events and is told how many;
//! the kernel's own losses come as LOST events in the sequence. No gap is ever silent.
use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use tokio::sync::broadcast;

use crate::{
    error::Error,
    events::{EventKind, WatchEvent, Watcher},
    paths::Paths,
};

/// How long the pump waits in one poll: also how soon it sees a stop, or retries a stream
/// another process holds.
const POLL: Duration = Duration::from_millis(200);

pub struct Hub {
    watcher: Mutex<Option<Watcher>>,
    tx: broadcast::Sender<Arc<WatchEvent>>,
    /// Events dropped for clients too slow to take them.
    client_lost: AtomicU64,
    /// Events sent on the channel, kernel and daemon-made alike: the sequence so far.
    published: AtomicU64,
    /// Watch clients whose connection is full: their forwarder waits for them to read.
    stalled: AtomicU64,
    stop: AtomicBool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// Start the pump thread; it runs until `stop`.
    pub fn start(paths: Paths, capacity: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(capacity);
        let hub = Arc::new(Self {
            watcher: Mutex::new(None),
            tx,
            client_lost: AtomicU64::new(0),
            published: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let pump = hub.clone();
        thread::Builder::new()
            .name("tracker-events".into())
            .spawn(move || pump.pump(&paths))
            .map_err(|e| tracing::error!("starting the event thread: {e}"))
            .ok();
        hub
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn watcher(&self) -> MutexGuard<'_, Option<Watcher>> {
        // The watcher's state stays consistent across a panic elsewhere: it is only read
        // and advanced under this lock.
        self.watcher.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A subscription to every event from now on; None while the daemon does not hold the
    /// kernel's event stream (another process does).
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Arc<WatchEvent>>> {
        let w = self.watcher();
        w.is_some().then(|| self.tx.subscribe())
    }

    /// Publish an event the daemon made (e.g. a kill done), in the common sequence, after
    /// what the kernel has queued until now (the exits of a kill come before its end).
    pub fn publish(&self, kind: EventKind, slot: &str) {
        let mut w = self.watcher();
        if let Some(w) = w.as_mut() {
            self.forward(w);
            let ev = w.synthesize(kind, slot);
            self.send(ev);
        }
    }

    fn send(&self, ev: WatchEvent) {
        // No receiver is not an error: nobody is watching.
        let _ = self.tx.send(Arc::new(ev));
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Send what the kernel has queued.
    fn forward(&self, w: &mut Watcher) {
        match w.drain() {
            Ok(events) => {
                for ev in events {
                    self.send(ev);
                }
            }
            Err(e) => tracing::error!("reading events: {e}"),
        }
    }

    pub fn count_client_lost(&self, n: u64) {
        self.client_lost.fetch_add(n, Ordering::Relaxed);
    }

    pub fn client_lost(&self) -> u64 {
        self.client_lost.load(Ordering::Relaxed)
    }

    /// Events published since the daemon started.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// A Watch client's connection is full; the client counts as stalled until the guard
    /// drops. While it is stalled, every event published beyond the channel's capacity is one
    /// it will be told it lost.
    pub fn stall(&self) -> Stalled<'_> {
        self.stalled.fetch_add(1, Ordering::Relaxed);
        Stalled(&self.stalled)
    }

    pub fn stalled(&self) -> u64 {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Whether the daemon holds the kernel's event stream.
    pub fn is_streaming(&self) -> bool {
        self.watcher().is_some()
    }

    fn pump(&self, paths: &Paths) {
        let mut warned = false;
        while !self.stop.load(Ordering::Relaxed) {
            // Its own statement: a guard in a `match` scrutinee would live through the arms.
            let fd = self.watcher().as_ref().map(Watcher::fd);
            let fd = match fd {
                Some(fd) => fd,
                None => {
                    match Watcher::open(paths) {
                        Ok(w) => {
                            if warned {
                                tracing::info!("event stream: now held by the daemon");
                            }
                            *self.watcher() = Some(w);
                        }
                        Err(e) => {
                            if !warned {
                                let hint = if matches!(e, Error::EventsBusy) {
                                    " (a `tracker watch`?); Watch is unavailable until it ends"
                                } else {
                                    ""
                                };
                                tracing::warn!("event stream: {e}{hint}");
                                warned = true;
                            }
                            thread::sleep(POLL);
                        }
                    }
                    continue;
                }
            };
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd; the descriptor stays open while the watcher lives,
            // and only this thread drops the watcher.
            unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as i32) };
            // Drained on a timeout too: a loss in the kernel shows as a counter, not data.
            let mut w = self.watcher();
            if let Some(watcher) = w.as_mut() {
                self.forward(watcher);
            }
        }
        // Dropping the watcher tells the kernel to stop producing events.
        *self.watcher() = None;
    }
}

/// See [`Hub::stall`].
pub struct Stalled<'a>(&'a AtomicU64);

impl Drop for Stalled<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
