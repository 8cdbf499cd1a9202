//! A slot's life: made with its cgroups and kernel state, read, changed, forgotten.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tracker_common::{SlotControl, SlotCounters, SlotCounts, SlotState, TaskTag};

use super::{
    instance::Instance,
    live,
    usage::{self, Usage},
};
use crate::{
    access_rules::{self, AccessMaps},
    cgroup::SlotCgroups,
    cgroup_bind,
    error::{Error, Result},
    isolation,
    limits::Limits,
    memory_link,
    procinfo::{self, ProcessInfo},
    registry::{self, SlotRecord},
};

/// What a new slot is.
#[derive(Clone, Debug, Default)]
pub struct SlotSpec {
    pub name: String,
    pub owner_uid: u32,
    pub limits: Limits,
    /// Bind the slot to this cgroup the batch system made, instead of making its own
    /// (relative to the hierarchy roots, or absolute; see cgroup_bind.rs).
    pub cgroup: Option<PathBuf>,
}

/// A slot and its kernel-side state, read now.
#[derive(Clone, Debug, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub id: u32,
    pub owner_uid: u32,
    pub created_unix_ms: u64,
    /// Tasks (threads included) in the slot now.
    pub tasks_live: u64,
    pub tasks_peak: u64,
    pub doomed: bool,
    /// Suspended and not resumed since.
    pub suspended: bool,
    pub cpu_seconds: f64,
    pub memory_current_bytes: u64,
    pub memory_peak_bytes: u64,
    pub cgroups: SlotCgroups,
    pub limits: Limits,
    /// What the kernel counted for the slot (tracker-common's `for_each_slot_count!`).
    #[serde(flatten)]
    pub counts: SlotCounts,
}

/// Create a slot. Returns its record and any warnings (a cgroup that could not be made).
pub(super) fn create(t: &Instance, spec: &SlotSpec) -> Result<(SlotRecord, Vec<String>)> {
    validate_slot_name(&spec.name)?;
    if spec.cgroup.is_none() {
        // The network and device programs must be on the parent the slot goes under.
        super::restore::reattach_if_removed(t)?;
    }
    registry::update(&t.paths, |reg| {
        if reg.find(&spec.name).is_some() {
            return Err(Error::SlotExists(spec.name.clone()));
        }
        let mut maps = t.maps();
        let id = reg.free_id(maps.max_slots(), |id| maps.id_in_use(id).unwrap_or(true))?;
        let epoch = reg.next_epoch;
        reg.next_epoch += 1;
        let (cgroups, warnings) = match &spec.cgroup {
            Some(path) => {
                if !spec.limits.is_empty() {
                    return Err(Error::BoundLimits(spec.name.clone()));
                }
                let cg = t.cgroups.bind(path)?;
                cgroup_bind::check_free(reg, &cg)?;
                (cg, vec![])
            }
            None => t.cgroups.create(&spec.name, &spec.limits)?,
        };
        let has_cgroup2 = cgroups.unified.is_some();
        if let Err(e) = access_rules::check_enforceable(&t.paths, &spec.limits, has_cgroup2)
            .and_then(|()| AccessMaps::open(&t.paths))
            .and_then(|mut p| p.apply(id, &spec.limits))
        {
            let _ = t.cgroups.remove(&cgroups);
            return Err(e);
        }
        // The network programs see only the instance's own cgroups: a bound cgroup is
        // not under them.
        if let Some(cg) = cgroups.unified_id().filter(|_| cgroups.bound.is_none()) {
            maps.cgroup_slots
                .insert(cg, id, 0)
                .map_err(|e| Error::bpf("recording the slot's cgroup", e))?;
        }
        maps.reset_kernel_records(id)?;
        maps.set_control(id, SlotControl { epoch, ..Default::default() })?;
        let record = SlotRecord {
            name: spec.name.clone(),
            id,
            epoch,
            owner_uid: spec.owner_uid,
            created_unix_ms: now_ms(),
            cgroups,
            limits: spec.limits.clone(),
            suspended: false,
            adopted: false,
        };
        reg.slots.push(record.clone());
        // Before any task enters it: a slot whose memory no cgroup of its own keeps needs
        // rss_stat from its first page on.
        if let Err(e) = memory_link::sync(&t.paths, &reg.slots) {
            let _ = t.cgroups.remove(&record.cgroups);
            return Err(e);
        }
        Ok((record, warnings))
    })
}

pub(super) fn status(t: &Instance, name: &str) -> Result<SlotStatus> {
    let rec = t.slot(name)?;
    let usage = usage::of(t, name)?;
    status_of(t, &rec, &usage)
}

fn status_of(t: &Instance, rec: &SlotRecord, usage: &Usage) -> Result<SlotStatus> {
    let maps = t.maps();
    let ctl = maps.control(rec.id)?;
    let st = maps.state(rec.id)?;
    Ok(SlotStatus {
        name: rec.name.clone(),
        id: rec.id,
        owner_uid: rec.owner_uid,
        created_unix_ms: rec.created_unix_ms,
        tasks_live: st.live_tasks,
        tasks_peak: st.peak_tasks,
        doomed: ctl.flags & tracker_common::SLOT_DOOMED != 0,
        suspended: rec.suspended,
        cpu_seconds: usage.cpu_seconds(),
        memory_current_bytes: usage.memory_current_bytes,
        memory_peak_bytes: usage.memory_peak_bytes,
        cgroups: rec.cgroups.clone(),
        limits: rec.limits.clone(),
        counts: usage.counts,
    })
}

/// Every slot, by name.
pub(super) fn all(t: &Instance) -> Result<Vec<SlotStatus>> {
    let reg = registry::read(&t.paths)?;
    let usage: BTreeMap<String, Usage> =
        usage::all(t)?.into_iter().map(|u| (u.slot.clone(), u)).collect();
    let mut out: Vec<SlotStatus> = reg
        .slots
        .iter()
        .map(|r| status_of(t, r, usage.get(&r.name).unwrap_or(&Usage::default())))
        .collect::<Result<_>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What the kernel counts for slot `name` now, raw (no clamping of a transiently negative
/// memory figure): its shared state and its per-CPU counters summed. For health checks.
pub(super) fn kernel_counts(t: &Instance, name: &str) -> Result<(SlotState, SlotCounters)> {
    let rec = t.slot(name)?;
    let maps = t.maps();
    Ok((maps.state(rec.id)?, maps.counters(rec.id)?))
}

/// The tagged tasks of a slot, as the kernel has them now.
pub(super) fn tags(t: &Instance, name: &str) -> Result<Vec<(u32, TaskTag)>> {
    let rec = t.slot(name)?;
    live::tags_of(t, rec.id)
}

/// The live processes of a slot (one row per thread group), or every thread.
pub(super) fn processes(t: &Instance, name: &str, threads: bool) -> Result<Vec<ProcessInfo>> {
    let tags = tags(t, name)?;
    let mut rows: BTreeMap<u32, ProcessInfo> = BTreeMap::new();
    for (tid, tag) in &tags {
        // A process is shown through its leader, or through a thread when the leader is
        // gone; with `threads` every task gets its row.
        let key = if threads { *tid } else { tag.tgid };
        if rows.contains_key(&key) && *tid != tag.tgid {
            continue;
        }
        if let Some(info) = procinfo::describe(*tid, tag) {
            let info = if threads { info } else { ProcessInfo { pid: tag.tgid, ..info } };
            rows.insert(key, info);
        }
    }
    Ok(rows.into_values().collect())
}

/// A running process is about to be adopted into slot `name`: its pages from before are
/// charged to its former cgroup, and stay there. From now on the slot's memory comes from its
/// processes' resident pages, and rss_stat is attached before the process is tagged.
pub(super) fn mark_adopted(t: &Instance, name: &str) -> Result<()> {
    registry::update(&t.paths, |reg| {
        let rec = reg.get_mut(name)?;
        if rec.adopted || rec.cgroups.bound.is_some() {
            return Ok(());
        }
        rec.adopted = true;
        memory_link::sync(&t.paths, &reg.slots)
    })
}

/// Forget an empty slot: its record, its cgroups and its kernel state.
pub(super) fn release(t: &Instance, name: &str) -> Result<()> {
    registry::update(&t.paths, |reg| {
        let rec = reg.get(name)?.clone();
        let tasks = live::tags_of(t, rec.id)?.len() as u64;
        let mut maps = t.maps();
        if tasks > 0 {
            return Err(Error::SlotBusy { name: name.to_owned(), tasks });
        }
        if let Some(cg) = rec.cgroups.unified_id() {
            let _ = maps.cgroup_slots.remove(&cg);
        }
        t.cgroups.remove(&rec.cgroups)?;
        maps.set_control(rec.id, SlotControl::default())?;
        AccessMaps::open(&t.paths)?.clear(rec.id)?;
        isolation::remove_scratch(&t.paths, name)?;
        reg.slots.retain(|s| s.name != name);
        if let Err(e) = memory_link::sync(&t.paths, &reg.slots) {
            tracing::warn!("rss_stat left attached: {e}");
        }
        Ok(())
    })
}

/// Change the limits of a running slot (as `systemctl set-property` does). Only the
/// limits given in `change` are changed.
pub(super) fn set_limits(t: &Instance, name: &str, change: &Limits) -> Result<Limits> {
    registry::update(&t.paths, |reg| {
        let rec = reg
            .slots
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::UnknownSlot(name.to_owned()))?;
        if rec.cgroups.bound.is_some() && !change.is_empty() {
            return Err(Error::BoundLimits(name.to_owned()));
        }
        let new = rec.limits.merged(change);
        access_rules::check_enforceable(&t.paths, change, rec.cgroups.unified.is_some())?;
        rec.cgroups.apply(change)?;
        AccessMaps::open(&t.paths)?.apply(rec.id, &new)?;
        rec.limits = new.clone();
        Ok(new)
    })
}

/// Slot names travel through cgroup paths, file names and command lines: keep them plain.
pub fn validate_slot_name(name: &str) -> Result<()> {
    let why = if name.is_empty() || name.len() > 64 {
        Some("use 1 to 64 characters")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Some("use only letters, digits, '.', '_' and '-'")
    } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
        Some("start with a letter or a digit")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::InvalidSlotName { name: name.to_owned(), why }),
        None => Ok(()),
    }
}

/// A slot name for `tracker run` without `--slot`.
pub fn generated_slot_name() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("run-{}-{:04x}", std::process::id(), nanos & 0xffff)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_batch_systems_use_are_valid() {
        for ok in ["1234", "1234.0", "slot1_3", "job-42.batch", "a"] {
            assert!(validate_slot_name(ok).is_ok(), "{ok} refused");
        }
    }

    #[test]
    fn unsafe_slot_names_are_refused() {
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", "é", &"x".repeat(65)] {
            assert!(validate_slot_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn generated_names_are_valid() {
        assert!(validate_slot_name(&generated_slot_name()).is_ok());
    }
}
