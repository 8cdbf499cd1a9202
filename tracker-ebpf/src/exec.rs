//! `sched_process_exec`: count execs, keep the tag on the right tid, and kill a doomed exec.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use tracker_common::EVENT_EXEC;

use crate::{
    events,
    kernel::{current_tid, is_active},
    slot,
};

#[btf_tracepoint(function = "sched_process_exec")]
pub fn trk_exec(ctx: BtfTracePointContext) -> u32 {
    // A thread that is not the leader takes the leader's pid when it execs: `old_pid` is the
    // tid it had, under which its tag still is.
    let old_pid: u64 = ctx.arg(1);
    let old_tid = old_pid as u32;
    let Some(tag) = slot::current_tag(old_tid) else {
        return 0;
    };
    if !is_active() {
        return 0;
    }
    let tid = current_tid();
    if old_tid != tid {
        slot::retag(old_tid, tid, &tag);
    }
    slot::with_counters(tag.slot, |c| c.execs += 1);
    events::emit(EVENT_EXEC, tag.slot, |e| {
        e.pid = tid;
        e.tgid = tag.tgid;
    });
    if slot::is_doomed(tag.slot) {
        slot::doom_current(tag.slot);
    }
    0
}
