//! Events of tagged tasks (fork, exec, exit, leaving the slot's cgroup) for the one reader
//! that asked for them (`Reader::events`). An event that does not fit is counted as lost, so
//! the reader reports a gap instead of having one.
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_ktime_get_boot_ns};
use tracker_common::Event;

use crate::maps::{EVENTS, GLOBAL, READER};

#[inline(always)]
fn wanted() -> bool {
    READER.get(0).is_some_and(|r| r.events != 0)
}

/// Send an event built by `fill` from the zeroed one, if a reader wants events.
#[inline(always)]
pub fn emit(kind: u16, slot: u32, fill: impl FnOnce(&mut Event)) {
    if !wanted() {
        return;
    }
    let mut ev = Event {
        kind,
        slot,
        // SAFETY: plain helpers.
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..Default::default()
    };
    fill(&mut ev);
    if EVENTS.output::<Event>(&ev, 0).is_err()
        && let Some(g) = GLOBAL.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU value, only touched by this CPU.
        unsafe { (*g).events_lost += 1 };
    }
}
