//! Slot cgroups made again from the registry.
//!
//! systemd removes a delegated unit's empty cgroups when the unit stops (for tracker.service:
//! the `supervisor` leaf, every slot cgroup with no process in it, the instance's parent once
//! empty, and the delegated cgroup itself once all are gone), and the cgroup programs attached
//! to a removed parent go with it. The registry keeps what the slots were (paths, limits), so
//! the daemon makes them again when it starts, and a process entering a slot whose cgroup is
//! gone makes it again first: no limit is lost, and the network and device programs are
//! attached again to the new parent (an upgrade load) before any slot is made below it.
use std::{fs, os::unix::fs::MetadataExt as _};

use super::instance::Instance;
use crate::{
    cgroup::CgroupParent,
    error::{Error, Result},
    loader::{self, LoadOptions},
    registry::{self, SlotRecord},
};

/// Whether the instance's cgroup2 parent is not the directory the cgroup programs were
/// attached to at the last load (removed, or removed and made again).
pub(super) fn parent_was_removed(t: &Instance) -> bool {
    let Some(dir) = t.cgroups.parent_dir() else { return false };
    let now = fs::metadata(&dir).ok().map(|m| m.ino());
    // Read again: a load since this handle was opened records the new id.
    let recorded = CgroupParent::read(&t.paths).ok().and_then(|p| p.attached_id);
    match recorded {
        Some(at_load) => now != Some(at_load),
        // Loaded before the id was recorded, or with no parent made: nothing to compare.
        None => false,
    }
}

/// Make every slot cgroup that is gone again, with its limits, after attaching the cgroup
/// programs again if their parent went too. Returns a line per slot that could not be.
pub(super) fn all(t: &Instance) -> Vec<String> {
    let mut warnings = vec![];
    if let Err(e) = reattach_if_removed(t) {
        warnings.push(format!("the slots' cgroup parent: {e}"));
        return warnings;
    }
    let restored = registry::update(&t.paths, |reg| {
        Ok(reg
            .slots
            .iter()
            .filter_map(|rec| slot_locked(t, rec).err().map(|e| format!("slot {}: {e}", rec.name)))
            .collect::<Vec<_>>())
    });
    match restored {
        Ok(w) => warnings.extend(w),
        Err(e) => warnings.push(format!("restoring the slot cgroups: {e}")),
    }
    warnings
}

/// Make slot `rec`'s cgroups again if any is gone, before a process enters it.
pub(super) fn slot(t: &Instance, rec: &SlotRecord) -> Result<()> {
    if rec.cgroups.bound.is_some() || rec.cgroups.dirs().all(|d| d.is_dir()) {
        return Ok(());
    }
    reattach_if_removed(t)?;
    registry::update(&t.paths, |reg| slot_locked(t, reg.get(&rec.name)?))
}

/// An upgrade load attaches the cgroup programs to the parent made again.
pub(super) fn reattach_if_removed(t: &Instance) -> Result<()> {
    if parent_was_removed(t) {
        // Fails, naming the unit, while the delegated cgroup is gone: the load must not
        // go on without its cgroup programs.
        t.cgroups.ensure_parent()?;
        let report = loader::load(&t.paths, &LoadOptions::default())?;
        for w in &report.warnings {
            tracing::warn!("{w}");
        }
        tracing::info!(
            generation = report.generation,
            "the slots' cgroup parent had been removed: made it again and attached the \
                 cgroup programs to it"
        );
    }
    Ok(())
}

fn slot_locked(t: &Instance, rec: &SlotRecord) -> Result<()> {
    let cg = &rec.cgroups;
    if cg.bound.is_some() || cg.dirs().all(|d| d.is_dir()) {
        return Ok(());
    }
    if cg.unified.as_ref().is_some_and(|d| !d.is_dir()) {
        t.cgroups.ensure_parent()?;
    }
    for dir in cg.dirs() {
        if let Some(parent) = dir.parent() {
            crate::cgroup::make_dir(parent)?;
        }
        crate::cgroup::make_dir(dir)?;
    }
    cg.apply(&rec.limits)?;
    // A directory made again is a new cgroup: the network programs must find the slot
    // under its new id, and the old id must not hold a place in the map.
    if let Some(id) = cg.unified_id() {
        let mut maps = t.maps();
        let stale: Vec<u64> = maps
            .cgroup_slots
            .iter()
            .flatten()
            .filter(|(key, slot)| *slot == rec.id && *key != id)
            .map(|(key, _)| key)
            .collect();
        for key in stale {
            let _ = maps.cgroup_slots.remove(&key);
        }
        maps.cgroup_slots
            .insert(id, rec.id, 0)
            .map_err(|e| Error::bpf("recording the slot's cgroup", e))?;
    }
    tracing::info!(slot = rec.name, "made the slot's cgroups again, with its limits");
    Ok(())
}
