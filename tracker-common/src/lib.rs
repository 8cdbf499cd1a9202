//! Types shared by the tracker's kernel programs and its user space.
//!
//! Everything here crosses the user/kernel boundary through BPF maps or globals, so every type
//! is `#[repr(C)]`, made of fixed-width integers with explicit padding, and its size and field
//! offsets are asserted at compile time: a change that moves a field fails the build instead of
//! silently corrupting the pinned maps of a running tracker.
#![no_std]

use core::mem::{offset_of, size_of};

/// Map names, which are also the file names of the pins under `<bpffs dir>/maps/`.
pub mod map_name {
    /// `tid -> TaskTag`, an array sized to `pid_max` (slot 0: untagged), mmapable: what every
    /// program checks on every call, and what user space scans to list a slot's tasks.
    pub const TASKS: &str = "TRK_TASKS";
    /// `slot id -> SlotControl`: flags and shared (atomic) per-slot values.
    pub const SLOTS: &str = "TRK_SLOTS";
    /// `slot id -> SlotCounters`, per CPU.
    pub const COUNTERS: &str = "TRK_COUNTERS";
    /// `requester tid -> AdoptRequest`: input of the adopt iterator.
    pub const ADOPT: &str = "TRK_ADOPT";
    /// `0 -> Config`: the active program generation.
    pub const CONFIG: &str = "TRK_CONFIG";
    /// `0 -> GlobalCounters`, per CPU.
    pub const GLOBAL: &str = "TRK_GLOBAL";
}

/// Names of the globals the loader sets before loading.
pub mod global_name {
    pub const OFFSETS: &str = "TRK_OFFSETS";
    pub const GENERATION: &str = "TRK_GENERATION";
}

/// Slot id 0 is never allocated: a zeroed tag means "no slot".
pub const NO_SLOT: u32 = 0;

/// `SlotControl::flags`: the slot exists.
pub const SLOT_ACTIVE: u32 = 1 << 0;
/// `SlotControl::flags`: the slot is being killed; its tasks may not fork, exec or make syscalls.
pub const SLOT_DOOMED: u32 = 1 << 1;

/// `PF_KTHREAD` from `include/linux/sched.h`: kernel threads are never adopted.
pub const PF_KTHREAD: u32 = 0x0020_0000;
/// `PF_EXITING`: a task in `do_exit` is never adopted (its exit may already be past).
pub const PF_EXITING: u32 = 0x0000_0004;
/// `TASK_NEW` (`task_struct.__state`): a child between `copy_process` and its first wake-up,
/// which the fork program tags; the adopt iterator leaves it alone so they never both do.
pub const TASK_NEW: u32 = 0x0000_0800;
/// `BPF_F_MMAPABLE`: user space maps the tasks array to scan it without a syscall per entry.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

pub const SIGKILL: u32 = 9;

/// The kernel's record that a task belongs to a slot, at index `tid` of the tasks array.
///
/// `start_ns` is the task's `start_boottime`, so that `(tid, start_ns)` names one task for ever:
/// an entry whose start does not match the task now holding the tid is stale and ignored, and
/// user space matches it against `/proc/<pid>/stat` field 22.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskTag {
    pub slot: u32,
    pub tgid: u32,
    pub start_ns: u64,
}

/// Per-slot state shared by all CPUs. `live_tasks` is changed with atomic adds in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotControl {
    pub flags: u32,
    pub _pad0: u32,
    /// Tasks tagged now (threads included).
    pub live_tasks: u64,
    /// High-water mark of `live_tasks`.
    pub peak_tasks: u64,
    /// Bumped by user space each time the slot id is (re)used, so stale state is recognisable.
    pub generation: u64,
}

/// Per-slot, per-CPU counters. User space sums (or, for `*_max` fields, maxes) over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounters {
    /// Tasks that entered the slot (fork, clone of a thread, adoption).
    pub tasks_started: u64,
    /// Tasks of the slot that passed `do_exit`.
    pub tasks_exited: u64,
    /// Thread-group leaders among `tasks_started` (processes).
    pub procs_started: u64,
    /// Processes of the slot whose last thread passed `do_exit`.
    pub procs_exited: u64,
    /// Successful `execve`s by tasks of the slot.
    pub execs: u64,
    /// Processes whose last thread died of a signal.
    pub exits_by_signal: u64,
    /// Tasks killed in the kernel because they forked, exec'd or made a syscall while doomed.
    pub doom_kills: u64,
    /// Children of a tagged task that could not be tagged (the tasks map refused the insert).
    pub tag_failures: u64,
    pub _reserved: [u64; 8],
}

/// Machine-wide counters of the tracker itself, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounters {
    pub tag_failures: u64,
    pub _reserved: [u64; 7],
}

/// Which program generation is live. Programs of another generation return at once, so an
/// upgrade can attach the new programs before detaching the old ones without counting twice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub active_generation: u64,
}

/// A request to the adopt iterator, keyed by the tid of the process that runs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdoptRequest {
    /// Adopt this process and every task whose ancestry reaches it.
    pub target_tgid: u32,
    pub slot: u32,
}

/// One record written by the adopt iterator for each task it tagged.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdoptRecord {
    pub tid: u32,
    pub tgid: u32,
    pub start_ns: u64,
}

/// Byte offsets of the kernel fields the programs read, resolved by user space from the running
/// kernel's BTF (`/sys/kernel/btf/vmlinux`) and set as a global before loading. Rust eBPF has no
/// CO-RE relocations, so this is what keeps the programs right on another kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.pid`; `tgid` must directly follow it (checked by user space).
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_flags: u32,
    pub task_real_parent: u32,
    pub task_start_boottime: u32,
    pub task_exit_code: u32,
    pub task_state: u32,
    pub _reserved: [u32; 9],
}

/// Assert at compile time that `$ty` has size `$size` and each field its expected offset.
macro_rules! assert_layout {
    ($ty:ty, $size:expr $(, $field:ident = $off:expr)* $(,)?) => {
        const _: () = assert!(size_of::<$ty>() == $size);
        $(const _: () = assert!(offset_of!($ty, $field) == $off);)*
    };
}

assert_layout!(TaskTag, 16, slot = 0, tgid = 4, start_ns = 8);
assert_layout!(SlotControl, 32, flags = 0, live_tasks = 8, peak_tasks = 16, generation = 24);
assert_layout!(
    SlotCounters,
    128,
    tasks_started = 0,
    tasks_exited = 8,
    procs_started = 16,
    procs_exited = 24,
    execs = 32,
    exits_by_signal = 40,
    doom_kills = 48,
    tag_failures = 56,
);
assert_layout!(GlobalCounters, 64, tag_failures = 0);
assert_layout!(Config, 8, active_generation = 0);
assert_layout!(AdoptRequest, 8, target_tgid = 0, slot = 4);
assert_layout!(AdoptRecord, 16, tid = 0, tgid = 4, start_ns = 8);
assert_layout!(
    KernelOffsets,
    64,
    task_pid = 0,
    task_tgid = 4,
    task_flags = 8,
    task_real_parent = 12,
    task_start_boottime = 16,
    task_exit_code = 20,
    task_state = 24,
);

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is `#[repr(C)]`, made only of integers, with explicit padding, so every
    // bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::TaskTag {}
    unsafe impl aya::Pod for super::SlotControl {}
    unsafe impl aya::Pod for super::SlotCounters {}
    unsafe impl aya::Pod for super::GlobalCounters {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::AdoptRequest {}
    unsafe impl aya::Pod for super::AdoptRecord {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
