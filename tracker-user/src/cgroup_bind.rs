//! Slots bound to a cgroup the batch system made (Slurm's job cgroup, HTCondor's slot cgroup)
//! instead of cgroups of their own.
//!
//! A bound slot's tasks stay where the batch system put them, so its limits, its process
//! tracking and its accounting keep holding them; the tracker only tags. The binding is named
//! by one path relative to the hierarchy roots (`slurm/uid_0/job_42`), applied to every mounted
//! hierarchy where that directory exists: on a hybrid or v1 machine a batch cgroup is one
//! directory per controller (`/sys/fs/cgroup/memory/slurm/uid_0/job_42`, `.../freezer/...`),
//! on pure v2 it is one directory. An absolute path inside a mounted hierarchy names the same.
//!
//! The tracker never removes, moves anything out of, or writes limits into a bound cgroup.
use std::{
    fs,
    io::ErrorKind,
    path::{Component, Path, PathBuf},
};

use crate::{
    cgroup::{Cgroups, SlotCgroups},
    error::{Error, Result},
    paths, preflight,
    registry::RegistryData,
};

/// The v1 controllers whose directories a bound slot uses: the freezer to stop it, the others
/// for its processes and counters.
const BOUND_V1_CONTROLLERS: &[&str] = &["freezer", "memory", "pids", "cpu", "cpuacct", "blkio"];

impl Cgroups {
    /// Resolve `given` (relative to the hierarchy roots, or absolute inside a mounted one) to
    /// the directories of every hierarchy that has it. Refuses, with the reason, a path that
    /// does not exist, is not a cgroup directory, uses `..`, leaves its hierarchy through a
    /// symbolic link, or is a hierarchy's root.
    pub fn bind(&self, given: &Path) -> Result<SlotCgroups> {
        let bad =
            |why: &str| Error::BadCgroup { path: given.display().to_string(), why: why.into() };
        if given.as_os_str().is_empty() {
            return Err(bad("the path is empty"));
        }
        if given.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(bad("`..` is not allowed: name the cgroup directly"));
        }
        let rel = if given.is_absolute() { self.relative_of(given, &bad)? } else { clean(given) };
        if rel.as_os_str().is_empty() {
            return Err(bad("that is a hierarchy's root, the whole machine, not one job"));
        }
        let mut cg = SlotCgroups { bound: Some(rel.clone()), ..Default::default() };
        if let Some(mount) = &self.mounts().unified {
            cg.unified = existing(mount, &rel, &bad)?;
        }
        for (ctrl, mount) in &self.mounts().v1 {
            if BOUND_V1_CONTROLLERS.contains(&ctrl.as_str())
                && let Some(dir) = existing(mount, &rel, &bad)?
            {
                cg.v1.insert(ctrl.clone(), dir);
            }
        }
        if cg.unified.is_none() && cg.v1.is_empty() {
            return Err(bad(&format!(
                "no mounted cgroup hierarchy has a directory {} (it does not exist)",
                rel.display()
            )));
        }
        Ok(cg)
    }

    /// An absolute path's place in its hierarchy: resolved (symbolic links followed), it must
    /// be a cgroup directory under one of the mounts the tracker uses.
    fn relative_of(&self, given: &Path, bad: &dyn Fn(&str) -> Error) -> Result<PathBuf> {
        let real = fs::canonicalize(given).map_err(|e| match e.kind() {
            ErrorKind::NotFound => bad("it does not exist"),
            _ => bad(&e.to_string()),
        })?;
        if !real.is_dir() {
            return Err(bad("it is not a directory"));
        }
        let m = self.mounts();
        let mount = m
            .unified
            .iter()
            .chain(m.v1.values())
            .filter(|mount| real.starts_with(mount))
            .max_by_key(|mount| mount.as_os_str().len())
            .ok_or_else(|| {
                bad("it is not in a mounted cgroup hierarchy (see /proc/self/mountinfo)")
            })?;
        if !is_cgroup(&real) {
            return Err(bad("it is not a cgroup directory (wrong filesystem)"));
        }
        Ok(real.strip_prefix(mount).map(Path::to_path_buf).unwrap_or_default())
    }
}

/// `rel` under `mount`, if that hierarchy has it: a cgroup directory that stays inside it.
fn existing(mount: &Path, rel: &Path, bad: &dyn Fn(&str) -> Error) -> Result<Option<PathBuf>> {
    let dir = paths::bound_cgroup(mount, rel);
    let real = match fs::canonicalize(&dir) {
        Ok(real) => real,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(&format!("{}: {e}", dir.display()))),
    };
    if !real.starts_with(mount) || real == mount {
        return Err(bad(&format!("{} leads out of its hierarchy", dir.display())));
    }
    if !real.is_dir() || !is_cgroup(&real) {
        return Err(bad(&format!("{} is not a cgroup directory", dir.display())));
    }
    Ok(Some(real))
}

fn is_cgroup(dir: &Path) -> bool {
    preflight::fs_magic_is(dir, preflight::CGROUP_SUPER_MAGIC)
        || preflight::fs_magic_is(dir, preflight::CGROUP2_SUPER_MAGIC)
}

/// The path without `.` components.
fn clean(p: &Path) -> PathBuf {
    p.components().filter(|c| matches!(c, Component::Normal(_))).collect()
}

/// The slot of `reg` whose cgroup directories are `cg`'s, or contain or lie inside them: one
/// job's tasks must not be two slots' cgroup members.
pub(crate) fn check_free(reg: &RegistryData, cg: &SlotCgroups) -> Result<()> {
    for other in &reg.slots {
        for mine in cg.dirs() {
            if let Some(theirs) =
                other.cgroups.dirs().find(|d| mine.starts_with(d) || d.starts_with(mine))
            {
                return Err(Error::CgroupTaken {
                    path: mine.clone(),
                    slot: other.name.clone(),
                    theirs: theirs.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::registry::SlotRecord;

    fn slot(name: &str, dir: &str) -> SlotRecord {
        let cgroups = SlotCgroups { unified: Some(dir.into()), ..Default::default() };
        SlotRecord { name: name.into(), cgroups, ..Default::default() }
    }

    #[test]
    fn a_cgroup_its_parent_or_its_child_is_taken_a_sibling_is_not() {
        let reg = RegistryData {
            slots: vec![slot("job-1", "/cg/slurm/uid_0/job_1")],
            ..Default::default()
        };
        let want = |dir: &str| SlotCgroups { unified: Some(dir.into()), ..Default::default() };
        for taken in ["/cg/slurm/uid_0/job_1", "/cg/slurm/uid_0", "/cg/slurm/uid_0/job_1/step_0"] {
            assert!(
                matches!(check_free(&reg, &want(taken)), Err(Error::CgroupTaken { ref slot, .. }) if slot == "job-1"),
                "{taken} accepted"
            );
        }
        // A prefix of the name is not a parent.
        for free in ["/cg/slurm/uid_0/job_10", "/cg/slurm/uid_0/job_2"] {
            assert!(check_free(&reg, &want(free)).is_ok(), "{free} refused");
        }
    }

    #[test]
    fn dots_are_dropped_from_relative_paths() {
        assert_eq!(clean(Path::new("./slurm/./uid_0/job_5/")), Path::new("slurm/uid_0/job_5"));
    }
}
