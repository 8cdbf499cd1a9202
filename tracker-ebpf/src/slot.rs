//! Tags and per-slot bookkeeping, shared by the programs that tag and untag tasks.
//!
//! Two builds of what closes an exited entry, chosen by the loader per kernel (`COMPAT`):
//! - from 5.13, a compare-and-exchange of the entry's slot word (`BPF_CMPXCHG`, 5.12) decides
//!   which of the free and a new tag of the tid closes it;
//! - before (Debian 11's 5.10), a kernel that refuses any atomic but add (its verifier
//!   rejects a program holding one, reached or not), an entry `[tid, start_ns]` of `EXITED`,
//!   inserted at the exit, decides: whoever deletes it closes the task (a hash delete is
//!   atomic). The free then leaves the array entry as it is: only a tag writes an entry whose
//!   tid may be reused, so no write of the free can wipe a new task's tag. An exited entry
//!   left there is read as not live by everyone, and overwritten by the tid's next tag.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_send_signal};
use tracker_common::{KF_PREEMPTIBLE_TP, SIGKILL, SLOT_DOOMED, SlotCounters, TAG_EXITED, TaskTag};

use crate::{
    harvest,
    kernel::{Task, current_start_ns, is_active, offsets},
    maps::{COUNTERS, EXITED, GLOBAL, PENDING_FREE, SLOT_STATE, SLOTS, TASKS},
};

/// Whether `tid`'s entry holds a live tag. This is the whole of what an untagged task runs in
/// each program: one array load, which the verifier inlines into a bounds check and a load.
/// The programs test it inline and leave everything else to a function of its own
/// (`#[inline(never)]`: a BPF subprogram, which the JIT compiles apart). Measured on 6.18,
/// the same untagged path cost 157 ns a call in a 0.5 KB program and 222-247 ns in a 2.5 KB
/// one that also held the tagged path (the cache lines of its code and its larger frame).
#[inline(always)]
pub fn holds_live_tag(tid: u32) -> bool {
    current_slot(tid).is_some()
}

/// Whether `tid`'s entry holds a tag, live or exited.
#[inline(always)]
pub fn holds_tag(tid: u32) -> bool {
    TASKS.get(tid).is_some_and(|t| t.slot != 0)
}

/// The tag to take for a live task (`tid`, `tgid`, `start_ns`) whose entry holds an exited
/// tag of its own start time and process: a thread that exec'd, whose tag the exec program did
/// not move (see `fork.rs`'s `exec_skipped`).
#[inline(always)]
pub fn exec_skipped_tag(tid: u32, tgid: u32, start_ns: u64) -> Option<TaskTag> {
    let t = *TASKS.get(tid)?;
    (t.slot & TAG_EXITED != 0 && t.start_ns == start_ns && t.tgid == tgid).then_some(TaskTag {
        slot: t.slot & !TAG_EXITED,
        tgid,
        start_ns,
    })
}

/// Whether `tid`'s entry holds the tag of an exited task, not yet finished (see `finish`).
#[inline(always)]
pub fn holds_exited_tag(tid: u32) -> bool {
    TASKS.get(tid).is_some_and(|t| t.slot & TAG_EXITED != 0)
}

/// Whether no tagged task has exited without being freed yet: then no task being freed has an
/// exited entry. The count is raised before an entry is marked exited, in the exiting task,
/// and the task is freed a grace period after it passed its exit program, so the free sees
/// the raise. A count that ends too high (an entry closed some way that does not lower it)
/// only keeps this path open; none lowers it without closing an entry it raised it for.
#[inline(always)]
pub fn no_pending_free() -> bool {
    // SAFETY: a map value; a plain read of a count other CPUs change atomically.
    PENDING_FREE.get_ptr(0).is_some_and(|p| unsafe { core::ptr::read_volatile(p) } == 0)
}

/// An exited entry of `slot` was closed: count its task finished (with whatever else `f`
/// counts, in the same lookup of the counters) and one pending free fewer.
#[inline(always)]
pub fn count_finished(slot: u32, f: impl FnOnce(&mut SlotCounters)) {
    with_counters(slot, |c| {
        add(&mut c.counts.tasks_finished, 1);
        f(c);
    });
    if let Some(p) = PENDING_FREE.get_ptr_mut(0) {
        // Adding 2^64-1 subtracts one.
        atomic_add(p, u64::MAX);
    }
}

/// The tag of the current task, found under `tid` (its tid, or the tid it had before an
/// exec); see `live_tag`.
#[inline(always)]
pub fn current_tag<const COMPAT: bool>(tid: u32) -> Option<TaskTag> {
    live_tag(tid, current_start_ns::<COMPAT>)
}

/// The live tag under `tid` of the task whose start time `start_ns` gives. The untagged path
/// is one array load: `start_ns` is called (on the current task, a helper call) only for a
/// tagged entry. An entry left by an earlier task with the same tid (possible only if a task
/// was adopted at the instant it exited) has another start time: it is cleared on the way and
/// its slot's count corrected, and the task is not tagged.
#[inline(always)]
pub fn live_tag(tid: u32, start_ns: impl FnOnce() -> Option<u64>) -> Option<TaskTag> {
    let entry = TASKS.get_ptr_mut(tid)?;
    // SAFETY: an array element, valid for the map's lifetime.
    let tag = unsafe { *entry };
    // Untagged, or exited (the task is in its last moments, past its exit program).
    if tag.slot == 0 || tag.slot & TAG_EXITED != 0 {
        return None;
    }
    if start_ns()? != tag.start_ns {
        // SAFETY: as above.
        unsafe { *entry = TaskTag::default() };
        stale_entry_left(tag.slot);
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
    (task.start_ns(offsets()) == tag.start_ns).then_some(tag)
}

/// Tag task `tid` with `tag`; returns whether this call tagged it (and counted it).
#[inline(always)]
pub fn tag<const COMPAT: bool>(tid: u32, tag: &TaskTag) -> bool {
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
        // A stale entry of an earlier task with this tid: a live one (adopted at the instant
        // it exited) leaves its slot now.
        if old.slot & TAG_EXITED == 0 {
            stale_entry_left(old.slot);
        }
    }
    // SAFETY: as above. The slot is written last, so a reader that sees it sees the rest.
    unsafe {
        (*entry).tgid = tag.tgid;
        (*entry).start_ns = tag.start_ns;
    }
    // An exited entry is an earlier task with this tid whose free has not come yet (the tid
    // is released before the task is freed). Whichever of this tag and that free swaps the
    // slot word first closes the entry; the other sees it changed. So the free never wipes
    // this tag, and the exited task is closed exactly once (its CPU is lost if the tag wins:
    // the tid came round within a grace period).
    // An empty entry is claimed with a compare-and-exchange: the adopt iterator may tag a new
    // task in the instant between its wake-up making it runnable and the fork program that
    // tags it (see `fork`), and the task must enter its slot once. (The old build has no
    // compare-and-exchange; there the two can both count it, in that instant only.)
    if old.slot == 0 && !COMPAT {
        if !slot_cmpxchg(entry, 0, tag.slot) {
            return false;
        }
        task_entered(tag.slot, tid == tag.tgid);
        return true;
    }
    if old.slot & TAG_EXITED != 0 {
        if COMPAT {
            // The free never writes the entry here: the delete alone decides who closes it.
            if EXITED.remove(&exited_key(tid, old.start_ns)).is_ok() {
                count_finished(old.slot & !TAG_EXITED, |_| {});
            }
        } else if slot_cmpxchg(entry, old.slot, tag.slot) {
            count_finished(old.slot & !TAG_EXITED, |_| {});
            task_entered(tag.slot, tid == tag.tgid);
            return true;
        }
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut (*entry).slot, tag.slot) };
    task_entered(tag.slot, tid == tag.tgid);
    true
}

/// Task `tid` of `slot` passed `do_exit`: it leaves the slot now; its entry stays, marked
/// exited, until the task is freed (`free.rs`), where its CPU time is final and the rest of it
/// (after what its exit harvested, see `harvest`) is harvested.
///
/// The caller counts `tasks_exited` before, with the rest of what it counts, in one lookup of
/// the counters (a helper call before 6.10), so that a reader that sees the live count drop
/// sees the exit counted.
///
/// `COMPAT`: the entry's key in `EXITED` (`start_ns`, the task's) is inserted too. If it
/// cannot be (the map is full), the task is counted finished at once, without the CPU time of
/// its last slice: a figure a little short, never a task counted twice or never.
#[inline(always)]
pub fn mark_exited<const COMPAT: bool>(tid: u32, slot: u32, start_ns: u64) {
    if let Some(entry) = TASKS.get_ptr_mut(tid) {
        // Raised first: whatever closes the entry lowers it after.
        if let Some(p) = PENDING_FREE.get_ptr_mut(0) {
            atomic_add(p, 1);
        }
        if COMPAT
            && EXITED.insert(&exited_key(tid, start_ns), &slot, u64::from(BPF_NOEXIST)).is_err()
        {
            // The tid is not released yet: no tag can be written here meanwhile.
            // SAFETY: an array element, valid for the map's lifetime.
            unsafe { *entry = TaskTag::default() };
            live_tasks_drop(slot);
            count_finished(slot, |_| {});
            return;
        }
        // SAFETY: an array element, valid for the map's lifetime.
        unsafe { core::ptr::write_volatile(&raw mut (*entry).slot, slot | TAG_EXITED) };
        live_tasks_drop(slot);
    }
}

/// The exit backstop (`exit.rs`'s `trk_dead`) closes task `tid`, whose live tag `tag` it
/// read, as `mark_exited` does; whether it did. Unlike at `trk_exit`, the tid may already be
/// released (an autoreaped thread's is, before its final switch), and a new task tagged under
/// it: the slot word is swapped from exactly the live value, so a new tag is never overwritten.
/// If the swap fails, that tag counted this task as a stale entry that left (`tag`). The old
/// build has no compare-and-exchange, and needs no backstop (its kernels run tracepoint
/// programs with preemption off): there it closes nothing.
#[inline(always)]
pub fn close_dead(tid: u32, tag: &TaskTag) -> bool {
    let Some(entry) = TASKS.get_ptr_mut(tid) else {
        return false;
    };
    // Raised first, as in `mark_exited`, and lowered again if the entry is not ours.
    let Some(pending) = PENDING_FREE.get_ptr_mut(0) else {
        return false;
    };
    atomic_add(pending, 1);
    if slot_cmpxchg(entry, tag.slot, tag.slot | TAG_EXITED) {
        return true;
    }
    atomic_add(pending, u64::MAX);
    false
}

/// The backstop closed an entry of `slot` (`close_dead`) and counted its exit.
#[inline(always)]
pub fn dead_closed(slot: u32) {
    live_tasks_drop(slot);
}

/// The key of an exited task in `EXITED` (compat programs).
#[inline(always)]
fn exited_key(tid: u32, start_ns: u64) -> [u64; 2] {
    [u64::from(tid), start_ns]
}

/// Task `tid` (`task`) is being freed: if the entry is its exited one, its slot and the runtime
/// its exit harvested (`harvest::recorded`, read before the close), after closing the entry;
/// the caller counts the task finished. The untagged path is one array load; the task's start
/// time is read only for an exited entry.
///
/// The tid was released before this free (at `release_task`), so a new task may be tagged
/// under it at any moment, on another CPU. Closing is a compare-and-exchange of the slot word
/// from exactly this exited value to 0: it fails if a tag came first (that tag closed the
/// entry, see `tag`), and a tag that comes after finds 0 and writes over it. A plain write of
/// the whole entry could wipe a new task's tag written between our read and our write.
///
/// `COMPAT`: deleting the task's key from `EXITED` closes it; the entry stays (see the module
/// doc).
#[inline(always)]
pub fn finish<const COMPAT: bool>(tid: u32, task: Task) -> Option<(u32, u64)> {
    if COMPAT {
        if !is_active() {
            return None;
        }
        let key = exited_key(tid, task.start_ns(offsets()));
        // SAFETY: the value is copied out at once. A key's value never changes while it is
        // there (one task, one slot), so it is the one the delete takes.
        let slot = unsafe { EXITED.get(&key) }.copied()?;
        let done = harvest::recorded(tid);
        return EXITED.remove(&key).is_ok().then_some((slot, done));
    }
    let entry = TASKS.get_ptr_mut(tid)?;
    // SAFETY: an array element, valid for the map's lifetime.
    let word = unsafe { core::ptr::read_volatile(&raw const (*entry).slot) };
    if word & TAG_EXITED == 0 {
        return None;
    }
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(&raw const (*entry).start_ns) } != task.start_ns(offsets())
    {
        return None;
    }
    let done = harvest::recorded(tid);
    // During an upgrade the old generation's program runs too: only the active one closes.
    if !is_active() || !slot_cmpxchg(entry, word, 0) {
        return None;
    }
    // The caller counts it finished, with its CPU time, in one lookup of the counters.
    Some((word & !TAG_EXITED, done))
}

/// Swap the slot word of `entry` from `old` to `new`; whether it was `old`.
///
/// A compare-and-exchange (`BPF_CMPXCHG`, kernel 5.12+) of the 64-bit word that holds the
/// slot and the tgid, keeping the tgid as read: the BPF target has 32-bit atomics only with
/// ALU32 (`-mcpu=v3`), which this build does not use. The tgid half is written only by
/// `tag`, with a plain store before it swaps the slot itself; so a swap that fails because
/// the tgid moved is one that a tag in progress would win anyway, and the slot word changes
/// exactly as a 32-bit compare-and-exchange would change it.
#[inline(always)]
fn slot_cmpxchg(entry: *mut TaskTag, old: u32, new: u32) -> bool {
    let word = entry.cast::<u64>();
    // SAFETY: `entry` points into the tasks array, which lives as long as the map; a tag is
    // 8-byte aligned (its `start_ns`), and `slot` (offset 0) is the low half on the
    // little-endian BPF target.
    unsafe {
        let seen = core::ptr::read_volatile(word);
        if seen as u32 != old {
            return false;
        }
        let want = (seen & !0xffff_ffff) | u64::from(new);
        core::intrinsics::atomic_cxchg::<
            u64,
            { core::intrinsics::AtomicOrdering::SeqCst },
            { core::intrinsics::AtomicOrdering::SeqCst },
        >(word, seen, want)
        .1
    }
}

/// A thread that was not its process's leader exec'd: `de_thread` gave it the leader's pid
/// (`tid`) and start time (`start_ns`), while its tag is still under the tid it had
/// (`old_tid`), with its own start time, which the thread no longer has. The tag is known by
/// its thread group, which exec does not change, and moves to `tid` with the new start time:
/// the task stays one live task of its slot.
///
/// The leader's entry at `tid` is marked exited (its exit program ran before `de_thread`
/// could go on). `de_thread` swapped the two pids, so the leader will be freed under
/// `old_tid`: unless its free came already, its exited entry moves there to be harvested, with
/// what its exit harvested (`harvest::copy`, before the entry).
/// The free may run on another CPU at this moment, looking under `old_tid` and then under its
/// group's tid (see `free.rs`): the copy is written first and the original claimed with a
/// compare-and-exchange; if the free took the original first, the copy is taken back. Either
/// way the leader is closed once.
///
/// `COMPAT`: the same, with the leader's key in `EXITED` moved instead of the entry swapped:
/// inserted under `old_tid`, then deleted under `tid`; if the free deleted it first, the copy
/// is deleted back.
#[inline(always)]
pub fn exec_by_thread<const COMPAT: bool>(
    old_tid: u32,
    tid: u32,
    tgid: u32,
    start_ns: u64,
) -> Option<TaskTag> {
    let old = TASKS.get_ptr_mut(old_tid)?;
    // SAFETY: an array element, valid for the map's lifetime.
    let tag = unsafe { *old };
    if tag.slot == 0 || tag.slot & TAG_EXITED != 0 || tag.tgid != tgid {
        return None;
    }
    let new = TASKS.get_ptr_mut(tid)?;
    // SAFETY: as above. The exec'ing thread is the only live task of its group now, and the
    // leader has passed its exit program: only the leader's free (or a tag of a reused tid,
    // which `tag` handles) may write these two entries besides us.
    let leader = unsafe { *new };
    let moves = leader.slot & TAG_EXITED != 0 && leader.start_ns == start_ns;
    if moves {
        harvest::copy(tid, old_tid);
        // SAFETY: as above; the slot word last, so a free that sees it sees the rest.
        unsafe {
            (*old).tgid = leader.tgid;
            (*old).start_ns = leader.start_ns;
            core::ptr::write_volatile(&raw mut (*old).slot, leader.slot);
        }
        if COMPAT {
            let (copy, original) = (exited_key(old_tid, start_ns), exited_key(tid, start_ns));
            let slot = leader.slot & !TAG_EXITED;
            // If the copy cannot be inserted, the original stays, where the free looks second.
            if EXITED.insert(&copy, &slot, u64::from(BPF_NOEXIST)).is_ok()
                && EXITED.remove(&original).is_err()
            {
                let _ = EXITED.remove(&copy);
            }
        } else if !slot_cmpxchg(new, leader.slot, 0) {
            // The free closed the original: the copy goes.
            let _ = slot_cmpxchg(old, leader.slot, 0);
        }
    } else {
        let closed = leader.slot & TAG_EXITED != 0
            && if COMPAT {
                EXITED.remove(&exited_key(tid, leader.start_ns)).is_ok()
            } else {
                slot_cmpxchg(new, leader.slot, 0)
            };
        if closed {
            // An older task's exited entry, never to be freed under this tid now.
            count_finished(leader.slot & !TAG_EXITED, |_| {});
        }
        // SAFETY: as above.
        unsafe { *old = TaskTag::default() };
    }
    // SAFETY: as above.
    unsafe {
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

/// Add `v` to a per-CPU counter. Where every program runs with preemption off, no other
/// program runs on this CPU between the load and the store, and a plain add is exact. Where a
/// 7.0+ kernel runs them preemptibly (`KF_PREEMPTIBLE_TP`), a program preempted between the
/// two could write back over another program's add to the same counter: the add is atomic.
#[inline(always)]
pub fn add(p: &mut u64, v: u64) {
    if offsets().features & KF_PREEMPTIBLE_TP != 0 {
        atomic_add(p, v);
    } else {
        *p += v;
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

/// Whether the slot's resident count (kept by `rss_stat`) is not 0.
#[inline(always)]
pub fn has_memory(slot: u32) -> bool {
    // SAFETY: a map value; a plain read of a count other CPUs change atomically.
    SLOT_STATE
        .get_ptr(slot)
        .is_some_and(|st| unsafe { core::ptr::read_volatile(&raw const (*st).mem_current) } != 0)
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
        add(&mut c.counts.tasks_started, 1);
        if is_leader {
            add(&mut c.counts.processes_started, 1);
        }
    });
}

/// A stale live entry of `slot` (a task adopted at the instant it exited) is cleared: the task
/// is counted exited and finished at once (it will never reach the exit or free programs as
/// this tag), then one live task fewer.
#[inline(always)]
fn stale_entry_left(slot: u32) {
    with_counters(slot, |c| {
        add(&mut c.counts.tasks_exited, 1);
        add(&mut c.counts.tasks_finished, 1);
    });
    live_tasks_drop(slot);
}

/// A task of `slot` passed `do_exit`: one live task fewer (the caller counts it exited).
#[inline(always)]
fn live_tasks_drop(slot: u32) {
    if let Some(st) = SLOT_STATE.get_ptr_mut(slot) {
        // SAFETY: map value pointer, see `atomic_add`. Adding 2^64-1 subtracts one.
        atomic_add(unsafe { &raw mut (*st).live_tasks }, u64::MAX);
    }
}

#[inline(always)]
fn tag_failed(slot: u32) {
    with_counters(slot, |c| add(&mut c.counts.tag_failures, 1));
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
        with_counters(slot, |c| add(&mut c.counts.doom_kills, 1));
    }
}
