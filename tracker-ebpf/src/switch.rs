//! `sched_switch`: a dead task's final context switch, where its CPU time is final. Harvesting
//! at exit would miss the running slice, which for a process that lives a millisecond is most
//! of its life. Every context switch on the machine runs this program; all but the final ones
//! of dead tasks return on the first comparison, which reads only the program's arguments.
use aya_ebpf::{bindings::task_struct, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracker_common::{KF_SWITCH_PREV_STATE, TASK_DEAD};

use crate::{
    kernel::{Task, is_active, offsets},
    slot,
};

#[btf_tracepoint(function = "sched_switch")]
pub fn trk_switch(ctx: BtfTracePointContext) -> u32 {
    let off = offsets();
    let prev: *mut task_struct = ctx.arg(1);
    let task = Task::of(prev);
    // A constant of the frozen `.rodata`: before 5.18 the tracepoint has no `prev_state` (the
    // verifier would refuse reading it) and the task's own state is the same value here.
    let prev_state = if off.features & KF_SWITCH_PREV_STATE != 0 {
        let state: u64 = ctx.arg(3);
        state as u32
    } else {
        task.state(&off).unwrap_or(0)
    };
    if prev_state != TASK_DEAD || !is_active() {
        return 0;
    }
    let (Some((tid, _)), Some(start)) = (task.ids(&off), task.start_ns(&off)) else {
        return 0;
    };
    let Some(slot) = slot::finish(tid, start) else {
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
