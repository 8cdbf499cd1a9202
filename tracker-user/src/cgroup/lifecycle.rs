//! Making and removing a slot's cgroups (and the instance's parent directories), and moving
//! a process into them.
use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use super::{Cgroups, SlotCgroups};
use crate::{
    error::{Error, Result},
    limits::Limits,
    paths::{self, Paths},
};

/// v1 controllers a slot gets a directory in, when they are not available in v2.
const V1_SLOT_CONTROLLERS: &[&str] = &["pids", "memory", "cpu", "cpuacct", "blkio"];

impl Cgroups {
    /// Make the cgroups of a new slot and apply `limits`. A cgroup that cannot be made is a
    /// warning (the slot still works by its tag); a limit that cannot be enforced is an error,
    /// and then nothing is left behind.
    pub fn create(&self, slot_name: &str, limits: &Limits) -> Result<(SlotCgroups, Vec<String>)> {
        let mut warnings = vec![];
        let mut cg = SlotCgroups::default();
        let v2_ctrls = self.v2_controllers();
        if let Some(mount) = &self.mounts.unified {
            match self.make_v2(mount, slot_name) {
                Ok(dir) => cg.unified = Some(dir),
                Err(e) => warnings.push(format!("no cgroup2 directory for the slot: {e}")),
            }
        }
        let mut wanted: Vec<&str> = V1_SLOT_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !v2_ctrls.iter().any(|v| v == c))
            .collect();
        if cg.unified.is_none() {
            wanted.push("freezer");
        }
        for ctrl in wanted {
            let Some(mount) = self.mounts.v1(ctrl) else {
                continue;
            };
            let parent = self.paths.default_cgroup_parent();
            let dir = Paths::slot_cgroup(mount, &parent, slot_name);
            match make_dir(&mount.join(&parent)).and_then(|()| make_dir(&dir)) {
                Ok(()) => {
                    cg.v1.insert(ctrl.to_owned(), dir);
                }
                Err(e) => warnings.push(format!("no v1 {ctrl} cgroup for the slot: {e}")),
            }
        }
        if let Err(e) = cg.apply(limits) {
            let _ = self.remove(&cg);
            return Err(e);
        }
        Ok((cg, warnings))
    }

    fn make_v2(&self, mount: &Path, slot_name: &str) -> Result<PathBuf> {
        self.ensure_parent()?;
        let dir = Paths::slot_cgroup(mount, &self.parent.rel, slot_name);
        make_dir(&dir)?;
        Ok(dir)
    }

    /// Remove a slot's cgroup directories. They must be empty. A bound slot's are left to
    /// the batch system that made them.
    pub fn remove(&self, cg: &SlotCgroups) -> Result<()> {
        if cg.bound.is_some() {
            return Ok(());
        }
        for dir in cg.dirs() {
            remove_dir(dir)?;
        }
        Ok(())
    }

    /// Make this instance's cgroup2 parent directory, where the slots go and the network
    /// programs attach (at load), with the slot controllers enabled down to it (see
    /// `parent`). Returns it, if there is a cgroup2 hierarchy, and a line per controller
    /// problem.
    pub fn ensure_parent(&self) -> Result<Option<(PathBuf, Vec<String>)>> {
        let Some(m) = &self.mounts.unified else { return Ok(None) };
        self.parent.ensure(m).map(Some)
    }

    /// The instance's cgroup2 parent directory, made or not.
    pub fn parent_dir(&self) -> Option<PathBuf> {
        self.mounts.unified.as_ref().map(|m| paths::cgroup_dir(m, &self.parent.rel))
    }

    /// Remove this instance's parent directories if they are empty (used by unload).
    pub fn remove_parents(&self) {
        let v2 = self.parent_dir();
        let v1 = self.mounts.v1.values().map(|m| m.join(self.paths.default_cgroup_parent()));
        for dir in v2.into_iter().chain(v1) {
            let _ = fs::remove_dir(dir);
        }
    }
}

impl SlotCgroups {
    /// Put process `pid` in every cgroup of the slot.
    pub fn add_process(&self, pid: u32) -> Result<()> {
        for dir in self.dirs() {
            let procs = dir.join("cgroup.procs");
            match fs::write(&procs, pid.to_string()) {
                Ok(()) => {}
                // The process exited meanwhile: nothing to move.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
                Err(e) => {
                    return Err(Error::io(format!("moving pid {pid} to {}", procs.display()), e));
                }
            }
        }
        Ok(())
    }
}

/// mkdir that takes an existing directory as made.
pub(crate) fn make_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", dir.display()), e)),
    }
}

/// rmdir, retrying briefly: a cgroup whose last task is exiting can be busy for a moment.
fn remove_dir(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(Error::io(format!("removing {}", dir.display()), e)),
        }
    }
}
