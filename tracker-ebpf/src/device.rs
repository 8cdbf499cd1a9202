//! `cgroup_device` on the instance's cgroup v2 directory: a slot may not open the devices on
//! its deny-list (`--deny-device`, e.g. to hide GPUs); the open fails with EPERM.
use aya_ebpf::{macros::cgroup_device, programs::DeviceContext};
use tracker_common::{ANY_MINOR, DeviceKey};

use crate::{kernel::current_tid, maps::DENY_DEV, slot};

#[cgroup_device]
pub fn trk_device(ctx: DeviceContext) -> i32 {
    let Some(slot) = slot::current_slot(current_tid()) else { return 1 };
    // SAFETY: the context the kernel passes.
    let (major, minor) = unsafe { ((*ctx.device).major, (*ctx.device).minor) };
    let exact = DeviceKey { slot, major, minor };
    let any = DeviceKey { slot, major, minor: ANY_MINOR };
    if DENY_DEV.get_ptr(&exact).is_some() || DENY_DEV.get_ptr(&any).is_some() {
        return 0;
    }
    1
}
