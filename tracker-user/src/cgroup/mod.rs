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
//!
//! By job: `mounts` (where the hierarchies are), `parent` (where the slots go beside systemd,
//! chosen at load), `lifecycle` (making and removing a slot's directories), `limits` (writing
//! its limits), `control` (freeze, thaw, kill), `memory` (its memory and peak). Every path they
//! use is built in `paths.rs`.
mod control;
mod lifecycle;
mod limits;
mod memory;
mod mounts;
pub mod parent;
mod scope;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

pub(crate) use lifecycle::make_dir;

/// Whether `dir`'s `cgroup.events` has `key` set (`frozen 1`, `populated 1`).
fn event_set(dir: &Path, key: &str) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|s| s.lines().any(|l| l.split_once(' ') == Some((key, "1"))))
}
pub use memory::MemorySource;
pub use mounts::CgroupMounts;
pub use parent::CgroupParent;
use serde::{Deserialize, Serialize};

use crate::{error::Result, paths::Paths};

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
    /// Where the slots go in the cgroup2 hierarchy (recorded at load, see `parent`).
    parent: CgroupParent,
}

impl Cgroups {
    pub fn detect(paths: &Paths) -> Result<Self> {
        Ok(Self {
            mounts: CgroupMounts::detect()?,
            paths: paths.clone(),
            parent: CgroupParent::read(paths)?,
        })
    }

    /// The same machine, with `parent` in place of the recorded parent (for the loader, which
    /// chooses it).
    pub fn with_parent(mut self, parent: CgroupParent) -> Self {
        self.parent = parent;
        self
    }

    pub fn mounts(&self) -> &CgroupMounts {
        &self.mounts
    }

    pub fn parent(&self) -> &CgroupParent {
        &self.parent
    }

    pub fn layout(&self) -> Layout {
        match (&self.mounts.unified, self.mounts.v1.is_empty()) {
            (Some(_), true) => Layout::Unified,
            (Some(_), false) => Layout::Hybrid,
            (None, false) => Layout::Legacy,
            (None, true) => Layout::None,
        }
    }

    /// Whether the cgroup2 hierarchy has controller `name`.
    pub fn v2_has_controller(&self, name: &str) -> bool {
        self.v2_controllers().iter().any(|c| c == name)
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
