//! `task_newtask`: every task the kernel creates for a tagged task is tagged before it ever
//! runs.
//!
//! The tracepoint fires at the end of `copy_process`, in the creating task (`current`), once
//! the new task has its pid, tgid and start time and before it is first woken, for every task
//! the kernel makes: processes, threads, `vfork`, `CLONE_PARENT`, and the io_uring workers
//! (io-wq and SQPOLL threads) that `create_io_thread` makes without passing through
//! `kernel_clone`, so without `sched_process_fork`. Nothing fails in `copy_process` after it.
use aya_ebpf::{bindings::task_struct, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracker_common::{EVENT_FORK, TaskTag};

use crate::{
    events,
    kernel::{Task, current_start_ns, current_tid, is_active, offsets},
    slot,
};

/// `clone` flags with which the new task's `real_parent` is not its creator.
const CLONE_PARENT: u64 = 0x0000_8000;
const CLONE_THREAD: u64 = 0x0001_0000;

#[btf_tracepoint(function = "task_newtask")]
pub fn trk_fork(ctx: BtfTracePointContext) -> u32 {
    fork::<false>(&ctx)
}

/// For kernels before 5.13 (see `slot`).
#[btf_tracepoint(function = "task_newtask")]
pub fn trk_fork_old(ctx: BtfTracePointContext) -> u32 {
    fork::<true>(&ctx)
}

#[inline(always)]
fn fork<const COMPAT: bool>(ctx: &BtfTracePointContext) -> u32 {
    let off = offsets();
    let child = Task::of(ctx.arg::<*mut task_struct>(0));
    let clone_flags: u64 = ctx.arg(1);
    // The creator is the current task. A new process's `real_parent` is it (copy_process), so
    // the untagged path of a fork is two loads and one array load, no helper call (each is a
    // call and a return, which the kernel's return-stack mitigations make dear); a thread, or
    // a `CLONE_PARENT` child, takes its creator's parent, so there a helper says who it is.
    let parent = (clone_flags & (CLONE_PARENT | CLONE_THREAD) == 0)
        .then(|| child.real_parent(off))
        .flatten();
    let creator_tid = parent.map_or_else(current_tid, |p| p.tid(off));
    if !slot::holds_live_tag(creator_tid) {
        return 0;
    }
    // A subprogram's arguments are registers the verifier must see set: no `Option` of a
    // pointer (its pointer half is unset for `None`), the child stands in for it instead.
    fork_tagged::<COMPAT>(child, parent.unwrap_or(child), parent.is_some(), creator_tid)
}

/// The fork of a task whose entry holds a tag (see `slot::holds_live_tag` for why apart).
/// The creator is `parent` if `known`, else the current task.
#[inline(never)]
fn fork_tagged<const COMPAT: bool>(
    child: Task,
    parent: Task,
    known: bool,
    creator_tid: u32,
) -> u32 {
    let off = offsets();
    let start_ns = || if known { Some(parent.start_ns(off)) } else { current_start_ns::<COMPAT>() };
    let Some(creator) = slot::live_tag(creator_tid, start_ns) else {
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
