//! The maps. Sizes here are placeholders: the loader sets the real ones (`TRK_TASKS` from
//! `pid_max`, the per-slot arrays from the configured slot count) before loading.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use tracker_common::{AdoptRequest, Config, GlobalCounters, SlotControl, SlotCounters, TaskTag};

/// Not preallocated: memory follows the number of tagged tasks, not `pid_max`.
#[map(name = "TRK_TASKS")]
pub static TASKS: HashMap<u32, TaskTag> = HashMap::with_max_entries(32768, BPF_F_NO_PREALLOC);

#[map(name = "TRK_SLOTS")]
pub static SLOTS: Array<SlotControl> = Array::with_max_entries(1024, 0);

#[map(name = "TRK_COUNTERS")]
pub static COUNTERS: PerCpuArray<SlotCounters> = PerCpuArray::with_max_entries(1024, 0);

#[map(name = "TRK_ADOPT")]
pub static ADOPT: HashMap<u32, AdoptRequest> = HashMap::with_max_entries(256, 0);

#[map(name = "TRK_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "TRK_GLOBAL")]
pub static GLOBAL: PerCpuArray<GlobalCounters> = PerCpuArray::with_max_entries(1, 0);
