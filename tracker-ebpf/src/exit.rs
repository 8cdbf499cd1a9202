//! `sched_process_exit`: a tagged task leaves its slot when it passes `do_exit`, before its
//! pid can be reused. Its I/O and page faults are final here and are harvested; its CPU time
//! is not (the running slice is not yet added): `switch.rs` harvests that at the task's final
//! context switch.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use tracker_common::EVENT_EXIT;

use crate::{
    events,
    kernel::{Task, current_task, current_tid, is_active, offsets},
    rss, slot,
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
    let off = offsets();
    let task = Task::of(current_task());
    let group_dead: u64 = ctx.arg(1);
    let group_dead = group_dead & 0xff != 0;
    // The event before the live count drops: a reader that sees the slot's count at 0 has
    // every exit event of it in the ring (see the user side's `Watcher::drain`).
    events::emit(EVENT_EXIT, tag.slot, |e| {
        e.pid = tid;
        e.tgid = tag.tgid;
        e.parent = u32::from(group_dead);
        e.code = task.exit_code(&off).unwrap_or(0);
    });
    slot::mark_exited(tid, tag.slot);
    let io = task.io(&off);
    let faults = task.faults(&off);
    // exit_code holds the signal number in its low 7 bits when a signal ended the group.
    let by_signal = group_dead && task.exit_code(&off).is_some_and(|code| code & 0x7f != 0);
    let maxrss =
        if group_dead { task.maxrss_pages(&off).unwrap_or(0) << off.page_shift } else { 0 };
    slot::with_counters(tag.slot, |c| {
        if let Some(io) = &io {
            c.io.add(io);
        }
        if let Some((min, maj)) = faults {
            c.min_flt += min;
            c.maj_flt += maj;
        }
        if group_dead {
            c.procs_exited += 1;
            if by_signal {
                c.exits_by_signal += 1;
            }
            if maxrss > c.max_rss_bytes {
                c.max_rss_bytes = maxrss;
            }
        }
    });
    if group_dead {
        rss::process_gone(tag.tgid);
    }
    0
}
