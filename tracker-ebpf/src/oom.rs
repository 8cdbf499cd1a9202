//! `mark_victim`: the OOM killer chose a tagged task. The reader is told, so that a batch
//! system learns that its job was killed for memory, and by whom (the slot's own limit or the
//! whole machine running out).
use aya_ebpf::{bindings::task_struct, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracker_common::EVENT_OOM;

use crate::{
    events,
    kernel::{Task, is_active, offsets},
    slot,
};

#[btf_tracepoint(function = "mark_victim")]
pub fn trk_oom(ctx: BtfTracePointContext) -> u32 {
    let task = Task::of(ctx.arg::<*mut task_struct>(0));
    let off = offsets();
    let (pid, tgid) = task.ids(off);
    let Some(tag) = slot::tag_of(pid, task) else { return 0 };
    if !is_active() {
        return 0;
    }
    events::emit(EVENT_OOM, tag.slot, |e| {
        e.pid = pid;
        e.tgid = tgid;
        // The victim's name: the current task is whoever was allocating.
        e.comm = task.comm(off);
    });
    0
}
