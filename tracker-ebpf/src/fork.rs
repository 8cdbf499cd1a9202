//! `sched_process_fork`: the child of a tagged task is tagged before it ever runs.
//!
//! The tracepoint fires in the forking task (`current`), after the child is complete and
//! before it is woken, for processes, threads, `vfork` and `CLONE_PARENT` alike.
use aya_ebpf::{bindings::BPF_NOEXIST, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracker_common::TaskTag;

use crate::{
    kernel::{Task, current_tid, is_active, offsets},
    maps::TASKS,
    slot,
};

const EEXIST: i64 = 17;

#[btf_tracepoint(function = "sched_process_fork")]
pub fn trk_fork(ctx: BtfTracePointContext) -> u32 {
    // The untagged path, which every fork on the machine takes, is this one lookup.
    // SAFETY: the value is copied out at once.
    let Some(parent) = (unsafe { TASKS.get(&current_tid()) }).copied() else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    let off = offsets();
    let child = Task(ctx.arg(1));
    let slot = parent.slot;
    match (child.ids(&off), child.start_ns(&off)) {
        (Some((pid, tgid)), Some(start_ns)) => {
            let tag = TaskTag {
                slot,
                tgid,
                start_ns,
            };
            match TASKS.insert(&pid, &tag, u64::from(BPF_NOEXIST)) {
                Ok(()) => slot::task_entered(slot, pid == tgid),
                // Tagged already (by the adopt iterator racing with us): nothing to count.
                Err(e) if -i64::from(e) == EEXIST => {}
                Err(_) => slot::tag_failed(slot),
            }
        }
        _ => slot::tag_failed(slot),
    }
    if slot::is_doomed(slot) {
        slot::doom_current(slot);
    }
    0
}
