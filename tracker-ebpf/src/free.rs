//! `sched_process_free`: a task's CPU time is final when it is freed. The kernel frees a task
//! (`delayed_put_task_struct`, an RCU callback) once both `release_task` and its final
//! context switch have dropped their reference (`rcu_users`), so its last running slice is
//! counted, which for a process that lives a millisecond is most of its life. It runs once
//! per task, where a `sched_switch` program ran at every context switch of the machine; every
//! task but an exited tagged one returns after one array load.
use aya_ebpf::{bindings::task_struct, macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    kernel::{Task, offsets},
    slot,
};

#[btf_tracepoint(function = "sched_process_free")]
pub fn trk_free(ctx: BtfTracePointContext) -> u32 {
    let off = offsets();
    let p: *mut task_struct = ctx.arg(0);
    let task = Task::of(p);
    let Some((tid, tgid)) = task.ids(&off) else {
        return 0;
    };
    let Some(start) = task.start_ns(&off) else {
        return 0;
    };
    // A leader that exited while another thread exec'd is freed under that thread's old tid
    // (`de_thread` swapped their pids); its entry is there unless the exec program has not
    // moved it yet from the group's tid (see `slot::exec_by_thread`). The start time tells
    // it from the group's other entries.
    let Some(slot) = slot::finish(tid, start)
        .or_else(|| if tid != tgid { slot::finish(tgid, start) } else { None })
    else {
        return 0;
    };
    if let Some((sum, utime, stime)) = task.cpu(&off) {
        let (user, system) = split(sum, utime, stime);
        slot::with_counters(slot, |c| {
            c.cpu_user_ns += user;
            c.cpu_system_ns += system;
        });
    }
    0
}

/// Split the precise runtime `sum` between user and system in the proportion of the
/// tick-sampled `utime` and `stime`, as the kernel's `cputime_adjust` does; a task too short
/// to have been sampled counts as user time, as there. (Every division is checked: a panic
/// path would leave the program without an exit, which the verifier rejects.)
#[inline(always)]
pub fn split(sum: u64, utime: u64, stime: u64) -> (u64, u64) {
    if stime == 0 {
        return (sum, 0);
    }
    if utime == 0 {
        return (0, sum);
    }
    // system = sum * stime / total, in 20-bit fixed point so that nothing overflows 64 bits
    // (BPF has no 128-bit arithmetic): the ratio from microseconds (2^44 µs is 200 days).
    let (st, total) = if utime.saturating_add(stime) >= 1000 {
        (stime / 1000, utime.saturating_add(stime) / 1000)
    } else {
        (stime, utime + stime)
    };
    let ratio = (st << 20).checked_div(total).unwrap_or(0).min(1 << 20);
    let system = (sum >> 20) * ratio + (((sum & 0xf_ffff) * ratio) >> 20);
    (sum.saturating_sub(system), system.min(sum))
}
