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
    kernel::{Task, current_task, is_active, offsets},
    slot,
};

/// `clone` flags with which the new task's `real_parent` is not its creator.
const CLONE_PARENT: u64 = 0x0000_8000;
const CLONE_THREAD: u64 = 0x0001_0000;

#[btf_tracepoint(function = "task_newtask")]
pub fn trk_fork(ctx: BtfTracePointContext) -> u32 {
    let off = offsets();
    let child = Task::of(ctx.arg::<*mut task_struct>(0));
    let clone_flags: u64 = ctx.arg(1);
    // The creator is the current task. A new process's `real_parent` is it (copy_process), so
    // the untagged path of a fork is two loads and one array load, no helper call (each is a
    // call and a return, which the kernel's return-stack mitigations make dear); a thread, or
    // a `CLONE_PARENT` child, takes its creator's parent, so there the helper says who it is.
    let creator = if clone_flags & (CLONE_PARENT | CLONE_THREAD) == 0 {
        child.real_parent(off).unwrap_or_else(|| Task::of(current_task()))
    } else {
        Task::of(current_task())
    };
    let creator_tid = creator.tid(off);
    if !slot::holds_live_tag(creator_tid) {
        return 0;
    }
    fork_tagged(child, creator, creator_tid)
}

/// The fork of a task whose entry holds a tag (see `slot::holds_live_tag` for why apart).
#[inline(never)]
fn fork_tagged(child: Task, creator: Task, creator_tid: u32) -> u32 {
    let off = offsets();
    let Some((parent, _)) = slot::live_tag(creator_tid, || creator) else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    let (pid, tgid) = child.ids(off);
    // A child the tasks array cannot hold is counted as a tag failure by `slot::tag`.
    if slot::tag(pid, &TaskTag { slot: parent.slot, tgid, start_ns: child.start_ns(off) }) {
        events::emit(EVENT_FORK, parent.slot, |e| {
            e.pid = pid;
            e.tgid = tgid;
            e.parent = creator_tid;
        });
    }
    if slot::is_doomed(parent.slot) {
        slot::doom_current(parent.slot);
    }
    0
}
