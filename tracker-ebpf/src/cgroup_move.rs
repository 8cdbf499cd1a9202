//! `cgroup_attach_task`: a tagged task moved to a cgroup v2 directory that is not its slot's
//! (a root job leaving its cgroup). It stays tagged, and dies with its slot; the reader is
//! told, because the slot's cgroup limits no longer hold it.
use aya_ebpf::{bindings::task_struct, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracker_common::EVENT_LEFT_CGROUP;

use crate::{
    events,
    kernel::{Cgroup, Task, is_active, offsets},
    maps::CGROUP_SLOTS,
    slot,
};

#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn trk_cgroup_move(ctx: BtfTracePointContext) -> u32 {
    let task: *mut task_struct = ctx.arg(2);
    let off = offsets();
    let task = Task::of(task);
    let (pid, tgid) = task.ids(off);
    let Some(tag) = slot::tag_of(pid, task) else { return 0 };
    if !is_active() {
        return 0;
    }
    // Only the cgroup v2 hierarchy holds the slot directories we know by id.
    let Some(id) = Cgroup::of(ctx.arg::<*const u8>(0)).unified_id(off) else { return 0 };
    // SAFETY: the value is copied out at once.
    if (unsafe { CGROUP_SLOTS.get(&id) }).copied() == Some(tag.slot) {
        return 0;
    }
    events::emit(EVENT_LEFT_CGROUP, tag.slot, |e| {
        e.pid = pid;
        e.tgid = tgid;
        e.cgroup = id;
    });
    0
}
