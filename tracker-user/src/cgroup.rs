//! A slot's cgroups, on whichever layout the machine has.
//!
//! - pure cgroup v2 (`/sys/fs/cgroup`): one directory, with the controllers enabled for it;
//! - hybrid (cgroup2 at `/sys/fs/cgroup/unified` without controllers, v1 controllers beside it):
//!   a v2 directory for freeze, kill and BPF programs, and v1 directories for the controllers;
//! - v1 only: v1 directories, the freezer included;
//! - none usable: no cgroups; tagging and kill work through the kernel tag alone.
//!
//! The cgroups are a means, not the truth: the kernel tag is. A root job can leave its cgroup,
//! never its tag.
use std::{
    collections::BTreeMap,
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, IoContext, Result},
    limits::Limits,
    paths::{CgroupMounts, Paths},
};

/// v1 controllers a slot gets a directory in, when they are not available in v2.
const V1_SLOT_CONTROLLERS: &[&str] = &["pids", "memory", "cpu", "cpuacct", "blkio"];
/// v2 controllers the tracker enables for its slots on a pure v2 system.
const V2_SLOT_CONTROLLERS: &[&str] = &["pids", "memory", "cpu", "io"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Unified,
    Hybrid,
    Legacy,
    None,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Unified => "cgroup v2",
            Layout::Hybrid => "hybrid (cgroup v2 without controllers + v1 controllers)",
            Layout::Legacy => "cgroup v1",
            Layout::None => "none",
        })
    }
}

/// The cgroup directories of one slot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotCgroups {
    /// The slot's cgroup2 directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unified: Option<PathBuf>,
    /// The slot's v1 directory per controller.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub v1: BTreeMap<String, PathBuf>,
    /// Set when the directories are the batch system's (see cgroup_bind.rs): the path they
    /// were bound by, relative to the hierarchy roots. The tracker never removes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<PathBuf>,
}

/// The machine's cgroup hierarchies, as far as the tracker uses them.
#[derive(Clone, Debug)]
pub struct Cgroups {
    mounts: CgroupMounts,
    paths: Paths,
}

impl Cgroups {
    pub fn detect(paths: &Paths) -> Result<Self> {
        Ok(Self { mounts: CgroupMounts::detect()?, paths: paths.clone() })
    }

    pub fn mounts(&self) -> &CgroupMounts {
        &self.mounts
    }

    pub fn layout(&self) -> Layout {
        match (&self.mounts.unified, self.mounts.v1.is_empty()) {
            (Some(_), true) => Layout::Unified,
            (Some(_), false) => Layout::Hybrid,
            (None, false) => Layout::Legacy,
            (None, true) => Layout::None,
        }
    }

    /// Controllers available in the cgroup2 hierarchy.
    fn v2_controllers(&self) -> Vec<String> {
        self.mounts
            .unified
            .as_ref()
            .and_then(|m| fs::read_to_string(m.join("cgroup.controllers")).ok())
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }

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

impl SlotCgroups {
    pub fn is_empty(&self) -> bool {
        self.unified.is_none() && self.v1.is_empty()
    }

    /// The cgroup id of the slot's cgroup2 directory (its inode number), which BPF programs
    /// see for the slot's sockets.
    pub fn unified_id(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt as _;
        self.unified.as_ref().and_then(|d| fs::metadata(d).ok()).map(|m| m.ino())
    }

    pub fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.unified.iter().chain(self.v1.values())
    }

    /// Set the limits. A limit with no controller to enforce it is an error.
    pub fn apply(&self, limits: &Limits) -> Result<()> {
        limits.validate()?;
        if let Some(max) = limits.tasks_max {
            self.set("tasks-max", "pids", ("pids.max", max.to_string()), None)?;
        }
        if let Some(max) = limits.memory_max {
            // v2: the OOM killer takes the whole cgroup (memory.oom.group). v1 has no such
            // switch; the tracker kills the slot when its OOM counter moves (see oom.rs).
            self.set(
                "memory-max",
                "memory",
                ("memory.max", max.to_string()),
                Some(("memory.limit_in_bytes", max.to_string())),
            )?;
            if let Some(dir) = &self.unified
                && dir.join("memory.oom.group").exists()
            {
                fs::write(dir.join("memory.oom.group"), "1")
                    .ctx(|| format!("writing {}/memory.oom.group", dir.display()))?;
            }
        }
        if let Some(w) = limits.cpu_weight {
            // v1 shares: 1024 is the default, as weight 100 is.
            let shares = (w * 1024 / 100).max(2);
            self.set(
                "cpu-weight",
                "cpu",
                ("cpu.weight", w.to_string()),
                Some(("cpu.shares", shares.to_string())),
            )?;
        }
        if let Some(pct) = limits.cpu_quota_percent {
            const PERIOD_US: u64 = 100_000;
            let quota = ((pct / 100.0) * PERIOD_US as f64).round().max(1000.0) as u64;
            let v1 = self.v1.get("cpu").map(|d| d.join("cpu.cfs_period_us"));
            if self.controller_file("cpu", "cpu.max").is_none()
                && let Some(period) = v1
            {
                fs::write(&period, PERIOD_US.to_string())
                    .ctx(|| format!("writing {}", period.display()))?;
            }
            self.set(
                "cpu-quota",
                "cpu",
                ("cpu.max", format!("{quota} {PERIOD_US}")),
                Some(("cpu.cfs_quota_us", quota.to_string())),
            )?;
        }
        Ok(())
    }

    /// Write a limit: the v2 file if the slot's v2 directory has it, else the v1 file of
    /// `controller` (named `v1` when it differs). Neither is an error naming the limit.
    fn set(
        &self,
        limit: &'static str,
        controller: &'static str,
        v2: (&str, String),
        v1: Option<(&str, String)>,
    ) -> Result<()> {
        let target = match self.unified.as_ref().map(|d| d.join(v2.0)).filter(|p| p.exists()) {
            Some(file) => Some((file, v2.1)),
            None => {
                let (name, value) = v1.unwrap_or(v2);
                self.v1.get(controller).map(|d| (d.join(name), value))
            }
        };
        let (file, value) = target.ok_or(Error::LimitUnavailable {
            limit,
            missing: match controller {
                "pids" => "the pids controller (neither cgroup v2 nor v1 offers it to the slot)",
                "memory" => {
                    "the memory controller (neither cgroup v2 nor v1 offers it to the slot)"
                }
                _ => "the cpu controller (neither cgroup v2 nor v1 offers it to the slot)",
            },
        })?;
        fs::write(&file, &value).ctx(|| format!("writing {value} to {}", file.display()))
    }

    /// `file` of `controller` in whichever hierarchy has it for this slot.
    fn controller_file(&self, controller: &str, file: &str) -> Option<PathBuf> {
        let v2 = self.unified.as_ref().map(|d| d.join(file)).filter(|p| p.exists());
        v2.or_else(|| self.v1.get(controller).map(|d| d.join(file)))
    }

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

    /// Every pid in the slot's cgroups and their descendants (the union over hierarchies): a
    /// bound job cgroup holds its tasks in step cgroups below it.
    pub fn procs(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs()
            .flat_map(|d| subtree(d))
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<u32>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Freeze the slot's cgroup and wait (up to `timeout`) until it is frozen.
    /// Returns whether a freezer was available. A bound cgroup that holds this very process
    /// (`tracker run --cgroup` as a batch system's job wrapper) is not frozen: the tracker
    /// would stop itself.
    pub fn freeze(&self, timeout: Duration) -> bool {
        if self.bound.is_some() && self.procs().contains(&std::process::id()) {
            return false;
        }
        if let Some(dir) = &self.unified
            && fs::write(dir.join("cgroup.freeze"), "1").is_ok()
        {
            wait_until(timeout, || {
                fs::read_to_string(dir.join("cgroup.events"))
                    .is_ok_and(|s| s.lines().any(|l| l == "frozen 1"))
            });
            return true;
        }
        if let Some(dir) = self.v1.get("freezer")
            && fs::write(dir.join("freezer.state"), "FROZEN").is_ok()
        {
            wait_until(timeout, || {
                fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
            });
            return true;
        }
        false
    }

    /// Whether the slot has a cgroup that can be frozen.
    pub fn has_freezer(&self) -> bool {
        self.unified.as_ref().is_some_and(|d| d.join("cgroup.freeze").exists())
            || self.v1.get("freezer").is_some_and(|d| d.join("freezer.state").exists())
    }

    pub fn thaw(&self) {
        if let Some(dir) = &self.unified {
            let _ = fs::write(dir.join("cgroup.freeze"), "0");
        }
        if let Some(dir) = self.v1.get("freezer") {
            let _ = fs::write(dir.join("freezer.state"), "THAWED");
        }
    }

    /// SIGKILL everything in the slot's cgroup2 directory at once (`cgroup.kill`, 5.14+).
    /// Returns false where that is not available.
    pub fn kill_all(&self) -> bool {
        self.unified.as_ref().is_some_and(|dir| fs::write(dir.join("cgroup.kill"), "1").is_ok())
    }
}

/// `dir` and every cgroup below it.
pub(crate) fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        if let Ok(entries) = fs::read_dir(&d) {
            todo.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        out.push(d);
    }
    out
}

/// Poll `done` every millisecond until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}
