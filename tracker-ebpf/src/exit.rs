//! `sched_process_exit`: a tagged task leaves its slot when it passes `do_exit`, before its
//! pid can be reused. Its I/O and page faults are final here and are harvested; its CPU time
//! is not (the running slice is not yet added): `free.rs` harvests that when the task is
//! freed, after its final context switch.
use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    cty::c_void,
    macros::{btf_tracepoint, map},
    maps::LruHashMap,
    programs::BtfTracePointContext,
};

use tracker_common::{EVENT_EXIT, EVENT_GROUP_DEAD, KF_EXIT_GROUP_DEAD, KernelOffsets};

use crate::{
    events,
    kernel::{Task, is_active, offsets},
    rss, slot,
};

#[btf_tracepoint(function = "sched_process_exit")]
pub fn trk_exit(ctx: BtfTracePointContext) -> u32 {
    exit::<false>(&ctx)
}

/// For kernels before 5.13 (see `slot`).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn trk_exit_old(ctx: BtfTracePointContext) -> u32 {
    exit::<true>(&ctx)
}

#[inline(always)]
fn exit<const COMPAT: bool>(ctx: &BtfTracePointContext) -> u32 {
    // The exiting task is the current one: its pointer comes with the tracepoint, so the
    // untagged path needs no helper call (each is a call and a return, which the kernel's
    // return-stack mitigations make dear).
    let task = Task::of(ctx.arg(0));
    let tid = task.tid(offsets());
    if !slot::holds_live_tag(tid) {
        return 0;
    }
    exit_tagged::<COMPAT>(ctx.as_ptr(), task, tid)
}

/// The exit of a task whose entry holds a tag (see `slot::holds_live_tag` for why apart).
#[inline(never)]
fn exit_tagged<const COMPAT: bool>(ctx: *mut c_void, task: Task, tid: u32) -> u32 {
    let ctx = BtfTracePointContext::new(ctx);
    let off = offsets();
    let start_ns = task.start_ns(off);
    let Some(tag) = slot::live_tag(tid, || Some(start_ns)) else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    let (gone, group_dead) = group_end(&ctx, off, task, tag.tgid);
    // The event before the live count drops: a reader that sees the slot's count at 0 has
    // every exit event of it in the ring (see the user side's `Watcher::drain`).
    events::emit(EVENT_EXIT, tag.slot, |e| {
        e.pid = tid;
        e.tgid = tag.tgid;
        e.flags = if group_dead { EVENT_GROUP_DEAD } else { 0 };
        e.code = task.exit_code(off);
    });
    let io = task.io(off);
    let faults = task.faults(off);
    // exit_code holds the signal number in its low 7 bits when a signal ended the group.
    let by_signal = group_dead && task.exit_code(off) & 0x7f != 0;
    // Every thread that finds the group gone takes the peak (a max, so taking it twice is
    // harmless): on older kernels the one that counts the group may get here before the one
    // whose `do_exit` wrote `signal->maxrss`, never after it.
    let maxrss = match task.signal(off) {
        Some(signal) if gone => signal.maxrss_pages(off) << off.page_shift,
        _ => 0,
    };
    slot::with_counters(tag.slot, |c| {
        c.counts.tasks_exited += 1;
        c.io.add(&io);
        c.min_flt += faults.0;
        c.maj_flt += faults.1;
        if group_dead {
            c.counts.processes_exited += 1;
            if by_signal {
                c.counts.exits_by_signal += 1;
            }
        }
        if maxrss > c.max_rss_bytes {
            c.max_rss_bytes = maxrss;
        }
    });
    // Counted exited first, then one live task fewer: a reader that sees the live count drop
    // sees the exit counted.
    slot::mark_exited::<COMPAT>(tid, tag.slot, start_ns);
    if gone {
        rss::process_gone::<COMPAT>(tag.slot, tag.tgid);
    }
    0
}

/// Groups whose death was counted, by (tgid, leader's start time), on kernels whose tracepoint
/// has no `group_dead`. Every thread of a group that dies at once (exit_group kills them all
/// together) can find `signal->live` at 0 here; the first to insert the group's key is the one
/// that counts it: the insert is atomic. An entry is needed only for the microseconds the
/// group's threads take to pass this point; the LRU map forgets it later.
#[map(name = "TRK_GROUP_GONE")]
static GROUP_GONE: LruHashMap<[u64; 2], u8> = LruHashMap::with_max_entries(16384, 0);

/// (whether the exiting task's thread group is gone, whether this task is the one that counts
/// its end: exactly one task per group).
#[inline(always)]
fn group_end(
    ctx: &BtfTracePointContext,
    off: &KernelOffsets,
    task: Task,
    tgid: u32,
) -> (bool, bool) {
    // A constant of the frozen `.rodata`: the verifier walks one branch only, so the argument
    // that this kernel's tracepoint lacks is never read where it would be refused.
    if off.features & KF_EXIT_GROUP_DEAD != 0 {
        let group_dead: u64 = ctx.arg(1);
        let dead = group_dead & 0xff != 0;
        return (dead, dead);
    }
    if task.signal(off).and_then(|s| s.live_is_zero(off)) != Some(true) {
        return (false, false);
    }
    let key = [u64::from(tgid), task.leader_start_ns(off).unwrap_or(0)];
    (true, GROUP_GONE.insert(&key, &1, u64::from(BPF_NOEXIST)).is_ok())
}
