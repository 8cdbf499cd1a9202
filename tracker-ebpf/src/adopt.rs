//! A task iterator that tags an existing process and all its descendants, run on demand by
//! user space (`tracker adopt`, and `tracker run` for its first task).
//!
//! The iterator runs in the context of the process reading it, so the request is keyed by the
//! reader's tid. It writes one `AdoptRecord` per task it tagged. A task forked by a not-yet-
//! tagged parent while the iteration runs may be missed; user space runs the iterator until a
//! run tags nothing, and after the first run every parent is tagged. User space also runs one
//! adoption at a time, so that two never tag the same task at once.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use tracker_common::{AdoptRecord, PF_EXITING, PF_KTHREAD, TASK_NEW, TaskTag};

use crate::{
    kernel::{IterTaskCtx, Task, current_tid, offsets, seq_write},
    maps::{ADOPT, TASKS},
    slot,
};

/// Deep enough for any real process tree; the walk also stops at the root.
const MAX_DEPTH: u32 = 64;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn trk_adopt(ctx: *mut IterTaskCtx) -> i32 {
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
    let Some((tid, tgid)) = task.ids(&off) else {
        return 0;
    };
    // The process running the adoption is never tagged, even when it adopts its own parent
    // (as a Slurm task does through `tracker adopt JOB $PPID`).
    if u64::from(tgid) == bpf_get_current_pid_tgid() >> 32 {
        return 0;
    }
    // Kernel threads are not jobs. A task that is exiting may be past its exit program, which
    // would leave its tag behind; a new task (TASK_NEW) is the fork program's to tag.
    if task.flags(&off).is_none_or(|f| f & (PF_KTHREAD | PF_EXITING) != 0)
        || task.state(&off).is_none_or(|s| s & TASK_NEW != 0)
    {
        return 0;
    }
    let Some(start_ns) = task.start_ns(&off) else {
        return 0;
    };
    let tagged = TASKS.get(tid).is_some_and(|t| t.slot != 0 && t.start_ns == start_ns);
    if tagged || !descends_from(task, req.target_tgid) {
        return 0;
    }
    let tag = TaskTag { slot: req.slot, tgid, start_ns };
    if !slot::tag(tid, &tag) {
        return 0;
    }
    // SAFETY: `meta` is the iterator's metadata.
    seq_write(unsafe { (*meta).seq }, &AdoptRecord { tid, tgid, start_ns });
    0
}

/// Whether `task` belongs to thread group `target` or has it among its ancestors.
#[inline(always)]
fn descends_from(task: Task, target: u32) -> bool {
    let off = offsets();
    let mut cur = task;
    for _ in 0..MAX_DEPTH {
        match cur.tgid(&off) {
            Some(t) if t == target => return true,
            Some(_) => {}
            None => return false,
        }
        match cur.real_parent(&off) {
            Some(p) if p.0 != cur.0 => cur = p,
            _ => return false,
        }
    }
    false
}
