//! Per-slot bookkeeping shared by the programs that tag and untag tasks.
use aya_ebpf::helpers::bpf_send_signal;
use tracker_common::{SIGKILL, SLOT_DOOMED, SlotCounters};

use crate::maps::{COUNTERS, GLOBAL, SLOTS};

#[inline(always)]
pub fn with_counters(slot: u32, f: impl FnOnce(&mut SlotCounters)) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU value, only touched by this CPU with preemption disabled.
        f(unsafe { &mut *c });
    }
}

/// Atomic add to a u64 shared by all CPUs. The BPF target has no fetch-add at the default CPU
/// level, only `lock xadd` without a result, which is what this compiles to.
#[inline(always)]
fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value, which lives as long as the map.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
}

/// A task entered `slot`: count it, and raise the peak of live tasks.
#[inline(always)]
pub fn task_entered(slot: u32, is_leader: bool) {
    if let Some(ctl) = SLOTS.get_ptr_mut(slot) {
        // SAFETY: map value pointer, see `atomic_add`.
        unsafe {
            atomic_add(&raw mut (*ctl).live_tasks, 1);
            // Racy max: under concurrent forks on other CPUs the peak may lag by those forks,
            // never exceed what was really live.
            let live = core::ptr::read_volatile(&raw const (*ctl).live_tasks);
            if live > (*ctl).peak_tasks {
                (*ctl).peak_tasks = live;
            }
        }
    }
    with_counters(slot, |c| {
        c.tasks_started += 1;
        if is_leader {
            c.procs_started += 1;
        }
    });
}

/// A task of `slot` passed `do_exit`.
#[inline(always)]
pub fn task_left(slot: u32) {
    if let Some(ctl) = SLOTS.get_ptr_mut(slot) {
        // SAFETY: map value pointer, see `atomic_add`. Adding 2^64-1 subtracts one.
        atomic_add(unsafe { &raw mut (*ctl).live_tasks }, u64::MAX);
    }
    with_counters(slot, |c| c.tasks_exited += 1);
}

#[inline(always)]
pub fn tag_failed(slot: u32) {
    with_counters(slot, |c| c.tag_failures += 1);
    if let Some(g) = GLOBAL.get_ptr_mut(0) {
        // SAFETY: per-CPU value, as in `with_counters`.
        unsafe { (*g).tag_failures += 1 };
    }
}

#[inline(always)]
pub fn is_doomed(slot: u32) -> bool {
    SLOTS.get(slot).is_some_and(|c| c.flags & SLOT_DOOMED != 0)
}

/// Kill the current task because its slot is doomed.
#[inline(always)]
pub fn doom_current(slot: u32) {
    // SAFETY: a helper call; it fails harmlessly for kernel threads.
    if unsafe { bpf_send_signal(SIGKILL) } == 0 {
        with_counters(slot, |c| c.doom_kills += 1);
    }
}
