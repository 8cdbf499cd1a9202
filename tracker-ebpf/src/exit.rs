//! `sched_process_exit`: a tagged task leaves its slot when it passes `do_exit`, before its
//! pid can be reused.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    kernel::{Task, current_task, current_tid, is_active, offsets},
    slot,
};

#[btf_tracepoint(function = "sched_process_exit")]
pub fn trk_exit(ctx: BtfTracePointContext) -> u32 {
    let tid = current_tid();
    let Some(tag) = slot::current_tag(tid) else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    slot::untag(tid, tag.slot);
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff != 0 {
        // exit_code holds the signal number in its low 7 bits when a signal ended the group.
        let code = Task::of(current_task()).exit_code(&offsets());
        let by_signal = code.is_some_and(|code| code & 0x7f != 0);
        slot::with_counters(tag.slot, |c| {
            c.procs_exited += 1;
            if by_signal {
                c.exits_by_signal += 1;
            }
        });
    }
    0
}
