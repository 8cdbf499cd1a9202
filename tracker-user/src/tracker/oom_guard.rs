//! Whole-slot OOM kills for every slot, for a long-running process (the daemon): where the
//! kernel's OOM killer would take one process of a slot (cgroup v1, which has no
//! `memory.oom.group`), the guard kills the whole slot when it happens. `tracker run` does the
//! same for its own slot while it waits.
//!
//! A slot bound to the batch system's cgroup is guarded whatever its limits (they are the
//! batch system's): its OOM kills are counted in its step cgroups below the bound one, where
//! a notification on the bound directory does not reach, so the guard also compares the
//! subtree's OOM kill count at every pass.
use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    time::Duration,
};

use super::{
    instance::Instance,
    kill::{self, KillOptions, KillReport},
};
use crate::{cgroup_events::OomWatch, registry};

/// How often the guard looks for slots created or released meanwhile (their OOM
/// notifications are registered then; the kernel queues one that fires in between).
const RESCAN: Duration = Duration::from_secs(1);

/// Until `stop` becomes readable: kill every slot with a memory limit, whole, when the
/// OOM killer acts in it; `on_kill` hears of each such kill.
pub(super) fn guard(t: &Instance, stop: &OwnedFd, mut on_kill: impl FnMut(&str, &KillReport)) {
    // Slot name and epoch -> its registered notification.
    let mut watches: BTreeMap<(String, u64), OomWatch> = BTreeMap::new();
    // Bound slot name and epoch -> the OOM kills counted in its cgroups so far. A
    // slot created while the guard runs counts from 0: its job started after the binding.
    let mut counted: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let started_ms = super::slots::now_ms();
    loop {
        let Ok(reg) = registry::read(&t.paths) else { return };
        watches.retain(|(name, epoch), _| {
            reg.slots.iter().any(|s| &s.name == name && s.epoch == *epoch)
        });
        counted.retain(|(name, epoch), _| {
            reg.slots.iter().any(|s| &s.name == name && s.epoch == *epoch)
        });
        let mut over: Vec<String> = vec![];
        for rec in reg.slots.iter().filter(|s| s.cgroups.bound.is_some()) {
            let now = rec.cgroups.oom_kills();
            let first = if rec.created_unix_ms >= started_ms { 0 } else { now };
            let seen = counted.entry((rec.name.clone(), rec.epoch)).or_insert(first);
            if now > *seen {
                *seen = now;
                over.push(rec.name.clone());
            }
        }
        let guarded =
            |s: &&registry::SlotRecord| s.limits.memory_max.is_some() || s.cgroups.bound.is_some();
        for rec in reg.slots.iter().filter(guarded) {
            let key = (rec.name.clone(), rec.epoch);
            if watches.contains_key(&key) {
                continue;
            }
            match OomWatch::new(&rec.cgroups) {
                Ok(Some(w)) => {
                    watches.insert(key, w);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("slot {}: no whole-slot OOM kill: {e}", rec.name),
            }
        }
        let keys: Vec<&(String, u64)> = watches.keys().collect();
        let mut fds: Vec<libc::pollfd> = watches
            .values()
            .map(|w| w.event_fd())
            .chain([stop.as_raw_fd()])
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: polling descriptors we hold, with the array's true length.
        let n = unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, RESCAN.as_millis() as i32)
        };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            tracing::error!("OOM guard: poll: {}", io::Error::last_os_error());
            return;
        }
        if fds.last().is_some_and(|f| f.revents != 0) {
            return;
        }
        let mut fired: Vec<String> = keys
            .iter()
            .zip(&fds)
            .filter(|(_, f)| f.revents & libc::POLLIN != 0)
            .map(|(k, _)| k.0.clone())
            .chain(over)
            .collect();
        fired.sort();
        fired.dedup();
        for name in fired {
            // Re-registered at the next pass: the notification is read once.
            watches.retain(|k, _| k.0 != name);
            match t.slot(&name).and_then(|rec| kill::kill(t, &rec, &KillOptions::default())) {
                Ok(report) => on_kill(&name, &report),
                Err(e) => tracing::error!("slot {name} went over its memory: kill: {e}"),
            }
        }
    }
}
