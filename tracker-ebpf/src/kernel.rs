//! Reading kernel structures at offsets resolved from the running kernel's BTF, and the
//! generation gate that makes program upgrades count every event exactly once.
//!
//! Fields are read with plain loads, not `bpf_probe_read_kernel`: the pointers are typed
//! (BTF) and the offsets constants of the frozen `.rodata`, so the verifier checks each
//! access against the kernel's own type and the JIT makes it a load that reads 0 where it
//! would fault. A helper call and its copy cost more than the rest of a program's work.
use aya_ebpf::{
    bindings::{seq_file, task_struct},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_seq_write},
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
    /// A plain load of a field of 1, 2, 4 or 8 bytes. The pointer is one the verifier knows
    /// the BTF type of (a tracepoint's argument, `bpf_get_current_task_btf`, an iterator's
    /// task, or a pointer field loaded from one of them) and the offset is a constant to it
    /// (read from the frozen `.rodata`), so it checks the access against the kernel's own
    /// type and turns it into a load that reads 0 where it would fault: no helper call.
    #[inline(always)]
    fn read<T: Copy>(self, offset: u32) -> Option<T> {
        // SAFETY: see above; the verifier refuses the program if the access is not within
        // a field of the pointee's type.
        Some(unsafe { core::ptr::read_volatile(self.0.add(offset as usize).cast::<T>()) })
    }

    /// A pointer field of the structure at `offset`, if not NULL.
    #[inline(always)]
    pub fn read_ptr(self, offset: u32) -> Option<*const u8> {
        let p: *const u8 = self.read(offset)?;
        (!p.is_null()).then_some(p)
    }

    #[inline(always)]
    pub fn read_u32(self, offset: u32) -> Option<u32> {
        self.read(offset)
    }

    #[inline(always)]
    pub fn read_u64(self, offset: u32) -> Option<u64> {
        self.read(offset)
    }

    /// `(pid, tgid)`.
    #[inline(always)]
    pub fn ids(self, off: &KernelOffsets) -> Option<(u32, u32)> {
        Some((self.read(off.task_pid)?, self.read(off.task_tgid)?))
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
    pub fn comm(self, off: &KernelOffsets) -> Option<[u8; 16]> {
        let lo: u64 = self.read(off.task_comm)?;
        let hi: u64 = self.read(off.task_comm + 8)?;
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&lo.to_ne_bytes());
        out[8..].copy_from_slice(&hi.to_ne_bytes());
        Some(out)
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
    pub fn mm(self, off: &KernelOffsets) -> Option<Mm> {
        let p: *const u8 = self.read(off.task_mm)?;
        (!p.is_null()).then_some(Mm(p))
    }

    /// The peak RSS of the thread group, in pages (`signal->maxrss`).
    #[inline(always)]
    pub fn maxrss_pages(self, off: &KernelOffsets) -> Option<u64> {
        let sig: *const u8 = self.read(off.task_signal)?;
        if sig.is_null() {
            return None;
        }
        Task(sig).read(off.signal_maxrss)
    }

    /// Whether every thread of the task's group has passed `do_exit`'s count of the live
    /// threads (`signal->live` is 0): the group is gone, or going.
    #[inline(always)]
    pub fn group_live_is_zero(self, off: &KernelOffsets) -> Option<bool> {
        let sig: *const u8 = self.read(off.task_signal)?;
        if sig.is_null() {
            return None;
        }
        // An `atomic_t`, which older verifiers do not let a plain load walk into; this runs
        // once per exiting task of older kernels only.
        // SAFETY: a read the helper checks.
        let live =
            unsafe { bpf_probe_read_kernel(sig.add(off.signal_live as usize).cast::<i32>()) };
        Some(live.ok()? == 0)
    }

    /// The start time of the task's group leader: with the tgid, the process's identity.
    #[inline(always)]
    pub fn leader_start_ns(self, off: &KernelOffsets) -> Option<u64> {
        let leader: *const u8 = self.read(off.task_group_leader)?;
        if leader.is_null() {
            return None;
        }
        Task(leader).start_ns(off)
    }

    /// (sum_exec_runtime, utime, stime), in nanoseconds.
    #[inline(always)]
    pub fn cpu(self, off: &KernelOffsets) -> Option<(u64, u64, u64)> {
        Some((
            self.read(off.task_sum_exec)?,
            self.read(off.task_utime)?,
            self.read(off.task_stime)?,
        ))
    }

    /// `task_io_accounting`, whose fields the loader checks are those of `IoCounters`, in
    /// order, 8 bytes each.
    #[inline(always)]
    pub fn io(self, off: &KernelOffsets) -> Option<IoCounters> {
        let at = |i: u32| self.read::<u64>(off.task_ioac + i * 8);
        Some(IoCounters {
            rchar: at(0)?,
            wchar: at(1)?,
            syscr: at(2)?,
            syscw: at(3)?,
            read_bytes: at(4)?,
            write_bytes: at(5)?,
            cancelled_write_bytes: at(6)?,
        })
    }

    /// (minor, major) page faults.
    #[inline(always)]
    pub fn faults(self, off: &KernelOffsets) -> Option<(u64, u64)> {
        Some((self.read(off.task_min_flt)?, self.read(off.task_maj_flt)?))
    }

    #[inline(always)]
    pub fn real_parent(self, off: &KernelOffsets) -> Option<Task> {
        let p: *const u8 = self.read(off.task_real_parent)?;
        (!p.is_null()).then_some(Task(p))
    }
}

/// An `mm_struct` pointer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mm(pub *const u8);

/// `MM_SWAPENTS`: swap entries are not resident memory.
pub const MM_SWAPENTS: u32 = 2;
pub const NR_MM_COUNTERS: u32 = 4;

impl Mm {
    pub fn of(p: *const u8) -> Self {
        Self(p)
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
                unsafe { bpf_probe_read_kernel(self.0.add(at as usize).cast::<i64>()) }.unwrap_or(0)
            } else {
                Task(self.0).read(at).unwrap_or(0)
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
        Task(self.0).read::<u64>(off.mm_hiwater_rss).unwrap_or(0) << off.page_shift
    }

    #[inline(always)]
    pub fn owner(self, off: &KernelOffsets) -> Option<*const u8> {
        Task(self.0).read(off.mm_owner)
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
