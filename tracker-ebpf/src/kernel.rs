//! Reading kernel structures at offsets resolved from the running kernel's BTF, and the
//! generation gate that makes program upgrades count every event exactly once.
//!
//! Fields are read with plain loads, not `bpf_probe_read_kernel`: the pointers are typed
//! (BTF) and the offsets constants of the frozen `.rodata`, so the verifier checks that each
//! access lies within a field of the kernel's own type, and the JIT makes it a load that reads
//! 0 where it would fault. A helper call and its copy cost more than the rest of a program's
//! work. The verifier does not check that an offset is the intended field (one that lands on
//! another field of the same size loads): user space's `btf.rs` resolves every offset by name
//! and checks its size against the running kernel's BTF, and that is the guarantee.
use aya_ebpf::{
    bindings::{seq_file, task_struct},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task, bpf_get_current_task_btf, bpf_seq_write},
    },
};
use tracker_common::{IoCounters, KF_RSS_ATOMIC, KernelOffsets};

use crate::maps::CONFIG;

/// Set by the loader from `/sys/kernel/btf/vmlinux`; `.rodata`, so the verifier sees constants.
#[unsafe(no_mangle)]
static TRK_OFFSETS: KernelOffsets = KernelOffsets::zeroed();

/// This object's generation, set by the loader.
#[unsafe(no_mangle)]
static TRK_GENERATION: u64 = 0;

/// The offsets, by reference: each program loads only the fields it uses, where it uses them
/// (a copy of the whole table cost every program, on its untagged path too, some fifty loads
/// and stores). The pointer goes through a volatile read, so the compiler cannot fold the
/// placeholder values above into the code; the verifier still sees a pointer into the frozen
/// `.rodata`, so each field loaded is a constant to it.
#[inline(always)]
pub fn offsets() -> &'static KernelOffsets {
    let p: &'static KernelOffsets = &TRK_OFFSETS;
    // SAFETY: a volatile read of a local reference; the result is that same reference.
    unsafe { core::ptr::read_volatile(&raw const p) }
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

/// The start time of the current task. The programs' builds for kernels before 5.13
/// (`COMPAT`, see the `slot` module) have no `bpf_get_current_task_btf` (5.11): the task is
/// an untyped address there, read with `bpf_probe_read_kernel`.
#[inline(always)]
pub fn current_start_ns<const COMPAT: bool>() -> Option<u64> {
    let off = offsets();
    if COMPAT {
        current_field::<u64>(off.task_start_boottime)
    } else {
        Some(Task::of(current_task()).start_ns(off))
    }
}

/// The address of the current task's `mm_struct` (0 for none), as `current_start_ns`.
#[inline(always)]
pub fn current_mm_addr<const COMPAT: bool>() -> u64 {
    let off = offsets();
    if COMPAT {
        current_field::<u64>(off.task_mm).unwrap_or(0)
    } else {
        Task::of(current_task()).mm(off).map_or(0, Mm::addr)
    }
}

/// The current task's field at `offset`, read through its untyped address with
/// `bpf_probe_read_kernel` (the compat builds' way, without `bpf_get_current_task_btf`).
#[inline(always)]
fn current_field<T: Copy>(offset: u32) -> Option<T> {
    // SAFETY: a helper without arguments; the read is checked by the next helper.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: a read the helper checks.
    unsafe { bpf_probe_read_kernel(task.add(offset as usize).cast::<T>()) }.ok()
}

#[inline(always)]
pub fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// A pointer the verifier knows the BTF type of (a tracepoint's argument,
/// `bpf_get_current_task_btf`, an iterator's task, or a pointer field loaded from one of
/// them). The typed wrappers below say which kernel structure it points to.
#[derive(Clone, Copy)]
pub struct KernelPtr(*const u8);

impl KernelPtr {
    /// A plain load of a field of 1, 2, 4 or 8 bytes at a constant offset (read from the frozen
    /// `.rodata`): the verifier checks that the access lies within a field of the pointee's
    /// kernel type (not that it is the intended field: btf.rs sees to that) and turns it into
    /// a load that reads 0 where it would fault, so it cannot fail: no helper call.
    #[inline(always)]
    pub fn load<T: Copy>(self, offset: u32) -> T {
        // SAFETY: see above; the verifier refuses the program if the access is not within
        // a field of the pointee's type.
        unsafe { core::ptr::read_volatile(self.0.add(offset as usize).cast::<T>()) }
    }

    /// The pointer field at `offset`, if not NULL.
    #[inline(always)]
    pub fn load_ptr(self, offset: u32) -> Option<KernelPtr> {
        let p: *const u8 = self.load(offset);
        (!p.is_null()).then_some(KernelPtr(p))
    }
}

/// A `task_struct`.
#[derive(Clone, Copy)]
pub struct Task(KernelPtr);

impl Task {
    pub fn of(p: *mut task_struct) -> Self {
        Self(KernelPtr(p.cast_const().cast()))
    }

    /// `(pid, tgid)`.
    #[inline(always)]
    pub fn ids(self, off: &KernelOffsets) -> (u32, u32) {
        (self.0.load(off.task_pid), self.0.load(off.task_tgid))
    }

    #[inline(always)]
    pub fn tid(self, off: &KernelOffsets) -> u32 {
        self.0.load(off.task_pid)
    }

    #[inline(always)]
    pub fn tgid(self, off: &KernelOffsets) -> u32 {
        self.0.load(off.task_tgid)
    }

    #[inline(always)]
    pub fn flags(self, off: &KernelOffsets) -> u32 {
        self.0.load(off.task_flags)
    }

    #[inline(always)]
    pub fn start_ns(self, off: &KernelOffsets) -> u64 {
        self.0.load(off.task_start_boottime)
    }

    #[inline(always)]
    pub fn comm(self, off: &KernelOffsets) -> [u8; 16] {
        let lo: u64 = self.0.load(off.task_comm);
        let hi: u64 = self.0.load(off.task_comm + 8);
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&lo.to_ne_bytes());
        out[8..].copy_from_slice(&hi.to_ne_bytes());
        out
    }

    #[inline(always)]
    pub fn exit_code(self, off: &KernelOffsets) -> u32 {
        self.0.load(off.task_exit_code)
    }

    #[inline(always)]
    pub fn state(self, off: &KernelOffsets) -> u32 {
        self.0.load(off.task_state)
    }

    #[inline(always)]
    pub fn mm(self, off: &KernelOffsets) -> Option<Mm> {
        self.0.load_ptr(off.task_mm).map(Mm)
    }

    /// The thread group's shared `signal_struct`.
    #[inline(always)]
    pub fn signal(self, off: &KernelOffsets) -> Option<Signal> {
        self.0.load_ptr(off.task_signal).map(Signal)
    }

    /// The start time of the task's group leader: with the tgid, the process's identity.
    #[inline(always)]
    pub fn leader_start_ns(self, off: &KernelOffsets) -> Option<u64> {
        Some(Task(self.0.load_ptr(off.task_group_leader)?).start_ns(off))
    }

    /// (sum_exec_runtime, utime, stime), in nanoseconds.
    #[inline(always)]
    pub fn cpu(self, off: &KernelOffsets) -> (u64, u64, u64) {
        (self.0.load(off.task_sum_exec), self.0.load(off.task_utime), self.0.load(off.task_stime))
    }

    /// `task_io_accounting`, whose fields the loader checks are those of `IoCounters`, in
    /// order, 8 bytes each.
    #[inline(always)]
    pub fn io(self, off: &KernelOffsets) -> IoCounters {
        let at = |i: u32| self.0.load::<u64>(off.task_ioac + i * 8);
        IoCounters {
            rchar: at(0),
            wchar: at(1),
            syscr: at(2),
            syscw: at(3),
            read_bytes: at(4),
            write_bytes: at(5),
            cancelled_write_bytes: at(6),
        }
    }

    /// (minor, major) page faults.
    #[inline(always)]
    pub fn faults(self, off: &KernelOffsets) -> (u64, u64) {
        (self.0.load(off.task_min_flt), self.0.load(off.task_maj_flt))
    }

    #[inline(always)]
    pub fn real_parent(self, off: &KernelOffsets) -> Option<Task> {
        self.0.load_ptr(off.task_real_parent).map(Task)
    }
}

/// A `signal_struct`: what a thread group shares.
#[derive(Clone, Copy)]
pub struct Signal(KernelPtr);

impl Signal {
    /// The peak RSS of the thread group, in pages (`signal->maxrss`).
    #[inline(always)]
    pub fn maxrss_pages(self, off: &KernelOffsets) -> u64 {
        self.0.load(off.signal_maxrss)
    }

    /// Whether every thread of the group has passed `do_exit`'s count of the live threads
    /// (`signal->live` is 0): the group is gone, or going.
    #[inline(always)]
    pub fn live_is_zero(self, off: &KernelOffsets) -> Option<bool> {
        // An `atomic_t`, which older verifiers do not let a plain load walk into; this runs
        // once per exiting task of older kernels only.
        // SAFETY: a read the helper checks.
        let live =
            unsafe { bpf_probe_read_kernel(self.0.0.add(off.signal_live as usize).cast::<i32>()) };
        Some(live.ok()? == 0)
    }
}

/// A `struct cgroup`.
#[derive(Clone, Copy)]
pub struct Cgroup(KernelPtr);

impl Cgroup {
    pub fn of(p: *const u8) -> Self {
        Self(KernelPtr(p))
    }

    /// The cgroup's id (its `kernfs_node`'s), if it is in the cgroup2 hierarchy (whose
    /// `cgroup_root` has hierarchy id 0).
    #[inline(always)]
    pub fn unified_id(self, off: &KernelOffsets) -> Option<u64> {
        let root = self.0.load_ptr(off.cgroup_root)?;
        if root.load::<u32>(off.cgroup_root_hierarchy_id) != 0 {
            return None;
        }
        let kernfs_node = self.0.load_ptr(off.cgroup_kn)?;
        Some(kernfs_node.load(off.kernfs_node_id))
    }
}

/// An `mm_struct`.
#[derive(Clone, Copy)]
pub struct Mm(KernelPtr);

/// The same address space.
impl PartialEq for Mm {
    fn eq(&self, other: &Self) -> bool {
        self.addr() == other.addr()
    }
}

/// `MM_SWAPENTS`: swap entries are not resident memory.
pub const MM_SWAPENTS: u32 = 2;
pub const NR_MM_COUNTERS: u32 = 4;

impl Mm {
    pub fn of(p: *const u8) -> Self {
        Self(KernelPtr(p))
    }

    /// The address, to tell one address space from another.
    #[inline(always)]
    pub fn addr(self) -> u64 {
        self.0.0 as u64
    }

    /// Counter `member` (file, anon, swap entries, shmem) in bytes. Of a per-CPU counter, the
    /// shared part only: up to a batch of pages per CPU behind.
    #[inline(always)]
    pub fn counter_bytes(self, off: &KernelOffsets, member: u32) -> Option<u64> {
        // The four are read and one picked: the verifier allows no variable offset.
        let all = self.counters(off);
        all.get(member as usize).copied()
    }

    /// Each counter at its constant offset.
    #[inline(always)]
    fn counters(self, off: &KernelOffsets) -> [u64; NR_MM_COUNTERS as usize] {
        let at = |m: u32| {
            let at = off.mm_rss_stat + m * off.rss_counter_stride + off.rss_counter_value;
            let pages: i64 = if off.features & KF_RSS_ATOMIC != 0 {
                // SAFETY: a read the helper checks; 0 where it faults.
                unsafe { bpf_probe_read_kernel(self.0.0.add(at as usize).cast::<i64>()) }
                    .unwrap_or(0)
            } else {
                self.0.load(at)
            };
            (pages.max(0) as u64) << off.page_shift
        };
        [at(0), at(1), at(2), at(3)]
    }

    /// Resident bytes: file + anon + shmem pages.
    #[inline(always)]
    pub fn rss_bytes(self, off: &KernelOffsets) -> u64 {
        let c = self.counters(off);
        c[0] + c[1] + c[3]
    }

    #[inline(always)]
    pub fn hiwater_bytes(self, off: &KernelOffsets) -> u64 {
        self.0.load::<u64>(off.mm_hiwater_rss) << off.page_shift
    }

    #[inline(always)]
    pub fn owner(self, off: &KernelOffsets) -> Option<Task> {
        self.0.load_ptr(off.mm_owner).map(Task)
    }
}

/// `struct bpf_iter_meta`.
#[repr(C)]
pub struct IterMeta {
    pub seq: *mut seq_file,
    pub session_id: u64,
    pub seq_num: u64,
}

/// `struct bpf_iter__task`: the context of a task iterator; `task` is NULL on the last call.
#[repr(C)]
pub struct IterTaskCtx {
    pub meta: *const IterMeta,
    pub task: *mut task_struct,
}

/// Write one record to an iterator's output.
#[inline(always)]
pub fn seq_write<T>(seq: *mut seq_file, rec: &T) {
    // SAFETY: `seq` comes from the iterator's metadata; the record is a plain value.
    unsafe { bpf_seq_write(seq, core::ptr::from_ref(rec).cast(), size_of::<T>() as u32) };
}
