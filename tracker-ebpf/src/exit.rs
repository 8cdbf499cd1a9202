//! `sched_process_exit`: a tagged task leaves its slot when it passes `do_exit`.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    kernel::{Task, current_tid, is_active, offsets},
    maps::TASKS,
    slot,
};

#[btf_tracepoint(function = "sched_process_exit")]
pub fn trk_exit(ctx: BtfTracePointContext) -> u32 {
    let tid = current_tid();
    // SAFETY: the value is copied out at once.
    let Some(tag) = (unsafe { TASKS.get(&tid) }).copied() else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    // Whoever removes the entry accounts for the exit, so it is counted once.
    if TASKS.remove(&tid).is_err() {
        return 0;
    }
    slot::task_left(tag.slot);
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff != 0 {
        let task = Task(ctx.arg(0));
        // exit_code holds the signal number in its low 7 bits when a signal ended the group.
        let by_signal = task
            .exit_code(&offsets())
            .is_some_and(|code| code & 0x7f != 0);
        slot::with_counters(tag.slot, |c| {
            c.procs_exited += 1;
            if by_signal {
                c.exits_by_signal += 1;
            }
        });
    }
    0
}
