//! `sched_process_free`: a task's CPU time is final when it is freed, and what its exit did not
//! harvest is harvested here (see `harvest.rs`). The kernel frees a task
//! (`delayed_put_task_struct`, an RCU callback) once both `release_task` and its final context
//! switch have dropped their reference (`rcu_users`), so its last running slice is counted,
//! which for a process that lives a millisecond is a good part of its life. It runs once
//! per task, where a `sched_switch` program ran at every context switch of the machine; while
//! no tagged task awaits its free, every task returns after reading one count, and otherwise
//! every task but an exited tagged one after its tid and one array load.
use aya_ebpf::{bindings::task_struct, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracker_common::KF_PREEMPTIBLE_TP;

use crate::{
    harvest,
    kernel::{Task, is_active, offsets},
    slot,
};

#[btf_tracepoint(function = "sched_process_free")]
pub fn trk_free(ctx: BtfTracePointContext) -> u32 {
    free::<false>(&ctx)
}

/// For kernels before 5.13 (see `slot`).
#[btf_tracepoint(function = "sched_process_free")]
pub fn trk_free_old(ctx: BtfTracePointContext) -> u32 {
    free::<true>(&ctx)
}

#[inline(always)]
fn free<const COMPAT: bool>(ctx: &BtfTracePointContext) -> u32 {
    // No tagged task is between its exit and its free: this is not one, and its task
    // structure, cold here, is not read at all.
    if slot::no_pending_free() {
        return 0;
    }
    let off = offsets();
    let p: *mut task_struct = ctx.arg(0);
    let task = Task::of(p);
    // The task is cold here (freed a grace period after it ran): its tid first, the rest only
    // for an exited entry, so the untagged path is one field of it and one array load.
    let tid = task.tid(off);
    // A leader that exited while another thread exec'd is freed under that thread's old tid
    // (`de_thread` swapped their pids); its entry is there unless the exec program has not
    // moved it yet from the group's tid (see `slot::exec_by_thread`). The start time tells
    // it from the group's other entries.
    if slot::holds_exited_tag(tid) {
        return free_tagged::<COMPAT>(task, tid);
    }
    let tgid = task.tgid(off);
    if tid != tgid && slot::holds_exited_tag(tgid) {
        // Where runs may be skipped (`KF_PREEMPTIBLE_TP`), a live tag of the group under the
        // leader's tid now is the exec'ing thread's, which the exec program did not move.
        if off.features & KF_PREEMPTIBLE_TP != 0 && slot::holds_live_tag(tid) {
            return free_after_skipped_exec::<COMPAT>(task, tid, tgid);
        }
        return free_tagged::<COMPAT>(task, tid);
    }
    0
}

/// The free of a leader whose group's exec from another thread the exec program did not
/// follow (a kernel that skipped its run): the leader is freed under the thread's old tid
/// (`tid`, where `de_thread` put it), and the thread's tag is still there while the group's
/// tid holds the leader's exited entry. The move the exec program makes is made here, with
/// the leader's start time, which the thread took: the thread's tag goes to the group's tid
/// and the leader's exited entry to `tid`, whose free this is. It may also run before the
/// exec program, whose run then finds the tag moved (see `exec.rs`). Until this free, the
/// thread's forks take its slot from the leader's exited entry (`fork.rs`'s `exec_skipped`).
#[inline(never)]
fn free_after_skipped_exec<const COMPAT: bool>(task: Task, tid: u32, tgid: u32) -> u32 {
    if !is_active() {
        return 0;
    }
    let _ = slot::exec_by_thread::<COMPAT>(tid, tgid, tgid, task.start_ns(offsets()));
    free_tagged::<COMPAT>(task, tid)
}

/// Harvest the CPU time of `task` (tid `tid`) that its exit did not, whose exited tag is under
/// its tid or its group's (see `slot::holds_live_tag` for why apart).
#[inline(never)]
fn free_tagged<const COMPAT: bool>(task: Task, tid: u32) -> u32 {
    let off = offsets();
    let Some((slot, done)) = slot::finish::<COMPAT>(tid, task).or_else(|| {
        let tgid = task.tgid(off);
        if tid != tgid { slot::finish::<COMPAT>(tgid, task) } else { None }
    }) else {
        return 0;
    };
    let (user, system) = harvest::rest(done, task.cpu(off));
    slot::count_finished(slot, |c| {
        slot::add(&mut c.cpu_user_ns, user);
        slot::add(&mut c.cpu_system_ns, system);
    });
    0
}
