//! A task iterator that tags an existing process and all its descendants, run on demand by
//! user space (`tracker adopt`, and `tracker run` for its first task).
//!
//! The iterator runs in the context of the process reading it, so the request is keyed by the
//! reader's tid and concurrent adopters do not need a lock. It writes one `AdoptRecord` per task
//! it tagged. A task forked by a not-yet-tagged parent while the iteration runs may be missed;
//! user space runs the iterator twice, and after the first run every parent is tagged.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_seq_write};
use tracker_common::{AdoptRecord, PF_KTHREAD, TaskTag};

use crate::{
    kernel::{Task, current_tid, offsets},
    maps::{ADOPT, TASKS},
    slot,
};

/// Deep enough for any real process tree; the walk also stops at the root.
const MAX_DEPTH: u32 = 64;

#[repr(C)]
struct IterMeta {
    seq: *mut aya_ebpf::bindings::seq_file,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__task`.
#[repr(C)]
pub struct IterTaskCtx {
    meta: *const IterMeta,
    task: *const u8,
}

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
    let task = Task(task);
    let Some((tid, tgid)) = task.ids(&off) else {
        return 0;
    };
    if task.flags(&off).is_none_or(|f| f & PF_KTHREAD != 0) {
        return 0;
    }
    if TASKS.get_ptr(&tid).is_some() || !descends_from(task, req.target_tgid) {
        return 0;
    }
    let Some(start_ns) = task.start_ns(&off) else {
        return 0;
    };
    let tag = TaskTag {
        slot: req.slot,
        tgid,
        start_ns,
    };
    if TASKS.insert(&tid, &tag, u64::from(BPF_NOEXIST)).is_err() {
        return 0;
    }
    slot::task_entered(req.slot, tid == tgid);
    let rec = AdoptRecord {
        tid,
        tgid,
        start_ns,
    };
    // SAFETY: `meta` is the iterator's metadata; the record is a plain local.
    unsafe {
        bpf_seq_write(
            (*meta).seq,
            (&raw const rec).cast(),
            core::mem::size_of::<AdoptRecord>() as u32,
        );
    }
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
