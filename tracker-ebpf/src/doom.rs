//! `sys_enter`, attached only while a slot is being killed: a task of a doomed slot dies at its
//! next system call, so it can neither fork nor exec nor do anything else to escape. A pending
//! SIGKILL also makes a fork already under way fail (`copy_process` checks for it).
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{kernel::current_tid, maps::TASKS, slot};

#[btf_tracepoint(function = "sys_enter")]
pub fn trk_doom(_ctx: BtfTracePointContext) -> u32 {
    // SAFETY: the value is copied out at once.
    if let Some(tag) = (unsafe { TASKS.get(&current_tid()) }).copied()
        && slot::is_doomed(tag.slot)
    {
        slot::doom_current(tag.slot);
    }
    0
}
