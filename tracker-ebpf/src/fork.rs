//! `sched_wakeup_new`: every task the kernel creates for a tagged task is tagged before it
//! ever runs.
//!
//! The tracepoint fires in `wake_up_new_task`, in the creating task (`current`), once the new
//! task is complete and before it can first run, for every task the kernel starts: processes,
//! threads, `vfork`, `CLONE_PARENT`, and the io_uring workers (io-wq and SQPOLL threads) that
//! `create_io_thread` makes without passing through `kernel_clone`.
//!
//! Why there and not at `task_newtask` or `sched_process_fork`: it fires with the runqueue
//! locked and interrupts off, so this program cannot be preempted. From 7.0 the kernel runs
//! tracepoint programs preemptibly (SRCU-fast tracepoints) and skips a program's run on a CPU
//! where another task was preempted inside that same program (its per-CPU recursion guard,
//! counted as `recursion_misses`): measured on 7.3, `task_newtask` missed 18 forks of one
//! containment test, each an untagged child of a tagged job. Here no task can be preempted
//! inside the program, so no run is skipped.
use aya_ebpf::{
    bindings::task_struct, helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracker_common::{EVENT_FORK, KF_PREEMPTIBLE_TP, TaskTag};

use crate::{
    events,
    kernel::{Task, current_start_ns, current_tid, is_active, offsets},
    slot,
};

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn trk_fork(ctx: BtfTracePointContext) -> u32 {
    fork::<false>(&ctx)
}

/// For kernels before 5.13 (see `slot`).
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn trk_fork_old(ctx: BtfTracePointContext) -> u32 {
    fork::<true>(&ctx)
}

#[inline(always)]
fn fork<const COMPAT: bool>(ctx: &BtfTracePointContext) -> u32 {
    // The creator is the current task, whatever the clone flags (a thread's or a
    // `CLONE_PARENT` child's `real_parent` is not its creator): the untagged path is one
    // helper call and one array load.
    let creator_tid = current_tid();
    // Where runs may be skipped, an exited entry too (see `exec_skipped`); a constant of the
    // frozen `.rodata`, so each kernel's program holds one test.
    let tagged = if offsets().features & KF_PREEMPTIBLE_TP != 0 {
        slot::holds_tag(creator_tid)
    } else {
        slot::holds_live_tag(creator_tid)
    };
    if !tagged {
        return 0;
    }
    fork_tagged::<COMPAT>(Task::of(ctx.arg::<*mut task_struct>(0)), creator_tid)
}

/// The creator's tag where a kernel that may skip runs (`KF_PREEMPTIBLE_TP`) skipped its
/// exec program's: the creator is a thread that exec'd while not its process's leader, so
/// `de_thread` gave it the leader's tid and start time, and its tag was not moved there; its
/// entry holds the leader's exited tag, with that same start time. No other live task has
/// its own start time in an exited entry under its tid (a task's exit is past its last fork).
/// The child is tagged in the slot at once; the leader's free, under the thread's old tid,
/// moves the thread's own tag (`free.rs`), a grace period later.
#[inline(always)]
fn exec_skipped<const COMPAT: bool>(creator_tid: u32) -> Option<TaskTag> {
    if COMPAT || offsets().features & KF_PREEMPTIBLE_TP == 0 {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    slot::exec_skipped_tag(creator_tid, tgid, current_start_ns::<COMPAT>()?)
}

/// The fork of a task whose creator's entry holds a tag (see `slot::holds_live_tag` for why
/// apart).
#[inline(never)]
fn fork_tagged<const COMPAT: bool>(child: Task, creator_tid: u32) -> u32 {
    let off = offsets();
    let Some(creator) =
        slot::current_tag::<COMPAT>(creator_tid).or_else(|| exec_skipped::<COMPAT>(creator_tid))
    else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    let (pid, tgid) = child.ids(off);
    // A child the tasks array cannot hold is counted as a tag failure by `slot::tag`.
    let tag = TaskTag { slot: creator.slot, tgid, start_ns: child.start_ns(off) };
    if slot::tag::<COMPAT>(pid, &tag) {
        events::emit(EVENT_FORK, creator.slot, |e| {
            e.pid = pid;
            e.tgid = tgid;
            e.parent = creator_tid;
        });
    }
    if slot::is_doomed(creator.slot) {
        slot::doom_current(creator.slot);
    }
    0
}
