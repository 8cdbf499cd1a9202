//! The maps. Sizes here are placeholders: the loader sets the real ones (the tasks array from
//! `pid_max`, the per-slot arrays from the configured slot count) before loading.
use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use tracker_common::{
    AdoptRequest, AllowPorts, Config, DeviceKey, GlobalCounters, MmRss, Net4, Net6, NetPolicy,
    Reader, SlotControl, SlotCounters, SlotState, TaskTag, UsageRequest,
};

/// `tid -> TaskTag`, slot 0 meaning untagged. An array lookup is inlined by the verifier into
/// a bounds check and a load, so the untagged path of every program is one memory access, and
/// tagging never allocates (a hash map insert measured ~350 ns here, task-local storage
/// ~2 µs). Every tid has its entry, so the map can never be full. User space never scans it
/// (at pid_max 4194304 it is 64 MiB): a slot's tasks come from the usage iterator, in
/// proportion to the machine's tasks, and its counts from `SLOT_STATE` and `COUNTERS`.
#[map(name = "TRK_TASKS")]
pub static TASKS: Array<TaskTag> = Array::with_max_entries(32768, 0);

/// Written by user space (flags), only read here.
#[map(name = "TRK_SLOTS")]
pub static SLOTS: Array<SlotControl> = Array::with_max_entries(1024, 0);

/// Written here (atomic adds), only read by user space: no user-space write can overwrite a
/// count the kernel is changing.
#[map(name = "TRK_SLOT_STATE")]
pub static SLOT_STATE: Array<SlotState> = Array::with_max_entries(1024, 0);

#[map(name = "TRK_COUNTERS")]
pub static COUNTERS: PerCpuArray<SlotCounters> = PerCpuArray::with_max_entries(1024, 0);

#[map(name = "TRK_ADOPT")]
pub static ADOPT: HashMap<u32, AdoptRequest> = HashMap::with_max_entries(256, 0);

/// Written by the loader alone.
#[map(name = "TRK_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Written by the event reader alone.
#[map(name = "TRK_READER")]
pub static READER: Array<Reader> = Array::with_max_entries(1, 0);

/// Tagged tasks that have exited and are not yet freed: added to where an entry is marked
/// exited, taken from wherever an exited entry is closed and counted finished. At 0 the free
/// program returns before it reads the task, which is cold there (see `free.rs`).
#[map(name = "TRK_PENDING_FREE")]
pub static PENDING_FREE: Array<u64> = Array::with_max_entries(1, 0);

/// Kernels before 5.13 only (the compat programs, see `slot`): `[tid, start_ns] -> slot` of
/// each tagged task between its exit and its close; whoever deletes the key closes the task.
/// The loader sizes it (1 entry where the programs swap the tasks array's entries instead).
#[map(name = "TRK_EXITED")]
pub static EXITED: HashMap<[u64; 2], u32> = HashMap::with_max_entries(1, 0);

/// Kernels before 5.13 only: `tgid -> 1` while one CPU updates that process's `MM_RSS` entry
/// (see `rss.rs`); sized by the loader.
#[map(name = "TRK_RSS_LOCK")]
pub static RSS_LOCK: HashMap<u32, u8> = HashMap::with_max_entries(1, 0);

/// `tid -> sum_exec_runtime` that a tagged task's exit harvested (see `harvest.rs`); sized by
/// the loader as the tasks array, and read as the array is: a load, never a helper call.
#[map(name = "TRK_EXIT_CPU")]
pub static EXIT_CPU: Array<u64> = Array::with_max_entries(32768, 0);

#[map(name = "TRK_GLOBAL")]
pub static GLOBAL: PerCpuArray<GlobalCounters> = PerCpuArray::with_max_entries(1, 0);

/// `tgid -> MmRss`, one per tagged process that has touched memory; not preallocated.
#[map(name = "TRK_MM_RSS")]
pub static MM_RSS: HashMap<u32, MmRss> = HashMap::with_max_entries(32768, BPF_F_NO_PREALLOC);

#[map(name = "TRK_USAGE")]
pub static USAGE: HashMap<u32, UsageRequest> = HashMap::with_max_entries(256, 0);

/// `cgroup id -> slot id`, written by user space when it makes a slot's cgroup v2 directory.
#[map(name = "TRK_CGROUP_SLOTS")]
pub static CGROUP_SLOTS: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);

/// Events of tagged tasks for the one reader (the daemon); 4 MiB, about 75,000 events.
#[map(name = "TRK_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map(name = "TRK_NET_POLICY")]
pub static NET_POLICY: HashMap<u32, NetPolicy> = HashMap::with_max_entries(1024, 0);

#[map(name = "TRK_ALLOW4")]
pub static ALLOW4: LpmTrie<Net4, AllowPorts> = LpmTrie::with_max_entries(16384, BPF_F_NO_PREALLOC);

#[map(name = "TRK_ALLOW6")]
pub static ALLOW6: LpmTrie<Net6, AllowPorts> = LpmTrie::with_max_entries(16384, BPF_F_NO_PREALLOC);

#[map(name = "TRK_DENY_DEV")]
pub static DENY_DEV: HashMap<DeviceKey, u32> = HashMap::with_max_entries(16384, 0);
