//! A task iterator that reports what the live tagged tasks hold now (CPU, I/O, faults, and for
//! each process its resident memory and peak), run on demand by `tracker stat` and friends;
//! and, with the same records, which tasks a slot has (`ps`, `kill`, `signal`): its cost is in
//! proportion to the tasks of the machine, not to pid_max. With the harvest of exited tasks
//! in the per-slot counters, one read gives a slot's whole usage, live and exited together,
//! never an old sample.
//!
//! An exited task that is not freed yet (a zombie its parent has not reaped: the kernel frees
//! a task only after `release_task`) has the rest of its CPU time still to be harvested
//! (`free.rs`): that rest is reported too, marked, so that it counts however long its parent
//! takes.
use tracker_common::{TAG_EXITED, USAGE_EXITED, USAGE_LEADER, UsageRecord};

use crate::{
    harvest,
    kernel::{IterTaskCtx, Task, current_tid, offsets, seq_write},
    maps::{TASKS, USAGE},
};

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn trk_usage(ctx: *mut IterTaskCtx) -> i32 {
    // SAFETY: the kernel passes a valid context; `task` is NULL on the final call.
    let (meta, task) = unsafe { ((*ctx).meta, (*ctx).task) };
    if task.is_null() {
        return 0;
    }
    // SAFETY: the value is copied out at once.
    let Some(want) = (unsafe { USAGE.get(&current_tid()) }).map(|r| r.slot) else {
        return 0;
    };
    let off = offsets();
    let task = Task::of(task);
    let (tid, tgid) = task.ids(off);
    let Some(tag) = TASKS.get(tid).copied() else {
        return 0;
    };
    let slot = tag.slot & !TAG_EXITED;
    if slot == 0 || (want != 0 && slot != want) || task.start_ns(off) != tag.start_ns {
        return 0;
    }
    let (sum_exec_ns, utime_ns, stime_ns) = task.cpu(off);
    if tag.slot & TAG_EXITED != 0 {
        let rec = UsageRecord {
            tid,
            tgid,
            slot,
            flags: USAGE_EXITED,
            start_ns: tag.start_ns,
            // What its exit did not harvest.
            sum_exec_ns: sum_exec_ns.saturating_sub(harvest::recorded(tid)),
            utime_ns,
            stime_ns,
            ..Default::default()
        };
        // SAFETY: `meta` is the iterator's metadata.
        seq_write(unsafe { (*meta).seq }, &rec);
        return 0;
    }
    let (min_flt, maj_flt) = task.faults(off);
    let mut rec = UsageRecord {
        tid,
        tgid,
        slot,
        start_ns: tag.start_ns,
        sum_exec_ns,
        utime_ns,
        stime_ns,
        io: task.io(off),
        min_flt,
        maj_flt,
        ..Default::default()
    };
    if tid == tgid
        && let Some(mm) = task.mm(off)
    {
        rec.flags = USAGE_LEADER;
        rec.rss_bytes = mm.rss_bytes(off);
        rec.hiwater_rss_bytes = mm.hiwater_bytes(off).max(rec.rss_bytes);
    }
    // SAFETY: `meta` is the iterator's metadata.
    seq_write(unsafe { (*meta).seq }, &rec);
    0
}
