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
};

/// v1 controllers a slot gets a directory in, when they are not available in v2.
const V1_SLOT_CONTROLLERS: &[&str] = &["pids", "memory", "cpu", "cpuacct", "blkio"];
/// v2 controllers the tracker enables for its slots on a pure v2 system.
const V2_SLOT_CONTROLLERS: &[&str] = &["pids", "memory", "cpu", "io"];

impl Cgroups {
    /// Make the cgroups of a new slot and apply `limits`. A cgroup that cannot be made is a
    /// warning (the slot still works by its tag); a limit that cannot be enforced is an error,
    /// and then nothing is left behind.
    pub fn create(&self, slot_name: &str, limits: &Limits) -> Result<(SlotCgroups, Vec<String>)> {
        let mut warnings = vec![];
        let mut cg = SlotCgroups::default();
        let v2_ctrls = self.v2_controllers();
        if let Some(mount) = &self.mounts.unified {
            match self.make_v2(mount, slot_name, &v2_ctrls) {
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
            let dir = self.paths.slot_cgroup(mount, slot_name);
            match make_dir(&mount.join(self.paths.cgroup_parent())).and_then(|()| make_dir(&dir)) {
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

    fn make_v2(&self, mount: &Path, slot_name: &str, ctrls: &[String]) -> Result<PathBuf> {
        let parent = mount.join(self.paths.cgroup_parent());
        make_dir(&parent)?;
        // On a pure v2 system a controller reaches the slot only if it is enabled in the
        // `cgroup.subtree_control` of every directory above it, top-down. Each is enabled on
        // its own, so one the kernel refuses does not cost the others; a limit that needs a
        // missing one then fails with an error naming it (`SlotCgroups::set`).
        let wanted: Vec<&str> =
            V2_SLOT_CONTROLLERS.iter().copied().filter(|c| ctrls.iter().any(|v| v == c)).collect();
        let mut dir = mount.to_path_buf();
        let mut levels = vec![dir.clone()];
        for part in Path::new(self.paths.cgroup_parent()).components() {
            dir.push(part);
            levels.push(dir.clone());
        }
        for level in &levels {
            let enabled =
                fs::read_to_string(level.join("cgroup.subtree_control")).unwrap_or_default();
            for c in &wanted {
                if !enabled.split_whitespace().any(|e| e == *c) {
                    let _ = fs::write(level.join("cgroup.subtree_control"), format!("+{c}"));
                }
            }
        }
        let dir = self.paths.slot_cgroup(mount, slot_name);
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
    /// programs attach (at load). Returns it, if there is a cgroup2 hierarchy.
    pub fn ensure_parent(&self) -> Result<Option<PathBuf>> {
        let Some(m) = &self.mounts.unified else { return Ok(None) };
        let dir = m.join(self.paths.cgroup_parent());
        make_dir(&dir)?;
        Ok(Some(dir))
    }

    /// Remove this instance's parent directories if they are empty (used by unload).
    pub fn remove_parents(&self) {
        let mounts = self.mounts.unified.iter().chain(self.mounts.v1.values());
        for m in mounts {
            let _ = fs::remove_dir(m.join(self.paths.cgroup_parent()));
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

fn make_dir(dir: &Path) -> Result<()> {
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
