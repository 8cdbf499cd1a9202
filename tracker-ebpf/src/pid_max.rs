//! `cgroup/sysctl` on the cgroup v2 root: refuse a write of `kernel.pid_max` above what the
//! tasks array can tag.
//!
//! The tasks array has one entry per tid, sized to `pid_max` at load; an array cannot grow, and
//! a task whose tid is past its end could not be tagged (its slot would lose it). So the limit
//! is kept where the array can follow it: the writer gets EPERM (`sysctl: permission denied`),
//! the refusal is counted (`pid_max_refused`, shown by `tracker status` and the metrics), and
//! reloading the tracker after `tracker unload` sizes the array to a new limit. Attached to the
//! root, the guard holds for every process of the machine: programs attached to a descendant
//! run in addition to it, never instead.
use aya_ebpf::{
    helpers::generated::{bpf_strtoul, bpf_sysctl_get_name, bpf_sysctl_get_new_value},
    macros::cgroup_sysctl,
    programs::SysctlContext,
};

use crate::maps::GLOBAL;

/// Set by the loader: the tasks array's number of entries.
#[unsafe(no_mangle)]
static TRK_TASKS_CAPACITY: u64 = 0;

const PID_MAX: &[u8; 14] = b"kernel/pid_max";
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[cgroup_sysctl]
pub fn trk_pid_max(ctx: SysctlContext) -> i32 {
    // SAFETY: the context the kernel passes.
    if unsafe { (*ctx.sysctl).write } == 0 {
        return ALLOW;
    }
    let mut name = [0u8; 16];
    // SAFETY: a helper writing into a local buffer of the size given.
    let len = unsafe { bpf_sysctl_get_name(ctx.sysctl, name.as_mut_ptr().cast(), 16, 0) };
    if len != PID_MAX.len() as i64 {
        return ALLOW;
    }
    let mut i = 0;
    while i < PID_MAX.len() {
        if name[i] != PID_MAX[i] {
            return ALLOW;
        }
        i += 1;
    }
    let mut value = [0u8; 32];
    // SAFETY: as above; the value is NUL-terminated within the buffer, or the call fails.
    let len = unsafe {
        bpf_sysctl_get_new_value(ctx.sysctl, value.as_mut_ptr().cast(), value.len() as u64)
    };
    if len < 0 {
        // Longer than any number that fits: refuse rather than guess.
        return refuse();
    }
    let mut wanted: u64 = 0;
    // SAFETY: parses the local buffer into a local.
    let parsed =
        unsafe { bpf_strtoul(value.as_ptr().cast(), value.len() as u64, 0, &raw mut wanted) };
    if parsed < 0 {
        // Not a number: the kernel refuses it itself.
        return ALLOW;
    }
    // SAFETY: a plain read of a global; volatile so that the placeholder is not folded in.
    let capacity = unsafe { core::ptr::read_volatile(&TRK_TASKS_CAPACITY) };
    // pid_max is one past the highest pid: the array takes every tid below its length.
    if wanted > capacity {
        return refuse();
    }
    ALLOW
}

#[inline(always)]
fn refuse() -> i32 {
    if let Some(g) = GLOBAL.get_ptr_mut(0) {
        // SAFETY: a per-CPU value, only touched by this CPU.
        unsafe { (*g).pid_max_refused += 1 };
    }
    REFUSE
}
