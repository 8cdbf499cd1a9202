//! `rss_stat`: every change of a tagged process's resident-page counters, so that the slot's
//! resident memory, and its peak, are kept in the kernel at the moment they change: a
//! grandchild that touches 400 MiB for 100 ms shows in the peak.
//!
//! The tracepoint fires at each change of an `mm_struct` counter (file, anon, swap entries,
//! shmem), in the task that changes it. We keep, per tagged process, the last value of each
//! counter of its address space, and add the difference to the slot. Changes made by another
//! task (page reclaim by kswapd, a vfork child in its parent's address space, the teardown of
//! an address space an exec replaced) are not taken; the counters being absolute, the
//! process's next change brings its entry up to date.
//!
//! Threads of one process change its counters at once on other CPUs (per-VMA locks, split
//! page-table locks), so each place of an entry is changed atomically: swapped (`BPF_XCHG`,
//! 5.12) from 5.13; before, under `RSS_LOCK`, a per-process lock taken with an atomic map
//! insert (`trk_rss_old`).
use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracker_common::{KernelOffsets, MmRss};

use crate::{
    kernel::{
        MM_SWAPENTS, Mm, Task, current_mm_addr, current_start_ns, current_task, current_tid,
        is_active, offsets,
    },
    maps::{MM_RSS, RSS_LOCK},
    slot,
};

/// How often the compat programs try a process's lock before they give up. Its holder runs on
/// another CPU with preemption off and holds it for a few dozen instructions.
const LOCK_TRIES: u32 = 256;

#[btf_tracepoint(function = "rss_stat")]
pub fn trk_rss(ctx: BtfTracePointContext) -> u32 {
    rss::<false>(&ctx)
}

/// For kernels before 5.13 (see `slot`).
#[btf_tracepoint(function = "rss_stat")]
pub fn trk_rss_old(ctx: BtfTracePointContext) -> u32 {
    rss::<true>(&ctx)
}

#[inline(always)]
fn rss<const COMPAT: bool>(ctx: &BtfTracePointContext) -> u32 {
    let off = offsets();
    // Page faults are hot: the untagged path is the one array load of `live_tag`; the current
    // task is read only for a tagged entry, once.
    let mut my_mm = 0;
    let start_ns = || {
        if COMPAT {
            my_mm = current_mm_addr::<true>();
            current_start_ns::<true>()
        } else {
            let me = Task::of(current_task());
            my_mm = me.mm(off).map_or(0, Mm::addr);
            Some(me.start_ns(off))
        }
    };
    let Some(tag) = slot::live_tag(current_tid(), start_ns) else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    let mm = Mm::of(ctx.arg(0));
    let member: u64 = ctx.arg(1);
    let member = member as u32;
    if member == MM_SWAPENTS {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Only the process's own address space, as its own (a vfork child shares its parent's).
    if my_mm != mm.addr() || owner_tgid(off, mm) != Some(tgid) {
        return 0;
    }
    let Some(now) = mm.counter_bytes(off, member) else {
        return 0;
    };
    let entry = match MM_RSS.get_ptr_mut(&tgid) {
        Some(e) => e,
        None => {
            let fresh = MmRss { slot: tag.slot, mm: mm.addr(), ..Default::default() };
            let _ = MM_RSS.insert(&tgid, &fresh, u64::from(BPF_NOEXIST));
            let Some(e) = MM_RSS.get_ptr_mut(&tgid) else { return 0 };
            e
        }
    };
    // Not taken: the counters are absolute, so the process's next change brings the entry up
    // to date.
    if COMPAT && !lock(tgid) {
        return 0;
    }
    // SAFETY: a map value; each place is swapped atomically, or changed under the lock.
    unsafe {
        if (*entry).mm != mm.addr() || (*entry).slot != tag.slot {
            // An exec gave the process a new address space (the old one is gone), or this is
            // the entry of an earlier process with this tgid (emptied at its exit).
            empty::<COMPAT>(entry);
            (*entry).mm = mm.addr();
            (*entry).slot = tag.slot;
        }
        let idx = (member & 3) as usize;
        let place = &raw mut (*entry).bytes[idx];
        let before = swap::<COMPAT>(place, now);
        slot::mem_add((*entry).slot, now as i64 - before as i64);
    }
    if COMPAT {
        unlock(tgid);
    }
    0
}

/// The last thread of process `tgid` of `slot` exits: its memory leaves the slot. The entry is
/// emptied, not deleted: a hash delete on every process exit costs more than the rest of the
/// exit program; the next process with this tgid reuses the entry (keys are tgids, so there
/// are never more than `pid_max`), and user space deletes a slot's entries when it releases
/// it.
///
/// A slot whose resident count is 0 has no entry with bytes in it (the count is the sum of its
/// entries' bytes, each changed with it), so its processes skip the hash lookup: every slot,
/// while `rss_stat` is not attached.
#[inline(always)]
pub fn process_gone<const COMPAT: bool>(slot: u32, tgid: u32) {
    if !slot::has_memory(slot) {
        return;
    }
    if let Some(entry) = MM_RSS.get_ptr_mut(&tgid) {
        if COMPAT && !lock(tgid) {
            return;
        }
        empty::<COMPAT>(entry);
        if COMPAT {
            unlock(tgid);
        }
    }
}

/// Take an entry's bytes out of its slot, each place swapped to 0 atomically (or under the
/// lock) so that two threads emptying it at once take each byte out once.
#[inline(always)]
fn empty<const COMPAT: bool>(entry: *mut MmRss) {
    // SAFETY: a map value, valid for the map's lifetime.
    unsafe {
        let slot = (*entry).slot;
        let mut gone = 0u64;
        for i in 0..4 {
            gone += swap::<COMPAT>(&raw mut (*entry).bytes[i], 0);
        }
        slot::mem_add(slot, -(gone as i64));
    }
}

/// Store `v` in an entry's place and return what was there: atomically, or (compat programs,
/// which have no atomic exchange) under the process's lock, which the caller holds.
#[inline(always)]
fn swap<const COMPAT: bool>(place: *mut u64, v: u64) -> u64 {
    if COMPAT {
        // SAFETY: a map value's field; the caller holds the process's lock.
        unsafe {
            let before = core::ptr::read_volatile(place);
            core::ptr::write_volatile(place, v);
            before
        }
    } else {
        slot::atomic_swap(place, v)
    }
}

/// Take process `tgid`'s lock (compat programs): an insert succeeds on one CPU at a time.
#[inline(always)]
fn lock(tgid: u32) -> bool {
    for _ in 0..LOCK_TRIES {
        if RSS_LOCK.insert(&tgid, &1, u64::from(BPF_NOEXIST)).is_ok() {
            return true;
        }
    }
    false
}

#[inline(always)]
fn unlock(tgid: u32) {
    let _ = RSS_LOCK.remove(&tgid);
}

#[inline(always)]
fn owner_tgid(off: &KernelOffsets, mm: Mm) -> Option<u32> {
    Some(mm.owner(off)?.tgid(off))
}
