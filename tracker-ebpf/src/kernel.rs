//! Reading kernel structures at offsets resolved from the running kernel's BTF, and the
//! generation gate that makes program upgrades count every event exactly once.
use aya_ebpf::{
    bindings::task_struct,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, generated::bpf_get_current_task_btf,
    },
};

use tracker_common::KernelOffsets;

use crate::maps::CONFIG;

/// Set by the loader from `/sys/kernel/btf/vmlinux`; `.rodata`, so the verifier sees constants.
#[unsafe(no_mangle)]
static TRK_OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_flags: 0,
    task_real_parent: 0,
    task_start_boottime: 0,
    task_exit_code: 0,
    task_state: 0,
    _reserved: [0; 9],
};

/// This object's generation, set by the loader.
#[unsafe(no_mangle)]
static TRK_GENERATION: u64 = 0;

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a plain read of a global; volatile so that the compiler does not fold the
    // placeholder values above into the code.
    unsafe { core::ptr::read_volatile(&TRK_OFFSETS) }
}

/// Whether this object's programs are the live ones (see `tracker_common::Config`).
#[inline(always)]
pub fn is_active() -> bool {
    // SAFETY: as in `offsets`.
    let generation = unsafe { core::ptr::read_volatile(&TRK_GENERATION) };
    CONFIG.get(0).is_some_and(|c| c.active_generation == generation)
}

/// The current task.
#[inline(always)]
pub fn current_task() -> *mut task_struct {
    // SAFETY: a helper without arguments; never NULL in process context.
    unsafe { bpf_get_current_task_btf() }
}

#[inline(always)]
pub fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// A `task_struct` pointer, as handed to us by a BTF tracepoint or an iterator.
#[derive(Clone, Copy)]
pub struct Task(pub *const u8);

impl Task {
    pub fn of(p: *mut task_struct) -> Self {
        Self(p.cast_const().cast())
    }
}

impl Task {
    #[inline(always)]
    fn read<T>(self, offset: u32) -> Option<T> {
        // SAFETY: bpf_probe_read_kernel copes with any address; a fault is an Err.
        unsafe { bpf_probe_read_kernel(self.0.add(offset as usize).cast::<T>()).ok() }
    }

    /// `(pid, tgid)`, read at once: the loader checks that `tgid` follows `pid`.
    #[inline(always)]
    pub fn ids(self, off: &KernelOffsets) -> Option<(u32, u32)> {
        let both: u64 = self.read(off.task_pid)?;
        Some((both as u32, (both >> 32) as u32))
    }

    #[inline(always)]
    pub fn tgid(self, off: &KernelOffsets) -> Option<u32> {
        self.read(off.task_tgid)
    }

    #[inline(always)]
    pub fn flags(self, off: &KernelOffsets) -> Option<u32> {
        self.read(off.task_flags)
    }

    #[inline(always)]
    pub fn start_ns(self, off: &KernelOffsets) -> Option<u64> {
        self.read(off.task_start_boottime)
    }

    #[inline(always)]
    pub fn exit_code(self, off: &KernelOffsets) -> Option<u32> {
        self.read(off.task_exit_code)
    }

    #[inline(always)]
    pub fn state(self, off: &KernelOffsets) -> Option<u32> {
        self.read(off.task_state)
    }

    #[inline(always)]
    pub fn real_parent(self, off: &KernelOffsets) -> Option<Task> {
        let p: *const u8 = self.read(off.task_real_parent)?;
        (!p.is_null()).then_some(Task(p))
    }
}
