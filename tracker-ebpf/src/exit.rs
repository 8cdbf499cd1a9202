//! `sched_process_exit`: a tagged task leaves its slot when it passes `do_exit`, before its
//! pid can be reused. Its I/O and page faults are final here and are harvested, and its CPU
//! time so far; the rest of its CPU time (its last slice) is final only when the task is freed,
//! after its final context switch, where `free.rs` harvests it (see `harvest.rs`).
use aya_ebpf::{
    bindings::{BPF_NOEXIST, task_struct},
    macros::{btf_tracepoint, map},
    maps::LruHashMap,
    programs::BtfTracePointContext,
};

use tracker_common::{
    EVENT_EXIT, EVENT_GROUP_DEAD, KF_EXIT_GROUP_DEAD, KF_PREEMPTIBLE_TP, KF_TEST_SKIP_RUNS,
    KernelOffsets, TASK_DEAD, cpu::split,
};

use crate::{
    events, harvest,
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

/// The backstop of `trk_exit` on kernels that run tracepoint programs preemptibly (7.0+).
///
/// Such a kernel skips a program's run on a CPU where another task was preempted inside that
/// same program (its per-CPU recursion guard): measured on 7.3, `trk_exit` missed 5 exits of
/// one containment test, which left zombies tagged live. A task's final context switch
/// (`do_task_dead`) runs with the runqueue locked and interrupts off, so this program is never
/// preempted and never skipped: a dead task whose tag is still live had its exit skipped, and
/// is closed here with the same accounting, a moment later than `trk_exit` would have (after
/// its parent was notified, so a reader that waited for it may see its exit a moment late,
/// never not at all). It costs a load and a compare at every context switch of the machine,
/// which is why it is attached only where exits can be skipped.
#[btf_tracepoint(function = "sched_switch")]
pub fn trk_dead(ctx: BtfTracePointContext) -> u32 {
    let off = offsets();
    let prev = Task::of(ctx.arg::<*mut task_struct>(1));
    if prev.state(off) != TASK_DEAD {
        return 0;
    }
    let tid = prev.tid(off);
    if !slot::holds_live_tag(tid) {
        return 0;
    }
    exit_tagged::<false>(prev, tid, GROUP_BY_LIVE | BACKSTOP)
}

/// How the exiting task's group end is known (`exit_tagged`'s `how`).
const GROUP_ALIVE: u32 = 0;
const GROUP_DEAD: u32 = 1;
/// From `signal->live`: the tracepoint has no `group_dead` (older kernels), or the backstop.
const GROUP_BY_LIVE: u32 = 2;
/// The backstop: the task's tid may already be released and tagged again (see `trk_dead`).
const BACKSTOP: u32 = 4;

#[inline(always)]
fn exit<const COMPAT: bool>(ctx: &BtfTracePointContext) -> u32 {
    // The exiting task is the current one: its pointer comes with the tracepoint, so the
    // untagged path needs no helper call (each is a call and a return, which the kernel's
    // return-stack mitigations make dear).
    let off = offsets();
    let task = Task::of(ctx.arg(0));
    let tid = task.tid(off);
    if !slot::holds_live_tag(tid) {
        return 0;
    }
    if off.features & KF_TEST_SKIP_RUNS != 0 {
        return 0;
    }
    // A constant of the frozen `.rodata`: the verifier walks one branch only, so the argument
    // that this kernel's tracepoint lacks is never read where it would be refused.
    let how = if off.features & KF_EXIT_GROUP_DEAD != 0 {
        let group_dead: u64 = ctx.arg(1);
        if group_dead & 0xff != 0 { GROUP_DEAD } else { GROUP_ALIVE }
    } else {
        GROUP_BY_LIVE
    };
    exit_tagged::<COMPAT>(task, tid, how)
}

/// The exit of a task whose entry holds a tag (see `slot::holds_live_tag` for why apart).
#[inline(never)]
fn exit_tagged<const COMPAT: bool>(task: Task, tid: u32, how: u32) -> u32 {
    let off = offsets();
    let start_ns = task.start_ns(off);
    let tag = if how & BACKSTOP != 0 {
        // Never clears the entry: it may be a new task's.
        slot::tag_of(tid, task)
    } else {
        slot::live_tag(tid, || Some(start_ns))
    };
    let Some(tag) = tag else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    // The backstop claims the entry before it counts anything: a new task tagged under the
    // released tid has closed it otherwise (see `slot::close_dead`).
    // (Never in the old build, which has no backstop and must hold no compare-and-exchange.)
    if how & BACKSTOP != 0 && (COMPAT || !slot::close_dead(tid, &tag)) {
        return 0;
    }
    // Recorded before the entry is marked exited, where the exit program marks it; where the
    // backstop claimed it, after, but the free cannot come before this final switch is done.
    let cpu = task.cpu(off);
    harvest::record(tid, cpu.0);
    let (user, system) = split(cpu.0, cpu.1, cpu.2);
    let (gone, group_dead) = group_end(off, task, tag.tgid, how);
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
        let add = slot::add;
        add(&mut c.counts.tasks_exited, 1);
        add(&mut c.io.rchar, io.rchar);
        add(&mut c.io.wchar, io.wchar);
        add(&mut c.io.syscr, io.syscr);
        add(&mut c.io.syscw, io.syscw);
        add(&mut c.io.read_bytes, io.read_bytes);
        add(&mut c.io.write_bytes, io.write_bytes);
        add(&mut c.io.cancelled_write_bytes, io.cancelled_write_bytes);
        add(&mut c.min_flt, faults.0);
        add(&mut c.maj_flt, faults.1);
        add(&mut c.cpu_user_ns, user);
        add(&mut c.cpu_system_ns, system);
        if group_dead {
            add(&mut c.counts.processes_exited, 1);
            if by_signal {
                add(&mut c.counts.exits_by_signal, 1);
            }
        }
        if maxrss > c.max_rss_bytes {
            c.max_rss_bytes = maxrss;
        }
    });
    // Counted exited first, then one live task fewer: a reader that sees the live count drop
    // sees the exit counted.
    if how & BACKSTOP != 0 {
        slot::dead_closed(tag.slot);
    } else {
        slot::mark_exited::<COMPAT>(tid, tag.slot, start_ns);
    }
    if gone {
        rss::process_gone::<COMPAT>(tag.slot, tag.tgid);
    }
    0
}

/// Groups whose death was counted, by (tgid, leader's start time), where the group's end is
/// read from `signal->live` or may be recorded by two programs (`KF_PREEMPTIBLE_TP`). Every
/// thread of a group that dies at once (exit_group kills them all together) can find
/// `signal->live` at 0; the first to insert the group's key is the one that counts it: the
/// insert is atomic. An entry is needed only for the microseconds the group's threads take to
/// pass this point; the LRU map forgets it later.
#[map(name = "TRK_GROUP_GONE")]
static GROUP_GONE: LruHashMap<[u64; 2], u8> = LruHashMap::with_max_entries(16384, 0);

/// (whether the exiting task's thread group is gone, whether this task is the one that counts
/// its end: exactly one task per group).
#[inline(always)]
fn group_end(off: &KernelOffsets, task: Task, tgid: u32, how: u32) -> (bool, bool) {
    let gone = match how & !BACKSTOP {
        GROUP_DEAD => true,
        GROUP_ALIVE => false,
        _ => task.signal(off).and_then(|s| s.live_is_zero(off)) == Some(true),
    };
    if !gone {
        return (false, false);
    }
    // With the tracepoint's `group_dead`, exactly one thread sees it, unless the backstop may
    // record the group too.
    if how & !BACKSTOP == GROUP_DEAD && off.features & KF_PREEMPTIBLE_TP == 0 {
        return (true, true);
    }
    let key = [u64::from(tgid), task.leader_start_ns(off).unwrap_or(0)];
    (true, GROUP_GONE.insert(&key, &1, u64::from(BPF_NOEXIST)).is_ok())
}
