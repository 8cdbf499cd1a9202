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
    kernel::{Task, current_tid, is_active, offsets},
    slot,
};

#[btf_tracepoint(function = "task_newtask")]
pub fn trk_fork(ctx: BtfTracePointContext) -> u32 {
    // The untagged path, which every task creation on the machine takes, is one array load.
    let Some(parent) = slot::current_tag(current_tid()) else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    let child: *mut task_struct = ctx.arg(0);
    let off = offsets();
    let task = Task::of(child);
    let (pid, tgid) = task.ids(&off);
    // A child the tasks array cannot hold is counted as a tag failure by `slot::tag`.
    if slot::tag(pid, &TaskTag { slot: parent.slot, tgid, start_ns: task.start_ns(&off) }) {
        events::emit(EVENT_FORK, parent.slot, |e| {
            e.pid = pid;
            e.tgid = tgid;
            e.parent = current_tid();
        });
    }
    if slot::is_doomed(parent.slot) {
        slot::doom_current(parent.slot);
    }
    0
}
