//! Types shared by the tracker's kernel programs and its user space.
//!
//! Everything here crosses the user/kernel boundary through BPF maps or globals, so every type
//! is `#[repr(C)]`, made of fixed-width integers with explicit padding, and its size and field
//! offsets are asserted at compile time: a change that moves a field fails the build instead of
//! silently corrupting the pinned maps of a running tracker.
#![cfg_attr(not(test), no_std)]

use core::mem::{offset_of, size_of};

mod counters;
pub mod cpu;

pub use counters::{CountField, IoCounters, SLOT_COUNTS, SlotCounters, SlotCounts};

/// Map names, which are also the file names of the pins under `<bpffs dir>/maps/`.
pub mod map_name {
    /// `tid -> TaskTag`, an array sized to `pid_max` (slot 0: untagged): what every program
    /// checks on every call. User space reads single entries, never the whole array.
    pub const TASKS: &str = "TRK_TASKS";
    /// `slot id -> SlotControl`: what user space decides about a slot (flags); the kernel
    /// only reads it.
    pub const SLOTS: &str = "TRK_SLOTS";
    /// `slot id -> SlotState`: what the kernel counts for a slot across CPUs (live tasks,
    /// memory); user space only reads it.
    pub const SLOT_STATE: &str = "TRK_SLOT_STATE";
    /// `slot id -> SlotCounters`, per CPU.
    pub const COUNTERS: &str = "TRK_COUNTERS";
    /// `requester tid -> AdoptRequest`: input of the adopt iterator.
    pub const ADOPT: &str = "TRK_ADOPT";
    /// `0 -> Config`: the active program generation (written by the loader alone).
    pub const CONFIG: &str = "TRK_CONFIG";
    /// `0 -> Reader`: whether an event reader wants events (written by that reader alone).
    pub const READER: &str = "TRK_READER";
    /// `0 -> GlobalCounters`, per CPU.
    pub const GLOBAL: &str = "TRK_GLOBAL";
    /// `0 -> u64`: tagged tasks that have exited and are not yet freed (see
    /// `PENDING_FREE_UNKNOWN`).
    pub const PENDING_FREE: &str = "TRK_PENDING_FREE";
    /// `tgid -> MmRss`: the resident pages of each tagged process's address space.
    pub const MM_RSS: &str = "TRK_MM_RSS";
    /// `requester tid -> UsageRequest`: input of the usage iterator.
    pub const USAGE: &str = "TRK_USAGE";
    /// `cgroup id -> slot id`: which slot a cgroup v2 directory (and its sockets) belongs to.
    pub const CGROUP_SLOTS: &str = "TRK_CGROUP_SLOTS";
    /// Ring buffer of `Event`s, read by one consumer (the daemon, or `tracker watch`).
    pub const EVENTS: &str = "TRK_EVENTS";
    /// `slot id -> NetPolicy`: whether the slot's outbound connections are restricted.
    pub const NET_POLICY: &str = "TRK_NET_POLICY";
    /// LPM tries of allowed destinations, `(slot, address) -> AllowPorts`.
    pub const ALLOW4: &str = "TRK_ALLOW4";
    pub const ALLOW6: &str = "TRK_ALLOW6";
    /// `DeviceKey -> 1`: devices a slot may not open (minor `u32::MAX`: every minor).
    pub const DENY_DEV: &str = "TRK_DENY_DEV";
    /// `[tid, start_ns] -> slot`: on kernels before 5.13 (`KF_OLD_KERNEL`), each tagged task
    /// between its exit and its close; whoever deletes its key closes it. One entry elsewhere.
    pub const EXITED: &str = "TRK_EXITED";
    /// `tgid -> 1`: on kernels before 5.13, the lock of a process's memory entry while one CPU
    /// changes it. Not pinned: each generation has its own, and only the active one writes.
    pub const RSS_LOCK: &str = "TRK_RSS_LOCK";
    /// `tid -> ns`, an array sized as the tasks array: the runtime a tagged task had when it
    /// passed its exit, which the exit harvested; its close harvests only the rest.
    pub const EXIT_CPU: &str = "TRK_EXIT_CPU";
}

/// Names of the globals the loader sets before loading.
pub mod global_name {
    pub const OFFSETS: &str = "TRK_OFFSETS";
    pub const GENERATION: &str = "TRK_GENERATION";
    /// Entries of the tasks array (the highest tid it can tag, plus one): the pid_max guard
    /// refuses a `kernel.pid_max` above it.
    pub const TASKS_CAPACITY: &str = "TRK_TASKS_CAPACITY";
}

/// Slot id 0 is never allocated: a zeroed tag means "no slot".
pub const NO_SLOT: u32 = 0;

/// `SlotControl::flags`: the slot is being killed; its tasks may not fork, exec or make syscalls.
pub const SLOT_DOOMED: u32 = 1 << 1;

/// `TaskTag::slot` bit: the task passed `do_exit` and waits to be freed
/// (`sched_process_free`, after its final context switch), where its CPU time is final and the
/// rest of it is harvested. Not a live task any more.
pub const TAG_EXITED: u32 = 1 << 31;

/// The count of exited tagged tasks not yet freed, when it cannot be known: an upgrade from a
/// version that did not keep it, whose exited tasks were never counted. The count only opens
/// the free program's path past its first load, so a count too high costs time, never a
/// figure; this one stays high until the tracker is unloaded.
pub const PENDING_FREE_UNKNOWN: u64 = 1 << 62;

/// `PF_KTHREAD` from `include/linux/sched.h`: kernel threads are never adopted.
pub const PF_KTHREAD: u32 = 0x0020_0000;
/// `PF_EXITING`: a task in `do_exit` is never adopted (its exit may already be past).
pub const PF_EXITING: u32 = 0x0000_0004;
/// `TASK_NEW` (`task_struct.__state`): a child between `copy_process` and its first wake-up,
/// which the fork program tags; the adopt iterator leaves it alone so they never both do.
pub const TASK_NEW: u32 = 0x0000_0800;
/// `TASK_DEAD` (`task_struct.__state`): a task's state at its final context switch.
pub const TASK_DEAD: u32 = 0x0000_0080;

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

/// What user space decides about a slot; the kernel only reads it. Kept apart from what the
/// kernel counts (`SlotState`): an array update rewrites a whole value, so a record with two
/// writers loses one writer's updates (a kill's doom flag once wiped out concurrent exits,
/// and the live count read 2^64-1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotControl {
    pub flags: u32,
    pub _pad0: u32,
    /// Bumped by user space each time the slot id is (re)used, so stale state is recognisable
    /// (the slot's epoch; not the programs' generation of `Config`).
    pub epoch: u64,
}

/// What the kernel counts for a slot, shared by all CPUs and changed only with atomic adds
/// (and racy maxima) by the kernel programs. User space reads it, and zeroes it only while
/// the slot id is free (no task carries it), when creating a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotState {
    /// Tasks tagged now (threads included).
    pub live_tasks: u64,
    /// High-water mark of `live_tasks`.
    pub peak_tasks: u64,
    /// Resident memory of the slot's processes now, in bytes (a transiently negative value
    /// reads as a huge number and is clamped by user space).
    pub mem_current: u64,
    /// High-water mark of `mem_current`.
    pub mem_peak: u64,
}

/// The resident pages of one tagged process's address space, by `mm_struct` counter (file,
/// anon, swap entries (unused), shmem), in bytes, as last seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmRss {
    pub slot: u32,
    pub _pad0: u32,
    /// The `mm_struct` the values are of; an exec replaces it.
    pub mm: u64,
    pub bytes: [u64; 4],
}

/// A request to the usage iterator, keyed by the tid of the process that runs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageRequest {
    /// Report the tasks of this slot; 0: of every slot.
    pub slot: u32,
    pub _pad0: u32,
}

/// `UsageRecord::flags`: the task leads its thread group; its RSS fields are the process's.
pub const USAGE_LEADER: u32 = 1;
/// `UsageRecord::flags`: the task has exited (its exit program harvested all but its CPU) and
/// is not freed yet: a zombie its parent has not reaped, or one in its last moments. Only its
/// CPU time is the record's to add; it is no live task.
pub const USAGE_EXITED: u32 = 2;

/// One record written by the usage iterator per tagged task that is not freed yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageRecord {
    pub tid: u32,
    pub tgid: u32,
    pub slot: u32,
    pub flags: u32,
    /// The task's start time, as in its tag: `(tid, start_ns)` names it.
    pub start_ns: u64,
    pub sum_exec_ns: u64,
    pub utime_ns: u64,
    pub stime_ns: u64,
    pub io: IoCounters,
    pub min_flt: u64,
    pub maj_flt: u64,
    /// For a leader: the process's resident bytes now, and its peak.
    pub rss_bytes: u64,
    pub hiwater_rss_bytes: u64,
}

/// Machine-wide counters of the tracker itself, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounters {
    pub tag_failures: u64,
    /// Events that did not fit in the ring buffer (a reader too slow, or none).
    pub events_lost: u64,
    /// Writes of `kernel.pid_max` refused because the tasks array could not tag the tids
    /// they would allow.
    pub pid_max_refused: u64,
    pub _reserved: [u64; 5],
}

/// Which program generation is live. Programs of another generation return at once, so an
/// upgrade can attach the new programs before detaching the old ones without counting twice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub active_generation: u64,
}

/// What the one event reader wants, written by it alone (the loader writes `Config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reader {
    /// Nonzero while a reader wants events; the programs emit none otherwise.
    pub events: u32,
    pub _pad0: u32,
}

/// `Event::kind`.
pub const EVENT_FORK: u16 = 1;
pub const EVENT_EXEC: u16 = 2;
pub const EVENT_EXIT: u16 = 3;
/// A tagged task was moved to a cgroup v2 directory that is not its slot's.
pub const EVENT_LEFT_CGROUP: u16 = 4;
/// The OOM killer chose a tagged task (the slot's memory limit, or the machine's).
pub const EVENT_OOM: u16 = 5;

/// `Event::flags` of an exit: the task was the last thread of its process.
pub const EVENT_GROUP_DEAD: u16 = 1;

/// One event of a tagged task, from the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `kind` and `flags` share the word `kind` once had alone: on little-endian, an event of
    /// the previous programs (emitted before an upgrade switched) reads as its kind, no flags.
    pub kind: u16,
    /// `EVENT_GROUP_DEAD` (exit).
    pub flags: u16,
    pub slot: u32,
    pub pid: u32,
    pub tgid: u32,
    /// Fork: the forking task.
    pub parent: u32,
    /// Exit: the exit code (signal in the low 7 bits, status in the next 8).
    pub code: u32,
    /// `bpf_ktime_get_boot_ns`, comparable with start times.
    pub time_ns: u64,
    /// Left cgroup: the cgroup v2 id it was moved to.
    pub cgroup: u64,
    pub comm: [u8; 16],
}

/// A request to the adopt iterator, keyed by the tid of the process that runs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdoptRequest {
    /// Adopt this process, and every task whose real parent is tagged in `slot` (the iterator
    /// runs until a pass tags nothing, so a tree of any depth is taken level by level).
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
    /// `task_struct.pid`.
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_flags: u32,
    pub task_real_parent: u32,
    pub task_start_boottime: u32,
    pub task_exit_code: u32,
    pub task_state: u32,
    pub task_mm: u32,
    pub task_signal: u32,
    pub task_utime: u32,
    pub task_stime: u32,
    /// `task_struct.se.sum_exec_runtime`.
    pub task_sum_exec: u32,
    pub task_ioac: u32,
    pub task_min_flt: u32,
    pub task_maj_flt: u32,
    pub signal_maxrss: u32,
    /// `mm_struct.rss_stat`: 6.2+ an array of `percpu_counter`, before a struct holding an
    /// array of `atomic_long_t` (see `KF_RSS_ATOMIC`).
    pub mm_rss_stat: u32,
    pub mm_owner: u32,
    pub mm_hiwater_rss: u32,
    /// Where the value of counter 0 is within `rss_stat` (`percpu_counter.count`, or 0), and
    /// the distance between two counters (`sizeof(struct percpu_counter)`, or 8).
    pub rss_counter_value: u32,
    pub rss_counter_stride: u32,
    pub page_shift: u32,
    pub cgroup_kn: u32,
    pub cgroup_root: u32,
    pub kernfs_node_id: u32,
    pub cgroup_root_hierarchy_id: u32,
    /// `task_struct.comm`, 16 bytes.
    pub task_comm: u32,
    /// `KF_*`: how this kernel differs, chosen at load from its BTF. Constants of the frozen
    /// `.rodata`, so the verifier prunes the branches of the other kernels unchecked.
    pub features: u32,
    /// `signal_struct.live`, the thread group's live thread count (`atomic_t`).
    pub signal_live: u32,
    /// `task_struct.group_leader`.
    pub task_group_leader: u32,
    pub _reserved: [u32; 2],
}

/// `sched_process_exit` has its `group_dead` argument (recent kernels: 6.18 has it, 6.12
/// not); before, the group's death is read from `signal->live`.
pub const KF_EXIT_GROUP_DEAD: u32 = 1;
// 1 << 1 was `sched_switch`'s `prev_state`, for the CPU harvest that is now at
// `sched_process_free`.
/// The RSS counters are `atomic_long_t` (before 6.2), which the verifier does not let a
/// plain load reach (`Type 'atomic_long_t' is not a struct`): they are read with
/// `bpf_probe_read_kernel`.
pub const KF_RSS_ATOMIC: u32 = 1 << 2;
/// A kernel before 5.13: no `bpf_get_current_task_btf` (5.11) or no atomic exchange and
/// compare-and-exchange (5.12), whose verifier refuses a program that holds one, reached or
/// not. The loader loads each program's `_old` build (see `ProgramSpec::old`).
pub const KF_OLD_KERNEL: u32 = 1 << 3;
/// Tracepoint programs run preemptibly (7.0+: SRCU-fast tracepoints, read from the BTF), and
/// the kernel skips a program's run on a CPU where another task was preempted inside it. What
/// covers for the runs it may skip is on: the exit backstop on `sched_switch` (`trk_dead`),
/// the group's end counted by whichever of the two first records it, and the repair of a
/// thread's exec whose tag move was skipped (at the fork and the free programs, which are never
/// skipped). The fork program is at `sched_wakeup_new` on every kernel.
pub const KF_PREEMPTIBLE_TP: u32 = 1 << 4;
/// Tests only (`TRACKER_TEST_SKIP_RUNS=1`): the exit program leaves every tagged task alone,
/// and the exec program every exec from a thread that is not its process's leader, as the
/// kernel does when it skips their runs, so that what covers for a skipped run does it all.
pub const KF_TEST_SKIP_RUNS: u32 = 1 << 5;

impl KernelOffsets {
    /// All zero: the placeholder the kernel object is built with.
    pub const fn zeroed() -> Self {
        // SAFETY: all fields are integers, for which zero is valid.
        unsafe { core::mem::zeroed() }
    }
}

/// `NetPolicy::mode`: connections only to the slot's allow-list (empty: none at all).
pub const NET_ALLOWLIST: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetPolicy {
    pub mode: u32,
}

/// Ports allowed to one destination network; an entry of 0 allows every port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowPorts {
    pub n: u32,
    pub ports: [u16; MAX_PORTS_PER_NET],
    pub _pad0: [u16; 2],
}

pub const MAX_PORTS_PER_NET: usize = 14;

impl AllowPorts {
    /// The entry for `ports` (at most `MAX_PORTS_PER_NET`; the rest are not kept, so the
    /// caller refuses more first).
    pub fn new(ports: &[u16]) -> Self {
        let n = ports.len().min(MAX_PORTS_PER_NET);
        let mut v = Self { n: n as u32, ..Default::default() };
        v.ports[..n].copy_from_slice(&ports[..n]);
        v
    }

    /// Whether a connection to `port` is allowed: one of the first `n` entries is it, or 0
    /// (every port). A loop over the whole array with a constant bound, as the verifier wants.
    #[inline(always)]
    pub fn allows(&self, port: u16) -> bool {
        let n = self.n as usize;
        let mut i = 0;
        while i < self.ports.len() {
            if i < n && (self.ports[i] == 0 || self.ports[i] == port) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// The data of an LPM key: the slot (always matched whole) then the address, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Net4 {
    pub slot: u32,
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Net6 {
    pub slot: u32,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceKey {
    pub slot: u32,
    pub major: u32,
    pub minor: u32,
}

pub const ANY_MINOR: u32 = u32::MAX;

/// Assert at compile time that `$ty` has size `$size` and each field its expected offset.
macro_rules! assert_layout {
    ($ty:ty, $size:expr $(, $field:ident = $off:expr)* $(,)?) => {
        const _: () = assert!(size_of::<$ty>() == $size);
        $(const _: () = assert!(offset_of!($ty, $field) == $off);)*
    };
}

assert_layout!(TaskTag, 16, slot = 0, tgid = 4, start_ns = 8);
assert_layout!(SlotControl, 16, flags = 0, epoch = 8);
assert_layout!(SlotState, 32, live_tasks = 0, peak_tasks = 8, mem_current = 16, mem_peak = 24);
assert_layout!(
    SlotCounters,
    256,
    cpu_user_ns = 0,
    cpu_system_ns = 8,
    io = 16,
    min_flt = 72,
    maj_flt = 80,
    max_rss_bytes = 88,
    counts = 96,
);
// Counts are appended, never moved: those a running tracker has stay where they are (a new
// one needs no line here; the size follows the list).
assert_layout!(
    SlotCounts,
    8 * SLOT_COUNTS,
    tasks_started = 0,
    tasks_exited = 8,
    processes_started = 16,
    processes_exited = 24,
    execs = 32,
    exits_by_signal = 40,
    doom_kills = 48,
    tag_failures = 56,
    net_rx_bytes = 64,
    net_tx_bytes = 72,
    net_rx_packets = 80,
    net_tx_packets = 88,
    tasks_finished = 96,
);
assert_layout!(IoCounters, 56, rchar = 0, wchar = 8, read_bytes = 32, cancelled_write_bytes = 48);
assert_layout!(MmRss, 48, slot = 0, mm = 8, bytes = 16);
assert_layout!(UsageRequest, 8, slot = 0);
assert_layout!(
    UsageRecord,
    136,
    tid = 0,
    tgid = 4,
    slot = 8,
    flags = 12,
    start_ns = 16,
    sum_exec_ns = 24,
    utime_ns = 32,
    stime_ns = 40,
    io = 48,
    min_flt = 104,
    maj_flt = 112,
    rss_bytes = 120,
    hiwater_rss_bytes = 128,
);
assert_layout!(GlobalCounters, 64, tag_failures = 0, events_lost = 8, pid_max_refused = 16);
assert_layout!(Config, 8, active_generation = 0);
assert_layout!(Reader, 8, events = 0);
assert_layout!(
    Event,
    56,
    kind = 0,
    flags = 2,
    slot = 4,
    pid = 8,
    tgid = 12,
    parent = 16,
    code = 20,
    time_ns = 24,
    cgroup = 32,
    comm = 40
);
assert_layout!(AdoptRequest, 8, target_tgid = 0, slot = 4);
assert_layout!(AdoptRecord, 16, tid = 0, tgid = 4, start_ns = 8);
assert_layout!(
    KernelOffsets,
    128,
    task_pid = 0,
    task_tgid = 4,
    task_flags = 8,
    task_real_parent = 12,
    task_start_boottime = 16,
    task_exit_code = 20,
    task_state = 24,
    page_shift = 84,
);

#[cfg(test)]
mod tests {
    use super::AllowPorts;

    #[test]
    fn an_allow_entry_matches_its_ports_or_every_port() {
        let some = AllowPorts::new(&[22, 443]);
        assert!(some.allows(22) && some.allows(443));
        assert!(!some.allows(80) && !some.allows(0));
        assert!(AllowPorts::new(&[0]).allows(8080), "0 allows every port");
        assert!(!AllowPorts::new(&[]).allows(22), "no ports allow nothing");
        // Entries past `n` (left over in the array) allow nothing.
        let stale =
            AllowPorts { n: 1, ports: [22, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], _pad0: [0; 2] };
        assert!(stale.allows(22) && !stale.allows(80) && !stale.allows(9));
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is `#[repr(C)]`, made only of integers, with explicit padding, so every
    // bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::TaskTag {}
    unsafe impl aya::Pod for super::SlotControl {}
    unsafe impl aya::Pod for super::SlotState {}
    unsafe impl aya::Pod for super::Reader {}
    unsafe impl aya::Pod for super::SlotCounters {}
    unsafe impl aya::Pod for super::SlotCounts {}
    unsafe impl aya::Pod for super::GlobalCounters {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::AdoptRequest {}
    unsafe impl aya::Pod for super::AdoptRecord {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::MmRss {}
    unsafe impl aya::Pod for super::UsageRequest {}
    unsafe impl aya::Pod for super::UsageRecord {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::NetPolicy {}
    unsafe impl aya::Pod for super::AllowPorts {}
    unsafe impl aya::Pod for super::Net4 {}
    unsafe impl aya::Pod for super::Net6 {}
    unsafe impl aya::Pod for super::DeviceKey {}
}
