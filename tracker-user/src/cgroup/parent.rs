//! Where an instance's slot cgroups live in the cgroup2 hierarchy, chosen once at the first
//! load and recorded, so the CLI, the daemon, the SPANK plugin and the tests agree.
//!
//! On a machine run by systemd the cgroup tree is systemd's: a program may manage cgroups only
//! inside a subtree systemd delegated to it (`Delegate=yes`, marked with the `trusted.delegate`
//! xattr), and never writes `cgroup.subtree_control` above it. So the parent is, in order:
//! 1. the one the administrator named (`tracker load --cgroup-parent`, the daemon's
//!    `cgroup_parent`);
//! 2. `<delegated cgroup>/<instance>` when the loading process runs in a delegated cgroup
//!    (a batch system's unit with `Delegate=yes`): its own processes move into the leaf
//!    `<delegated cgroup>/supervisor`, as `DelegateSubgroup=supervisor` does on systemd 254+;
//! 3. on a machine run by systemd, `<instance>` in the tracker's own scope,
//!    `system.slice/tracker.scope` (`tracker-<instance>.scope`), delegated to it and made and
//!    kept by it (see `scope`);
//! 4. `<instance>` under the root, as before (and for an instance loaded before the parent was
//!    recorded), with a warning when systemd is PID 1 but its scope cannot be made.
//!
//! Controllers are enabled top-down from the delegated cgroup (else from the root) to the
//! parent. The v1 hierarchies of a hybrid machine keep `<instance>` under each root.
use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::PermissionsExt as _,
    path::{Component, Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, IoContext, Result},
    paths::{self, DELEGATE_XATTRS, Paths, SELF_CGROUP, SUPERVISOR_CGROUP, SYSTEMD_RUNNING},
};

use super::scope;

/// v2 controllers the tracker enables for its slots.
pub const V2_SLOT_CONTROLLERS: &[&str] = &["pids", "memory", "cpu", "io"];

/// The recorded choice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupParent {
    /// The slots' parent, relative to the cgroup2 root.
    pub rel: PathBuf,
    /// The delegated cgroup the parent is in (relative to the root), if any: nothing above it
    /// is ever written, and it is never made by the tracker (it is systemd's to make).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegated: Option<PathBuf>,
    /// The cgroup id of the parent directory the cgroup programs were attached to at the last
    /// load. A different id now means the directory was removed and made again (systemd prunes
    /// a stopped unit's empty cgroups) and the programs must be attached again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_id: Option<u64>,
    /// The systemd scope the tracker made to hold `delegated` (its unit name), made again when
    /// it is gone and stopped at unload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// What a choice or an `ensure` has to say: one line each.
pub type Notes = Vec<String>;

impl CgroupParent {
    /// The default parent, `<instance>` under the root.
    pub fn default_for(paths: &Paths) -> Self {
        Self { rel: paths.default_cgroup_parent(), delegated: None, attached_id: None, scope: None }
    }

    /// `<instance>` in the delegated cgroup `d` (the tracker's own scope `scope`, if it is).
    fn in_delegation(paths: &Paths, d: PathBuf, scope: Option<String>) -> Self {
        Self {
            rel: d.join(paths.default_cgroup_parent()),
            delegated: Some(d),
            attached_id: None,
            scope,
        }
    }

    /// The recorded parent, or the default one for an instance loaded before it was recorded
    /// (or not loaded at all).
    pub fn read(paths: &Paths) -> Result<Self> {
        let file = paths.cgroup_parent_file();
        match fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Registry {
                path: file.clone(),
                detail: format!("{e}: remove it and load again"),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Self::default_for(paths)),
            Err(e) => Err(Error::io(format!("reading {}", file.display()), e)),
        }
    }

    /// Record it (atomically), for every later command.
    pub fn write(&self, paths: &Paths) -> Result<()> {
        let file = paths.cgroup_parent_file();
        let tmp = file.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Registry { path: file.clone(), detail: e.to_string() })?;
        crate::registry::write_synced(&tmp, &text)?;
        // Readable by all, unlike the registry: `tracker status` shows it to anyone, and the
        // same paths are in every job's /proc/PID/cgroup.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
            .ctx(|| format!("chmod {}", tmp.display()))?;
        fs::rename(&tmp, &file).ctx(|| format!("replacing {}", file.display()))
    }

    /// Choose the parent for a first load (see the module's comment). `mount` is the cgroup2
    /// mount; `explicit` the administrator's choice, relative to it (or absolute, under it).
    pub fn choose(paths: &Paths, mount: &Path, explicit: Option<&Path>) -> Result<(Self, Notes)> {
        let mut notes = vec![];
        let parent = match explicit {
            Some(asked) => {
                let rel = relative_parent(mount, asked)?;
                let delegated = delegated_ancestor(mount, &rel);
                Self { rel, delegated, attached_id: None, scope: None }
            }
            None => match own_delegation(mount) {
                Some(d) => Self::in_delegation(paths, d, None),
                None if scope::available() => {
                    let unit = scope::unit_name(paths.instance());
                    Self::in_delegation(paths, scope::cgroup_rel(&unit), Some(unit))
                }
                None => Self::default_for(paths),
            },
        };
        if parent.delegated.is_none() && Path::new(SYSTEMD_RUNNING).exists() {
            notes.push(format!(
                "systemd runs this machine but the slots' cgroup parent {} is not in a cgroup \
                 it delegated, and systemd-run, which makes the tracker's own scope, is not \
                 installed: give `--cgroup-parent` a delegated cgroup",
                parent.rel.display()
            ));
        }
        Ok((parent, notes))
    }

    /// After an unload removed the parent directory: stop the scope the tracker made for it,
    /// whose holder is then all it has. A line if that failed.
    pub fn release(&self, mount: &Path) -> Option<String> {
        let unit = self.scope.as_ref()?;
        if paths::cgroup_dir(mount, &self.rel).exists() {
            return None;
        }
        scope::stop(unit)
    }

    /// Make the parent directory (and those between it and the delegated cgroup, or the root)
    /// and enable the slot controllers top-down. Returns the parent's directory and a line
    /// naming the controllers that cannot reach the slots, if any. Nothing above the delegated
    /// cgroup is written, and the delegated cgroup itself is never made here.
    pub fn ensure(&self, mount: &Path) -> Result<(PathBuf, Notes)> {
        let mut notes = vec![];
        let top_rel = self.delegated.clone().unwrap_or_default();
        let top = paths::cgroup_dir(mount, &top_rel);
        if let Some(unit) = &self.scope {
            scope::ensure(unit, &top)?;
        }
        if self.delegated.is_some() {
            if !top.is_dir() {
                return Err(Error::DelegationGone(top));
            }
            settle_processes(&top)?;
        }
        let below = self.rel.strip_prefix(&top_rel).map_err(|_| Error::InvalidCgroupParent {
            parent: self.rel.clone(),
            why: "it is not below its delegated cgroup",
        })?;
        let offered = controllers(&top.join("cgroup.controllers"));
        let wanted: Vec<&str> = V2_SLOT_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| offered.iter().any(|o| o == c))
            .collect();
        if self.delegated.is_some() {
            // Only what the root has can be missing from a delegation.
            let root = controllers(&mount.join("cgroup.controllers"));
            let lacking: Vec<&str> = V2_SLOT_CONTROLLERS
                .iter()
                .copied()
                .filter(|c| root.iter().any(|r| r == c) && !wanted.contains(c))
                .collect();
            if !lacking.is_empty() {
                notes.push(format!(
                    "the delegated cgroup {} lacks the {} controller(s): limits that need them \
                     fail (give the unit Delegate=yes, which delegates them all)",
                    top.display(),
                    lacking.join(", ")
                ));
            }
        }
        let mut dir = top;
        let mut levels = vec![dir.clone()];
        for part in below.components() {
            dir.push(part);
            make_dir(&dir)?;
            levels.push(dir.clone());
        }
        // A controller reaches the slots only if every level above them enables it in
        // `cgroup.subtree_control`. Each is enabled on its own, so one the kernel refuses does
        // not cost the others; a limit that needs a missing one then fails naming it.
        for level in &levels {
            let file = level.join("cgroup.subtree_control");
            let enabled = controllers(&file);
            for c in &wanted {
                if !enabled.iter().any(|e| e == c) {
                    let _ = fs::write(&file, format!("+{c}"));
                }
            }
        }
        Ok((dir, notes))
    }
}

/// Move every process of the delegated cgroup `dir` itself into its `supervisor` leaf: a cgroup
/// that enables controllers for its children may hold no process (the kernel's no-internal-
/// process rule). They are the delegated unit's own processes (the tracker's daemon, or the
/// loader), placed there by systemd before 254's `DelegateSubgroup=`.
fn settle_processes(dir: &Path) -> Result<()> {
    let procs = fs::read_to_string(dir.join("cgroup.procs"))
        .ctx(|| format!("reading {}/cgroup.procs", dir.display()))?;
    let pids: Vec<&str> = procs.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if pids.is_empty() {
        return Ok(());
    }
    let leaf = dir.join(SUPERVISOR_CGROUP);
    make_dir(&leaf)?;
    let target = leaf.join("cgroup.procs");
    for pid in pids {
        match fs::write(&target, pid) {
            Ok(()) => {}
            // Gone meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                return Err(Error::io(format!("moving pid {pid} to {}", target.display()), e));
            }
        }
    }
    Ok(())
}

/// The delegated cgroup this process runs in, if systemd delegated it: its own cgroup or the
/// nearest ancestor with the delegation mark, not crossing another unit's cgroup (a unit
/// inside a delegated `user@.service` belongs to that user's manager, not to us).
fn own_delegation(mount: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(SELF_CGROUP).ok()?;
    let own = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim().trim_start_matches('/');
    let mut cur = PathBuf::from(own);
    loop {
        if cur.as_os_str().is_empty() {
            return None;
        }
        if is_delegated(&paths::cgroup_dir(mount, &cur)) {
            return Some(cur);
        }
        if is_unit_name(&cur) {
            return None;
        }
        cur.pop();
    }
}

/// The nearest existing ancestor-or-self of `rel` that systemd delegated.
fn delegated_ancestor(mount: &Path, rel: &Path) -> Option<PathBuf> {
    let mut cur = rel.to_path_buf();
    while !cur.as_os_str().is_empty() {
        if is_delegated(&paths::cgroup_dir(mount, &cur)) {
            return Some(cur);
        }
        cur.pop();
    }
    None
}

/// systemd's unit cgroups are named after the unit.
fn is_unit_name(rel: &Path) -> bool {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    [".service", ".scope", ".slice"].iter().any(|s| name.ends_with(s))
}

/// Whether `dir` carries systemd's delegation mark.
pub fn is_delegated(dir: &Path) -> bool {
    DELEGATE_XATTRS.iter().any(|name| xattr(dir, name).is_some_and(|v| v == b"1"))
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 16];
    // SAFETY: both strings are NUL-terminated and live across the call; the kernel writes at
    // most `buf.len()` bytes into `buf`.
    let n =
        unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

/// Controllers listed in a `cgroup.controllers` or `cgroup.subtree_control` file.
fn controllers(file: &Path) -> Vec<String> {
    fs::read_to_string(file)
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The administrator's parent as a path relative to the cgroup2 root: relative, or absolute
/// under `mount`; plain names only.
fn relative_parent(mount: &Path, asked: &Path) -> Result<PathBuf> {
    let bad = |why| Error::InvalidCgroupParent { parent: asked.to_path_buf(), why };
    let rel = if asked.is_absolute() {
        asked.strip_prefix(mount).map_err(|_| {
            bad("an absolute parent must be under the cgroup2 mount; or give it relative to it")
        })?
    } else {
        asked
    };
    if rel.as_os_str().is_empty() {
        return Err(bad("the root cgroup cannot hold slots beside every other process"));
    }
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad("use plain names separated by '/', without '.' or '..'"));
    }
    let last = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if last.starts_with("slot-") || last == SUPERVISOR_CGROUP {
        return Err(bad("that name is the tracker's own (slot-*, supervisor)"));
    }
    Ok(rel.to_path_buf())
}

fn make_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_parents_are_checked() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            relative_parent(m, Path::new("system.slice/tracker.service/tracker")).unwrap(),
            Path::new("system.slice/tracker.service/tracker")
        );
        assert_eq!(relative_parent(m, Path::new("/sys/fs/cgroup/a/b")).unwrap(), Path::new("a/b"));
        for bad in ["", "/sys/fs/cgroup", "/tmp/x", "a/../b", "./a", "a/slot-x", "a/supervisor"] {
            assert!(relative_parent(m, Path::new(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn unit_cgroups_are_recognised() {
        assert!(is_unit_name(Path::new("system.slice/tracker.service")));
        assert!(is_unit_name(Path::new("user.slice")));
        assert!(!is_unit_name(Path::new("system.slice/tracker.service/supervisor")));
    }

    #[test]
    fn an_old_record_reads_as_the_default() {
        let rec: CgroupParent = serde_json::from_str(r#"{"rel":"tracker"}"#).unwrap();
        assert_eq!(rec.rel, Path::new("tracker"));
        assert_eq!(rec.delegated, None);
    }
}
