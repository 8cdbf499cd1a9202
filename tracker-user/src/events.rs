//! The event stream: fork, exec and exit of tagged tasks and tagged tasks leaving their
//! slot's cgroup, from the kernel's ring buffer; slot-empty events derived from them; and an
//! explicit `lost` event whenever the kernel could not queue some, so a reader never sees a
//! silent gap. Every event carries a sequence number.
//!
//! A ring buffer has one consumer: one process at a time may watch (the daemon, which fans the
//! stream out to its clients, or `tracker watch`), under a lock.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    time::Duration,
};

use aya::maps::{Array, MapData, RingBuf};
use serde::Serialize;
use tracker_common::{
    EVENT_EXEC, EVENT_EXIT, EVENT_FORK, EVENT_GROUP_DEAD, EVENT_LEFT_CGROUP, EVENT_OOM, Event,
    Reader, map_name,
};

use crate::{
    error::{Error, Result},
    maps::{Maps, open_map},
    paths::Paths,
    registry::{self, StateLock},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Fork,
    Exec,
    Exit,
    /// A tagged task was moved to a cgroup that is not its slot's.
    LeftCgroup,
    /// The OOM killer chose a tagged task (`pid`).
    Oom,
    /// The slot's last task exited.
    SlotEmpty,
    /// The kernel could not queue `lost` events (between the previous event and this one).
    Lost,
    /// A kill of the slot finished (produced by whoever killed it, e.g. the daemon).
    KillDone,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchEvent {
    pub seq: u64,
    pub kind: EventKind,
    pub slot: String,
    pub pid: u32,
    pub tgid: u32,
    /// Fork: the forking task.
    pub parent: u32,
    /// Exit: the exit code as `wait` gives it.
    pub exit_code: u32,
    /// Exit: the task was the last thread of its process.
    pub group_dead: bool,
    /// Nanoseconds since boot.
    pub time_ns: u64,
    pub comm: String,
    /// Left cgroup: the cgroup v2 id it went to.
    pub cgroup_id: u64,
    /// Lost: how many.
    pub lost: u64,
}

/// How many times `Watcher::await_exits_done` looks at an exiting task's tag (each a map read
/// and a yield: a few milliseconds in all).
const EXIT_WAIT_TRIES: u32 = 2000;

/// The one reader of the kernel's events. Dropping it tells the kernel to stop producing.
pub struct Watcher {
    paths: Paths,
    ring: RingBuf<MapData>,
    /// The reader record, ours alone (the loader writes the config record).
    reader: Array<MapData, Reader>,
    maps: Maps,
    names: BTreeMap<u32, String>,
    /// The registry file `names` was read from (inode, mtime): slot ids are reused after a
    /// release, so the names are read again whenever the registry changed.
    names_from: Option<(u64, i64, i64)>,
    /// Slots that had tasks: an exit that leaves one empty makes a slot-empty event.
    /// Per slot id, its epoch and tasks-started count when it was last reported empty:
    /// a slot is empty again only after a task started in it since (a fork or an adoption),
    /// so a late exit event never reports it twice.
    emptied: BTreeMap<u32, (u64, u64)>,
    seq: u64,
    lost_seen: u64,
    _lock: StateLock,
}

impl Watcher {
    pub fn open(paths: &Paths) -> Result<Self> {
        let lock = StateLock::events(paths)?;
        let ring = RingBuf::try_from(open_map(paths, map_name::EVENTS)?)
            .map_err(|e| Error::bpf("the event ring buffer", e))?;
        let reader = Array::try_from(open_map(paths, map_name::READER)?)
            .map_err(|e| Error::bpf("the reader map", e))?;
        let maps = Maps::open(paths)?;
        let lost_seen = maps.global()?.events_lost;
        let mut w = Self {
            paths: paths.clone(),
            ring,
            reader,
            maps,
            names: BTreeMap::new(),
            names_from: None,
            emptied: BTreeMap::new(),
            seq: 0,
            lost_seen,
            _lock: lock,
        };
        // Whatever sat in the buffer from an earlier reader is stale: drop it, then ask for
        // events.
        while w.ring.next().is_some() {}
        w.set_wanted(true)?;
        Ok(w)
    }

    fn set_wanted(&mut self, on: bool) -> Result<()> {
        let r = Reader { events: u32::from(on), _pad0: 0 };
        self.reader.set(0, r, 0).map_err(|e| Error::bpf("writing the reader record", e))
    }

    /// The descriptor that becomes readable when events are queued (for an async runtime).
    pub fn fd(&self) -> RawFd {
        self.ring.as_fd().as_raw_fd()
    }

    /// Wait up to `timeout` (None: for ever) for events, then return all that are queued.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Vec<WatchEvent>> {
        let mut pfd = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io("waiting for events", e));
            }
        }
        self.drain()
    }

    /// Every event queued now, without waiting.
    ///
    /// A slot is empty after the last of its exit events: the exit program queues its event
    /// before it takes the task out of the slot's live count, so once the count reads 0 every
    /// exit event of the slot is in the ring. The count is read, then the ring once more, until
    /// that finds nothing new: what the ring held before the count was read is all here.
    pub fn drain(&mut self) -> Result<Vec<WatchEvent>> {
        let mut raw = self.read_ring();
        let mut empty = BTreeMap::new();
        if raw.iter().any(|e| e.kind == EVENT_EXIT) {
            loop {
                self.await_exits_done(&raw);
                empty = raw
                    .iter()
                    .filter(|e| e.kind == EVENT_EXIT)
                    .filter_map(|e| self.emptied_now(e.slot).map(|now| (e.slot, now)))
                    .collect();
                let more = self.read_ring();
                if more.is_empty() {
                    break;
                }
                raw.extend(more);
            }
        }
        if !raw.is_empty() {
            self.refresh_names();
        }
        let mut out = vec![];
        let lost = self.maps.global()?.events_lost;
        if lost > self.lost_seen {
            out.push(self.make(EventKind::Lost, &Event::default(), lost - self.lost_seen));
            self.lost_seen = lost;
        }
        let last_of_slot: BTreeMap<u32, usize> =
            raw.iter().enumerate().map(|(i, ev)| (ev.slot, i)).collect();
        for (i, ev) in raw.iter().enumerate() {
            let kind = match ev.kind {
                EVENT_FORK => EventKind::Fork,
                EVENT_EXEC => EventKind::Exec,
                EVENT_EXIT => EventKind::Exit,
                EVENT_LEFT_CGROUP => EventKind::LeftCgroup,
                EVENT_OOM => EventKind::Oom,
                _ => continue,
            };
            out.push(self.make(kind, ev, 0));
            if last_of_slot.get(&ev.slot) == Some(&i)
                && let Some(now) = empty.remove(&ev.slot)
            {
                self.emptied.insert(ev.slot, now);
                out.push(self.make(EventKind::SlotEmpty, &Event { slot: ev.slot, ..*ev }, 0));
            }
        }
        Ok(out)
    }

    fn read_ring(&mut self) -> Vec<Event> {
        let mut raw = vec![];
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<Event>() {
                // SAFETY: the kernel wrote an `Event` (Pod); the buffer may be unaligned.
                raw.push(unsafe { item.as_ptr().cast::<Event>().read_unaligned() });
            }
        }
        raw
    }

    /// The exit program queues a task's event before it takes the task out of the slot's live
    /// count, so the ring may hand over the last exit of a slot whose count has not dropped
    /// yet; read then, the slot would look busy, and no later exit would make it look empty
    /// (its slot-empty event was lost so, once, natively on 6.18). For the last exit of each
    /// slot in `raw`, wait while the task's tag is still live: the program is in those few
    /// instructions. Bounded, for a kernel that preempts a tracepoint program (7.0+) or a tid
    /// tagged again since.
    fn await_exits_done(&self, raw: &[Event]) {
        let last_exits: BTreeMap<u32, u32> =
            raw.iter().filter(|e| e.kind == EVENT_EXIT).map(|e| (e.slot, e.pid)).collect();
        for (slot, tid) in last_exits {
            for _ in 0..EXIT_WAIT_TRIES {
                match self.maps.tag(tid) {
                    Ok(Some(t)) if t.slot == slot => std::thread::yield_now(),
                    _ => break,
                }
            }
        }
    }

    /// The slot's (epoch, tasks started) if it has no live task now and had one since it
    /// was last reported empty.
    fn emptied_now(&self, slot: u32) -> Option<(u64, u64)> {
        self.maps.state(slot).ok().filter(|c| c.live_tasks == 0)?;
        let epoch = self.maps.control(slot).ok()?.epoch;
        let started = self.maps.counters(slot).ok()?.counts.tasks_started;
        let now = (epoch, started);
        (self.emptied.get(&slot) != Some(&now)).then_some(now)
    }

    /// An event made outside the kernel (e.g. kill done), numbered in the same sequence.
    pub fn synthesize(&mut self, kind: EventKind, slot: &str) -> WatchEvent {
        self.seq += 1;
        WatchEvent {
            seq: self.seq,
            kind,
            slot: slot.to_owned(),
            pid: 0,
            tgid: 0,
            parent: 0,
            group_dead: false,
            exit_code: 0,
            time_ns: 0,
            comm: String::new(),
            cgroup_id: 0,
            lost: 0,
        }
    }

    fn make(&mut self, kind: EventKind, ev: &Event, lost: u64) -> WatchEvent {
        self.seq += 1;
        let slot = if ev.slot == 0 { String::new() } else { self.name_of(ev.slot) };
        let comm_len = ev.comm.iter().position(|b| *b == 0).unwrap_or(ev.comm.len());
        WatchEvent {
            seq: self.seq,
            kind,
            slot,
            pid: ev.pid,
            tgid: ev.tgid,
            parent: ev.parent,
            exit_code: ev.code,
            group_dead: ev.kind == EVENT_EXIT && ev.flags & EVENT_GROUP_DEAD != 0,
            time_ns: ev.time_ns,
            comm: String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned(),
            cgroup_id: ev.cgroup,
            lost,
        }
    }

    fn name_of(&mut self, id: u32) -> String {
        if !self.names.contains_key(&id) {
            self.read_names();
        }
        self.names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))
    }

    /// Read the slot names again if the registry changed since they were read.
    fn refresh_names(&mut self) {
        if self.registry_stamp() != self.names_from {
            self.read_names();
        }
    }

    fn read_names(&mut self) {
        let stamp = self.registry_stamp();
        if let Ok(reg) = registry::read(&self.paths) {
            self.names = reg.slots.iter().map(|s| (s.id, s.name.clone())).collect();
            self.names_from = stamp;
        }
    }

    fn registry_stamp(&self) -> Option<(u64, i64, i64)> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(self.paths.registry_file()).ok()?;
        Some((m.ino(), m.mtime(), m.mtime_nsec()))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.set_wanted(false);
    }
}
