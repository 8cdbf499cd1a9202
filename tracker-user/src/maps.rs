//! Typed handles on the pinned maps, and the shapes the loader checks pins against.
use std::{
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::{
    Array, HashMap, IterableMap, Map, MapData, MapInfo, MapType, PerCpuArray, PerCpuValues,
};
use tracker_common::{
    AdoptRequest, Config, GlobalCounters, SlotControl, SlotCounters, TaskTag, map_name,
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
    shape::<u32, TaskTag>(map_name::TASKS, MapType::Hash),
    shape::<u32, SlotControl>(map_name::SLOTS, MapType::Array),
    shape::<u32, SlotCounters>(map_name::COUNTERS, MapType::PerCpuArray),
    shape::<u32, AdoptRequest>(map_name::ADOPT, MapType::Hash),
    shape::<u32, Config>(map_name::CONFIG, MapType::Array),
    shape::<u32, GlobalCounters>(map_name::GLOBAL, MapType::PerCpuArray),
];

const fn shape<K, V>(name: &'static str, map_type: MapType) -> MapShape {
    MapShape {
        name,
        map_type,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
    }
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
        let map_type = info
            .map_type()
            .map_err(|e| Error::bpf("reading map info", e))?;
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

/// The pinned maps of a loaded tracker.
pub struct Maps {
    pub tasks: HashMap<MapData, u32, TaskTag>,
    pub slots: Array<MapData, SlotControl>,
    pub counters: PerCpuArray<MapData, SlotCounters>,
    pub adopt: HashMap<MapData, u32, AdoptRequest>,
    pub config: Array<MapData, Config>,
    pub global: PerCpuArray<MapData, GlobalCounters>,
}

fn open_map(paths: &Paths, name: &str) -> Result<Map> {
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
        open_map($paths, $name)?
            .try_into()
            .map_err(|e| Error::bpf(format!("map {}", $name), e))?
    };
}

impl Maps {
    pub fn open(paths: &Paths) -> Result<Self> {
        Ok(Self {
            tasks: typed!(paths, map_name::TASKS),
            slots: typed!(paths, map_name::SLOTS),
            counters: typed!(paths, map_name::COUNTERS),
            adopt: typed!(paths, map_name::ADOPT),
            config: typed!(paths, map_name::CONFIG),
            global: typed!(paths, map_name::GLOBAL),
        })
    }

    /// How many tasks the tasks map can hold.
    pub fn tasks_capacity(&self) -> u32 {
        self.tasks
            .map()
            .info()
            .map(|i| i.max_entries())
            .unwrap_or(0)
    }

    pub fn max_slots(&self) -> u32 {
        self.slots.len()
    }

    pub fn tag(&self, tid: u32) -> Result<Option<TaskTag>> {
        match self.tasks.get(&tid, 0) {
            Ok(tag) => Ok(Some(tag)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(Error::bpf("reading the tasks map", e)),
        }
    }

    /// Every tagged task, read with `BPF_MAP_LOOKUP_BATCH`: its bucket cursor stays valid while
    /// entries are deleted, where a `get_next_key` walk restarts from the first key each time
    /// its current key vanishes, which under a fork storm could never finish.
    pub fn all_tags(&self) -> Result<Vec<(u32, TaskTag)>> {
        let fd = self.tasks_fd();
        crate::batch::lookup_all::<u32, TaskTag>(fd)
            .map_err(|e| Error::io("reading the tasks map", e))
    }

    pub fn tags_of(&self, slot: u32) -> Result<Vec<(u32, TaskTag)>> {
        let mut tags = self.all_tags()?;
        tags.retain(|(_, t)| t.slot == slot);
        Ok(tags)
    }

    fn tasks_fd(&self) -> i32 {
        self.tasks.map().fd().as_fd().as_raw_fd()
    }

    pub fn control(&self, slot: u32) -> Result<SlotControl> {
        self.slots
            .get(&slot, 0)
            .map_err(|e| Error::bpf(format!("reading slot {slot}"), e))
    }

    pub fn set_control(&mut self, slot: u32, ctl: SlotControl) -> Result<()> {
        self.slots
            .set(slot, ctl, 0)
            .map_err(|e| Error::bpf(format!("writing slot {slot}"), e))
    }

    /// Change only the flags of a slot. The kernel changes `live_tasks` and `peak_tasks`
    /// concurrently, and an array update rewrites the whole value, so the other fields are
    /// re-read immediately before: the window in which a concurrent change is lost is the
    /// length of one syscall, and flags change only when a slot is created, killed or released.
    pub fn set_flags(&mut self, slot: u32, set: u32, clear: u32) -> Result<()> {
        let mut ctl = self.control(slot)?;
        ctl.flags = (ctl.flags | set) & !clear;
        self.set_control(slot, ctl)
    }

    /// A slot's counters summed over CPUs.
    pub fn counters(&self, slot: u32) -> Result<SlotCounters> {
        let per_cpu = self
            .counters
            .get(&slot, 0)
            .map_err(|e| Error::bpf(format!("reading counters of slot {slot}"), e))?;
        Ok(per_cpu
            .iter()
            .fold(SlotCounters::default(), |acc, c| sum_counters(&acc, c)))
    }

    pub fn reset_counters(&mut self, slot: u32) -> Result<()> {
        let zero = zeroed_per_cpu::<SlotCounters>()?;
        self.counters
            .set(slot, zero, 0)
            .map_err(|e| Error::bpf(format!("resetting counters of slot {slot}"), e))
    }

    pub fn global(&self) -> Result<GlobalCounters> {
        let per_cpu = self
            .global
            .get(&0, 0)
            .map_err(|e| Error::bpf("reading global counters", e))?;
        Ok(per_cpu
            .iter()
            .fold(GlobalCounters::default(), |mut acc, c| {
                acc.tag_failures += c.tag_failures;
                acc
            }))
    }

    pub fn active_generation(&self) -> Result<u64> {
        Ok(self
            .config
            .get(&0, 0)
            .map_err(|e| Error::bpf("reading config", e))?
            .active_generation)
    }
}

fn zeroed_per_cpu<T: aya::Pod + Default>() -> Result<PerCpuValues<T>> {
    let n = aya::util::nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
    PerCpuValues::try_from(vec![T::default(); n]).map_err(|e| Error::io("per-CPU values", e))
}

fn sum_counters(a: &SlotCounters, b: &SlotCounters) -> SlotCounters {
    SlotCounters {
        tasks_started: a.tasks_started + b.tasks_started,
        tasks_exited: a.tasks_exited + b.tasks_exited,
        procs_started: a.procs_started + b.procs_started,
        procs_exited: a.procs_exited + b.procs_exited,
        execs: a.execs + b.execs,
        exits_by_signal: a.exits_by_signal + b.exits_by_signal,
        doom_kills: a.doom_kills + b.doom_kills,
        tag_failures: a.tag_failures + b.tag_failures,
        _reserved: [0; 8],
    }
}
