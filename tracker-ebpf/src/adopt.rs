//! A task iterator that tags an existing process and all its descendants, run on demand by
//! user space (`tracker adopt`, and `tracker run` for its first task).
//!
//! The iterator runs in the context of the process reading it, so the request is keyed by the
//! reader's tid. It writes one `AdoptRecord` per task it tagged. A pass tags the target's
//! threads and every task whose real parent is already tagged in the slot: no ancestor walk,
//! so no depth limit. A child met before its parent in a pass (tids wrap) is tagged by the
//! next; user space runs passes until one tags nothing, which a tree of any depth reaches (a
//! pass tags at least one level; `pid_max` bounds the tree). User space also runs one adoption
//! at a time, so that two never tag the same task at once.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use tracker_common::{AdoptRecord, PF_EXITING, PF_KTHREAD, TASK_NEW, TaskTag};

use crate::{
    kernel::{IterTaskCtx, Task, current_tid, offsets, seq_write},
    maps::{ADOPT, TASKS},
    slot,
};

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn trk_adopt(ctx: *mut IterTaskCtx) -> i32 {
    adopt::<false>(ctx)
}

/// For kernels before 5.13 (see `slot`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn trk_adopt_old(ctx: *mut IterTaskCtx) -> i32 {
    adopt::<true>(ctx)
}

#[inline(always)]
fn adopt<const COMPAT: bool>(ctx: *mut IterTaskCtx) -> i32 {
    // SAFETY: the kernel passes a valid context; `task` is NULL on the final call.
    let (meta, task) = unsafe { ((*ctx).meta, (*ctx).task) };
    if task.is_null() {
        return 0;
    }
    // SAFETY: the value is copied out at once.
    let Some(req) = (unsafe { ADOPT.get(&current_tid()) }).copied() else {
        return 0;
    };
    let off = offsets();
    let task = Task::of(task);
    let (tid, tgid) = task.ids(off);
    // The process running the adoption is never tagged, even when it adopts its own parent
    // (as a Slurm task does through `tracker adopt JOB $PPID`).
    if u64::from(tgid) == bpf_get_current_pid_tgid() >> 32 {
        return 0;
    }
    // Kernel threads are not jobs. A task that is exiting may be past its exit program, which
    // would leave its tag behind; a new task (TASK_NEW) is the fork program's to tag.
    if task.flags(off) & (PF_KTHREAD | PF_EXITING) != 0 || task.state(off) & TASK_NEW != 0 {
        return 0;
    }
    let start_ns = task.start_ns(off);
    let tagged = TASKS.get(tid).is_some_and(|t| t.slot != 0 && t.start_ns == start_ns);
    if tagged || (tgid != req.target_tgid && !parent_in_slot(task, req.slot)) {
        return 0;
    }
    let tag = TaskTag { slot: req.slot, tgid, start_ns };
    if !slot::tag::<COMPAT>(tid, &tag) {
        return 0;
    }
    // SAFETY: `meta` is the iterator's metadata.
    seq_write(unsafe { (*meta).seq }, &AdoptRecord { tid, tgid, start_ns });
    0
}

/// Whether `task`'s real parent (for a thread: its process's parent) is tagged in `slot`.
#[inline(always)]
fn parent_in_slot(task: Task, slot: u32) -> bool {
    let off = offsets();
    let Some(parent) = task.real_parent(off) else {
        return false;
    };
    let (ptid, _) = parent.ids(off);
    slot::tag_of(ptid, parent).is_some_and(|t| t.slot == slot)
}
