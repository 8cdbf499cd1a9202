//! What every promise's module works on: a loaded instance's paths, its pinned maps and the
//! machine's cgroups, and the slot records.
use std::sync::{Mutex, MutexGuard};

use crate::{
    cgroup::Cgroups,
    error::Result,
    maps::Maps,
    paths::Paths,
    preflight,
    registry::{self, SlotRecord},
};

pub(crate) struct Instance {
    pub paths: Paths,
    maps: Mutex<Maps>,
    pub cgroups: Cgroups,
}

impl Instance {
    pub fn open(paths: Paths) -> Result<Self> {
        preflight::require_root()?;
        let maps = Maps::open(&paths)?;
        let cgroups = Cgroups::detect(&paths)?;
        Ok(Self { paths, maps: Mutex::new(maps), cgroups })
    }

    pub fn maps(&self) -> MutexGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the maps inconsistent: they live in
        // the kernel, the guard only serialises our syscalls.
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn slot(&self, name: &str) -> Result<SlotRecord> {
        Ok(registry::read(&self.paths)?.get(name)?.clone())
    }

    /// The name of the slot that holds slot id `id`, for messages.
    pub fn slot_name_of(&self, id: u32) -> String {
        registry::read(&self.paths)
            .ok()
            .and_then(|r| r.slots.iter().find(|s| s.id == id).map(|s| s.name.clone()))
            .unwrap_or_else(|| format!("#{id}"))
    }
}
