//! Typed handles on the pinned maps, and the shapes the loader checks pins against.
use std::mem::size_of;

use aya::maps::lpm_trie::Key;
use aya::maps::{
    Array, HashMap, Map, MapData, MapError, MapInfo, MapType, PerCpuArray, PerCpuValues,
};
use tracker_common::{
    AdoptRequest, AllowPorts, Config, DeviceKey, GlobalCounters, MmRss, Net4, Net6, NetPolicy,
    Reader, SlotControl, SlotCounters, SlotState, TAG_EXITED, TaskTag, UsageRequest, map_name,
};

use crate::{
    error::{Error, Result},
    paths::Paths,
};

/// What a pinned map must look like for this build to use it.
pub struct MapShape {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
}

pub const SHAPES: &[MapShape] = &[
    shape::<u32, TaskTag>(map_name::TASKS, MapType::Array),
    shape::<u32, SlotControl>(map_name::SLOTS, MapType::Array),
    shape::<u32, SlotState>(map_name::SLOT_STATE, MapType::Array),
    shape::<u32, SlotCounters>(map_name::COUNTERS, MapType::PerCpuArray),
    shape::<u32, AdoptRequest>(map_name::ADOPT, MapType::Hash),
    shape::<u32, Config>(map_name::CONFIG, MapType::Array),
    shape::<u32, Reader>(map_name::READER, MapType::Array),
    shape::<u32, GlobalCounters>(map_name::GLOBAL, MapType::PerCpuArray),
    shape::<u32, u64>(map_name::PENDING_FREE, MapType::Array),
    shape::<u32, MmRss>(map_name::MM_RSS, MapType::Hash),
    shape::<u32, UsageRequest>(map_name::USAGE, MapType::Hash),
    shape::<u64, u32>(map_name::CGROUP_SLOTS, MapType::Hash),
    MapShape { name: map_name::EVENTS, map_type: MapType::RingBuf, key_size: 0, value_size: 0 },
    shape::<u32, NetPolicy>(map_name::NET_POLICY, MapType::Hash),
    shape::<Key<Net4>, AllowPorts>(map_name::ALLOW4, MapType::LpmTrie),
    shape::<Key<Net6>, AllowPorts>(map_name::ALLOW6, MapType::LpmTrie),
    shape::<DeviceKey, u32>(map_name::DENY_DEV, MapType::Hash),
    shape::<[u64; 2], u32>(map_name::EXITED, MapType::Hash),
    shape::<u32, u64>(map_name::EXIT_CPU, MapType::Array),
];

const fn shape<K, V>(name: &'static str, map_type: MapType) -> MapShape {
    MapShape { name, map_type, key_size: size_of::<K>() as u32, value_size: size_of::<V>() as u32 }
}

impl MapShape {
    /// `Ok(None)` if nothing is pinned yet, `Ok(Some(info))` if a compatible map is.
    pub fn check_pin(&self, paths: &Paths) -> Result<Option<MapInfo>> {
        let path = paths.map_pin(self.name);
        if !path.exists() {
            return Ok(None);
        }
        let info = MapInfo::from_pin(&path)
            .map_err(|e| Error::bpf(format!("opening {}", path.display()), e))?;
        let map_type = info.map_type().map_err(|e| Error::bpf("reading map info", e))?;
        let mismatch = if map_type != self.map_type {
            Some(format!("type {map_type:?}, expected {:?}", self.map_type))
        } else if info.key_size() != self.key_size || info.value_size() != self.value_size {
            Some(format!(
                "key/value sizes {}/{}, expected {}/{}",
                info.key_size(),
                info.value_size(),
                self.key_size,
                self.value_size
            ))
        } else {
            None
        };
        match mismatch {
            Some(detail) => Err(Error::IncompatiblePin { path, detail }),
            None => Ok(Some(info)),
        }
    }
}

/// The pinned maps of a loaded tracker. Each map value has one writer: user space writes
/// `slots` (flags), `config` (the loader) and the reader map (the event reader); the kernel
/// writes `slot_state`, `counters`, `global`, `mm_rss` and the tasks array, which user space
/// only reads (and zeroes for a slot id that no task carries, when a slot is created).
pub struct Maps {
    /// Read one entry at a time: the array is sized to pid_max, which can be 4 million.
    tasks: Array<MapData, TaskTag>,
    pub slots: Array<MapData, SlotControl>,
    slot_state: Array<MapData, SlotState>,
    pub counters: PerCpuArray<MapData, SlotCounters>,
    pub adopt: HashMap<MapData, u32, AdoptRequest>,
    pub config: Array<MapData, Config>,
    pub global: PerCpuArray<MapData, GlobalCounters>,
    pub usage: HashMap<MapData, u32, UsageRequest>,
    pub cgroup_slots: HashMap<MapData, u64, u32>,
    pub mm_rss: HashMap<MapData, u32, MmRss>,
}

/// The pinned map `name`, untyped.
pub(crate) fn open_map(paths: &Paths, name: &str) -> Result<Map> {
    let path = paths.map_pin(name);
    if !path.exists() {
        return Err(Error::NotLoaded(path));
    }
    let data = MapData::from_pin(&path)
        .map_err(|e| Error::bpf(format!("opening {}", path.display()), e))?;
    Map::from_map_data(data).map_err(|e| Error::bpf(format!("opening {}", path.display()), e))
}

macro_rules! typed {
    ($paths:expr, $name:expr) => {
        open_map($paths, $name)?.try_into().map_err(|e| Error::bpf(format!("map {}", $name), e))?
    };
}

impl Maps {
    pub fn open(paths: &Paths) -> Result<Self> {
        Ok(Self {
            tasks: typed!(paths, map_name::TASKS),
            slots: typed!(paths, map_name::SLOTS),
            slot_state: typed!(paths, map_name::SLOT_STATE),
            counters: typed!(paths, map_name::COUNTERS),
            adopt: typed!(paths, map_name::ADOPT),
            config: typed!(paths, map_name::CONFIG),
            global: typed!(paths, map_name::GLOBAL),
            usage: typed!(paths, map_name::USAGE),
            cgroup_slots: typed!(paths, map_name::CGROUP_SLOTS),
            mm_rss: typed!(paths, map_name::MM_RSS),
        })
    }

    /// How many tasks the tasks map can hold (one entry per possible tid).
    pub fn tasks_capacity(&self) -> u32 {
        self.tasks.len()
    }

    pub fn max_slots(&self) -> u32 {
        self.slots.len()
    }

    /// The tag at `tid`, if the entry holds a live task (not one that has exited and awaits
    /// its free). Whether it names the task that has that tid now is for the
    /// caller to check against the start time.
    pub fn tag(&self, tid: u32) -> Result<Option<TaskTag>> {
        match self.tasks.get(&tid, 0) {
            Ok(t) => Ok(Some(t).filter(|t| is_live(t.slot))),
            // A tid beyond the array (pid_max raised after the load) has no tag.
            Err(MapError::OutOfBounds { .. }) => Ok(None),
            Err(e) => Err(Error::bpf(format!("reading the tag of {tid}"), e)),
        }
    }

    /// Tasks of `slot` that have exited and await their free, where their CPU time is final
    /// and added to the slot's counters: counted in the kernel, so this costs one read
    /// whatever pid_max is.
    pub fn harvests_pending(&self, slot: u32) -> Result<u64> {
        let c = self.counters(slot)?;
        // The per-CPU values are read one CPU after another: an exit and its free on two CPUs
        // may be seen as the free alone, never as a task pending that is not.
        Ok(c.counts.tasks_exited.saturating_sub(c.counts.tasks_finished))
    }

    pub fn control(&self, slot: u32) -> Result<SlotControl> {
        self.slots.get(&slot, 0).map_err(|e| Error::bpf(format!("reading slot {slot}"), e))
    }

    pub fn set_control(&mut self, slot: u32, ctl: SlotControl) -> Result<()> {
        self.slots.set(slot, ctl, 0).map_err(|e| Error::bpf(format!("writing slot {slot}"), e))
    }

    /// Change only the flags of a slot. The record is user space's alone (the kernel counts
    /// in `SlotState`), so rewriting it loses no kernel update.
    pub fn set_flags(&mut self, slot: u32, set: u32, clear: u32) -> Result<()> {
        let mut ctl = self.control(slot)?;
        ctl.flags = (ctl.flags | set) & !clear;
        self.set_control(slot, ctl)
    }

    /// What the kernel counts for a slot now (live tasks, memory).
    pub fn state(&self, slot: u32) -> Result<SlotState> {
        self.slot_state.get(&slot, 0).map_err(|e| Error::bpf(format!("reading slot {slot}"), e))
    }

    /// Whether the kernel still counts tasks under slot id `slot`: a live one in `live_tasks`,
    /// an exited one not yet freed in `harvests_pending` (a released slot's zombie, until its
    /// parent reaps it). Such an id is not given to a new slot, which would get their CPU.
    pub fn id_in_use(&self, slot: u32) -> Result<bool> {
        Ok(self.state(slot)?.live_tasks != 0 || self.harvests_pending(slot)? != 0)
    }

    /// Zero the kernel's records of slot id `slot` for a new slot. Only for an id that no
    /// task carries (checked here, from the kernel's counts: no scan of the tasks array), so
    /// that no kernel program can be changing them.
    pub fn reset_kernel_records(&mut self, slot: u32) -> Result<()> {
        // Every entry that carries a slot id is counted in the kernel: a live task in
        // `live_tasks`, an exited one not yet freed in `harvests_pending`.
        if self.id_in_use(slot)? {
            return Err(Error::SlotIdInUse(slot));
        }
        // The memory entries (keyed by tgid, so never more than pid_max) are not deleted: a
        // delete races with the kernel handing the entry to a new process with that tgid,
        // whose bytes would then never leave its slot. An entry of a gone process is empty.
        self.slot_state
            .set(slot, SlotState::default(), 0)
            .map_err(|e| Error::bpf(format!("resetting slot {slot}"), e))?;
        self.reset_counters(slot)
    }

    /// A slot's counters summed over CPUs.
    pub fn counters(&self, slot: u32) -> Result<SlotCounters> {
        let per_cpu = self
            .counters
            .get(&slot, 0)
            .map_err(|e| Error::bpf(format!("reading counters of slot {slot}"), e))?;
        Ok(per_cpu.iter().fold(SlotCounters::default(), |mut acc, c| {
            acc.add(c);
            acc
        }))
    }

    pub fn reset_counters(&mut self, slot: u32) -> Result<()> {
        let zero = zeroed_per_cpu::<SlotCounters>()?;
        self.counters
            .set(slot, zero, 0)
            .map_err(|e| Error::bpf(format!("resetting counters of slot {slot}"), e))
    }

    /// Tagged tasks that have exited and are not yet freed (the kernel's count, kept so that
    /// the free program reads no task while it is 0): `None` for an instance loaded before it
    /// was kept, or upgraded from one (`PENDING_FREE_UNKNOWN`).
    pub fn pending_frees(paths: &Paths) -> Result<Option<u64>> {
        if !paths.map_pin(map_name::PENDING_FREE).exists() {
            return Ok(None);
        }
        let map: Array<MapData, u64> = typed!(paths, map_name::PENDING_FREE);
        let n = map.get(&0, 0).map_err(|e| Error::bpf("reading the pending-free count", e))?;
        // From half the mark up: the mark itself, or a wrap below 0 for an instant (a close
        // that lowered the count before the raise it pairs with was seen); neither is a count.
        Ok((n < tracker_common::PENDING_FREE_UNKNOWN / 2).then_some(n))
    }

    pub fn global(&self) -> Result<GlobalCounters> {
        let per_cpu =
            self.global.get(&0, 0).map_err(|e| Error::bpf("reading global counters", e))?;
        Ok(per_cpu.iter().fold(GlobalCounters::default(), |mut acc, c| {
            acc.tag_failures += c.tag_failures;
            acc.events_lost += c.events_lost;
            acc.pid_max_refused += c.pid_max_refused;
            acc
        }))
    }

    pub fn active_generation(&self) -> Result<u64> {
        Ok(self.config.get(&0, 0).map_err(|e| Error::bpf("reading config", e))?.active_generation)
    }
}

fn zeroed_per_cpu<T: aya::Pod + Default>() -> Result<PerCpuValues<T>> {
    let n = aya::util::nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
    PerCpuValues::try_from(vec![T::default(); n]).map_err(|e| Error::io("per-CPU values", e))
}

/// An entry's slot field names a live task (set, and not marked exited).
fn is_live(slot: u32) -> bool {
    slot != 0 && slot & TAG_EXITED == 0
}
