//! `sys_enter`, attached only while a slot is being killed: a task of a doomed slot dies at its
//! next system call, so it can neither fork nor exec nor do anything else to escape. A pending
//! SIGKILL also makes a fork already under way fail (`copy_process` checks for it).
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{kernel::current_tid, slot};

#[btf_tracepoint(function = "sys_enter")]
pub fn trk_doom(_ctx: BtfTracePointContext) -> u32 {
    doom::<false>()
}

/// For kernels before 5.13 (see `slot`).
#[btf_tracepoint(function = "sys_enter")]
pub fn trk_doom_old(_ctx: BtfTracePointContext) -> u32 {
    doom::<true>()
}

#[inline(always)]
fn doom<const COMPAT: bool>() -> u32 {
    // `current_tag` checks the start time, so a task that merely inherited a tid is spared.
    if let Some(tag) = slot::current_tag::<COMPAT>(current_tid())
        && slot::is_doomed(tag.slot)
    {
        slot::doom_current(tag.slot);
    }
    0
}
