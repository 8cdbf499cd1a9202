//! Tags and per-slot bookkeeping, shared by the programs that tag and untag tasks.
use aya_ebpf::helpers::bpf_send_signal;
use tracker_common::{SIGKILL, SLOT_DOOMED, SlotCounters, TAG_EXITED, TaskTag};

use crate::{
    kernel::{Task, current_task, offsets},
    maps::{COUNTERS, GLOBAL, SLOT_STATE, SLOTS, TASKS},
};

/// The tag of the current task, found under `tid` (its tid, or the tid it had before an
/// exec). The untagged path is one array load. An entry left by an earlier task with the same
/// tid (possible only if a task was adopted at the instant it exited) has another start time:
/// it is cleared on the way and its slot's count corrected, and the task is not tagged.
#[inline(always)]
pub fn current_tag(tid: u32) -> Option<TaskTag> {
    let entry = TASKS.get_ptr_mut(tid)?;
    // SAFETY: an array element, valid for the map's lifetime.
    let tag = unsafe { *entry };
    // Untagged, or exited (the task is in its last moments, past its exit program).
    if tag.slot == 0 || tag.slot & TAG_EXITED != 0 {
        return None;
    }
    let start = Task::of(current_task()).start_ns(&offsets())?;
    if start != tag.start_ns {
        // SAFETY: as above.
        unsafe { *entry = TaskTag::default() };
        task_left(tag.slot);
        return None;
    }
    Some(tag)
}

/// The slot of the current task (tid `tid`), for program types that cannot read the task
/// (socket and device hooks): the entry alone, without the start-time check, which guards
/// only against an entry left by a task adopted at the instant it exited.
#[inline(always)]
pub fn current_slot(tid: u32) -> Option<u32> {
    let slot = TASKS.get(tid)?.slot;
    (slot != 0 && slot & TAG_EXITED == 0).then_some(slot)
}

/// The live tag of `task` (tid `tid`), checked against its start time.
#[inline(always)]
pub fn tag_of(tid: u32, task: Task) -> Option<TaskTag> {
    let tag = *TASKS.get(tid)?;
    if tag.slot == 0 || tag.slot & TAG_EXITED != 0 {
        return None;
    }
    (task.start_ns(&offsets())? == tag.start_ns).then_some(tag)
}

/// Tag task `tid` with `tag`; returns whether this call tagged it (and counted it).
#[inline(always)]
pub fn tag(tid: u32, tag: &TaskTag) -> bool {
    let Some(entry) = TASKS.get_ptr_mut(tid) else {
        // A tid beyond the array: pid_max grew after the load. Never silent.
        tag_failed(tag.slot);
        return false;
    };
    // SAFETY: an array element, valid for the map's lifetime.
    let old = unsafe { *entry };
    if old.slot != 0 {
        if old.start_ns == tag.start_ns {
            return false;
        }
        // A stale entry of an earlier task with this tid (left and counted already if it
        // exited; its CPU time, not yet harvested, is lost: the tid came round very fast).
        if old.slot & TAG_EXITED == 0 {
            task_left(old.slot);
        }
    }
    // SAFETY: as above. The slot is written last, so a reader that sees it sees the rest.
    unsafe {
        (*entry).tgid = tag.tgid;
        (*entry).start_ns = tag.start_ns;
        core::ptr::write_volatile(&raw mut (*entry).slot, tag.slot);
    }
    task_entered(tag.slot, tid == tag.tgid);
    true
}

/// Task `tid` of `slot` passed `do_exit`: it leaves the slot now; its entry stays, marked
/// exited, until its final context switch harvests its CPU time and clears it.
#[inline(always)]
pub fn mark_exited(tid: u32, slot: u32) {
    if let Some(entry) = TASKS.get_ptr_mut(tid) {
        // SAFETY: an array element, valid for the map's lifetime.
        unsafe { core::ptr::write_volatile(&raw mut (*entry).slot, slot | TAG_EXITED) };
        task_left(slot);
    }
}

/// The final context switch of task `tid` (started at `start_ns`): its slot, if it exited
/// tagged, after clearing its entry.
#[inline(always)]
pub fn finish(tid: u32, start_ns: u64) -> Option<u32> {
    let entry = TASKS.get_ptr_mut(tid)?;
    // SAFETY: an array element, valid for the map's lifetime.
    let tag = unsafe { *entry };
    if tag.slot & TAG_EXITED == 0 || tag.start_ns != start_ns {
        return None;
    }
    // SAFETY: as above.
    unsafe { *entry = TaskTag::default() };
    Some(tag.slot & !TAG_EXITED)
}

/// A thread that was not its process's leader exec'd: `de_thread` gave it the leader's pid
/// (`tid`) and start time (`start_ns`), while its tag is still under the tid it had
/// (`old_tid`), with its own start time, which the thread no longer has. The tag is known by
/// its thread group, which exec does not change, and moves to `tid` with the new start time:
/// the task stays one live task of its slot.
///
/// The leader's entry at `tid` is marked exited (its exit program ran before `de_thread`
/// could go on). If the leader has not had its final context switch yet, that switch comes
/// under `old_tid` (`de_thread` swapped the two pids), so its exited entry moves there to be
/// harvested; otherwise `old_tid` is cleared.
#[inline(always)]
pub fn exec_by_thread(old_tid: u32, tid: u32, tgid: u32, start_ns: u64) -> Option<TaskTag> {
    let old = TASKS.get_ptr_mut(old_tid)?;
    // SAFETY: an array element, valid for the map's lifetime.
    let tag = unsafe { *old };
    if tag.slot == 0 || tag.slot & TAG_EXITED != 0 || tag.tgid != tgid {
        return None;
    }
    let new = TASKS.get_ptr_mut(tid)?;
    // SAFETY: as above. The exec'ing thread is the only live task of its group now, and the
    // leader has passed its exit program: no other program writes these two entries.
    unsafe {
        let leader = *new;
        *old = if leader.slot & TAG_EXITED != 0 && leader.start_ns == start_ns {
            leader
        } else {
            TaskTag::default()
        };
        (*new).tgid = tgid;
        (*new).start_ns = start_ns;
        core::ptr::write_volatile(&raw mut (*new).slot, tag.slot);
    }
    Some(TaskTag { slot: tag.slot, tgid, start_ns })
}

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
pub fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value, which lives as long as the map.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
}

/// Store `v` at `p` and return what was there, atomically (`BPF_XCHG`, kernel 5.12+).
#[inline(always)]
pub fn atomic_swap(p: *mut u64, v: u64) -> u64 {
    // SAFETY: `p` points into a map value, which lives as long as the map.
    unsafe {
        core::intrinsics::atomic_xchg::<u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, v)
    }
}

/// Add `delta` (which may be negative) to the slot's resident memory and raise its peak.
#[inline(always)]
pub fn mem_add(slot: u32, delta: i64) {
    if delta == 0 {
        return;
    }
    if let Some(st) = SLOT_STATE.get_ptr_mut(slot) {
        // SAFETY: map value pointer, see `atomic_add`. Two's complement makes this a subtract
        // for a negative delta.
        unsafe {
            atomic_add(&raw mut (*st).mem_current, delta as u64);
            if delta > 0 {
                // Racy max, as for `peak_tasks`.
                let now = core::ptr::read_volatile(&raw const (*st).mem_current);
                if (now as i64) > 0 && now > (*st).mem_peak {
                    (*st).mem_peak = now;
                }
            }
        }
    }
}

/// A task entered `slot`: count it, and raise the peak of live tasks.
#[inline(always)]
fn task_entered(slot: u32, is_leader: bool) {
    if let Some(st) = SLOT_STATE.get_ptr_mut(slot) {
        // SAFETY: map value pointer, see `atomic_add`.
        unsafe {
            atomic_add(&raw mut (*st).live_tasks, 1);
            // Racy max: under concurrent forks on other CPUs the peak may lag by those forks,
            // never exceed what was really live.
            let live = core::ptr::read_volatile(&raw const (*st).live_tasks);
            if live > (*st).peak_tasks {
                (*st).peak_tasks = live;
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
fn task_left(slot: u32) {
    if let Some(st) = SLOT_STATE.get_ptr_mut(slot) {
        // SAFETY: map value pointer, see `atomic_add`. Adding 2^64-1 subtracts one.
        atomic_add(unsafe { &raw mut (*st).live_tasks }, u64::MAX);
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
