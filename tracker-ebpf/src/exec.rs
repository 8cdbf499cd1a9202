//! `sched_process_exec`: count execs, keep the tag on the right tid, and kill a doomed exec.
use aya_ebpf::{
    bindings::task_struct, helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use tracker_common::{EVENT_EXEC, KF_TEST_SKIP_RUNS};

use crate::{
    events,
    kernel::{Task, current_tid, is_active, offsets},
    slot,
};

#[btf_tracepoint(function = "sched_process_exec")]
pub fn trk_exec(ctx: BtfTracePointContext) -> u32 {
    exec::<false>(&ctx)
}

/// For kernels before 5.13 (see `slot`).
#[btf_tracepoint(function = "sched_process_exec")]
pub fn trk_exec_old(ctx: BtfTracePointContext) -> u32 {
    exec::<true>(&ctx)
}

#[inline(always)]
fn exec<const COMPAT: bool>(ctx: &BtfTracePointContext) -> u32 {
    // A thread that is not the leader takes the leader's pid and start time when it execs:
    // `old_pid` is the tid it had, under which its tag still is.
    let old_pid: u64 = ctx.arg(1);
    let old_tid = old_pid as u32;
    let tid = current_tid();
    if old_tid == tid && !slot::holds_live_tag(tid) {
        return 0;
    }
    // Tests: a thread's exec left to the fork and free programs, as a skipped run leaves it.
    if old_tid != tid && offsets().features & KF_TEST_SKIP_RUNS != 0 {
        return 0;
    }
    // `p`, the exec'ing task, is the current one.
    exec_tagged::<COMPAT>(Task::of(ctx.arg::<*mut task_struct>(0)), old_tid, tid)
}

/// The exec of a task whose entry holds a tag, or of a thread (see `slot::holds_live_tag` for
/// why apart).
#[inline(never)]
fn exec_tagged<const COMPAT: bool>(task: Task, old_tid: u32, tid: u32) -> u32 {
    let start_ns = task.start_ns(offsets());
    let tag = if old_tid == tid {
        slot::live_tag(tid, || Some(start_ns))
    } else {
        // Rare (an exec from a thread). The leader's free may have made the move already,
        // where the kernel had skipped a run before (see `free.rs`): the tag is then found
        // where it went.
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        slot::exec_by_thread::<COMPAT>(old_tid, tid, tgid, start_ns)
            .or_else(|| slot::live_tag(tid, || Some(start_ns)))
    };
    let Some(tag) = tag else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    slot::with_counters(tag.slot, |c| slot::add(&mut c.counts.execs, 1));
    events::emit(EVENT_EXEC, tag.slot, |e| {
        e.pid = tid;
        e.tgid = tag.tgid;
    });
    if slot::is_doomed(tag.slot) {
        slot::doom_current(tag.slot);
    }
    0
}
