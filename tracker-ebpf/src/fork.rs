//! `sched_process_fork`: the child of a tagged task is tagged before it ever runs.
//!
//! The tracepoint fires in the forking task (`current`), after the child is complete and
//! before it is woken, for processes, threads, `vfork` and `CLONE_PARENT` alike.
use aya_ebpf::{bindings::task_struct, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracker_common::{EVENT_FORK, TaskTag};

use crate::{
    events,
    kernel::{Task, current_tid, is_active, offsets},
    slot,
};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn trk_fork(ctx: BtfTracePointContext) -> u32 {
    // The untagged path, which every fork on the machine takes, is one array load.
    let Some(parent) = slot::current_tag(current_tid()) else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    let child: *mut task_struct = ctx.arg(1);
    let off = offsets();
    let task = Task::of(child);
    match (task.ids(&off), task.start_ns(&off)) {
        (Some((pid, tgid)), Some(start_ns)) => {
            if slot::tag(pid, &TaskTag { slot: parent.slot, tgid, start_ns }) {
                events::emit(EVENT_FORK, parent.slot, |e| {
                    e.pid = pid;
                    e.tgid = tgid;
                    e.parent = current_tid();
                });
            }
        }
        _ => slot::tag_failed(parent.slot),
    }
    if slot::is_doomed(parent.slot) {
        slot::doom_current(parent.slot);
    }
    0
}
