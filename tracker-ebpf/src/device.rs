//! `cgroup_device` on the instance's cgroup v2 directory: a slot may not open the devices on
//! its deny-list (`--deny-device`, e.g. to hide GPUs); the open fails with EPERM.
use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id, macros::cgroup_device, programs::DeviceContext,
};
use tracker_common::{ANY_MINOR, DeviceKey};

use crate::{
    kernel::current_tid,
    maps::{CGROUP_SLOTS, DENY_DEV},
    slot,
};

/// The slot is the current task's tag: it holds wherever the task is below the instance's
/// directory.
#[cgroup_device]
pub fn trk_device(ctx: DeviceContext) -> i32 {
    verdict(&ctx, slot::current_slot(current_tid()))
}

/// For kernels whose device programs may not call `bpf_get_current_pid_tgid` (5.15 refuses
/// it; 6.1 allows it): the slot is the one whose cgroup the task is in, so a task that moved
/// to another cgroup below the instance's directory is held by that cgroup's list instead.
#[cgroup_device]
pub fn trk_device_cg(ctx: DeviceContext) -> i32 {
    // SAFETY: a helper call without arguments.
    let id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is copied out at once.
    verdict(&ctx, unsafe { CGROUP_SLOTS.get(&id) }.copied())
}

/// 0 (refuse) when the device is on `slot`'s deny-list, else 1.
#[inline(always)]
fn verdict(ctx: &DeviceContext, slot: Option<u32>) -> i32 {
    let Some(slot) = slot else { return 1 };
    // SAFETY: the context the kernel passes.
    let (major, minor) = unsafe { ((*ctx.device).major, (*ctx.device).minor) };
    let exact = DeviceKey { slot, major, minor };
    let any = DeviceKey { slot, major, minor: ANY_MINOR };
    if DENY_DEV.get_ptr(&exact).is_some() || DENY_DEV.get_ptr(&any).is_some() {
        return 0;
    }
    1
}
