//! Every filesystem path the tracker uses: bpffs pins, state files and cgroup directories.
//!
//! An *instance* names one complete, independent tracker on a machine: its own pins, state
//! and cgroup parent. Production uses the default instance `tracker`; the tests use their own,
//! so that they never disturb a tracker already loaded on the machine.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const DEFAULT_INSTANCE: &str = "tracker";
/// The environment variable that selects the instance when no `--instance` is given.
pub const INSTANCE_ENV: &str = "TRACKER_INSTANCE";

pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
pub const RUN_ROOT: &str = "/run";
/// Per-instance data on disk: the slots' private /tmp directories (`--private-tmp`).
pub const LIB_ROOT: &str = "/var/lib/tracker";
/// The site configuration (named roots for `--root-name`, the daemon's settings).
pub const CONFIG_FILE: &str = "/etc/tracker/tracker.toml";
/// Overrides `CONFIG_FILE`.
pub const CONFIG_ENV: &str = "TRACKER_CONFIG";
pub const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";
pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const PID_MAX: &str = "/proc/sys/kernel/pid_max";
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
pub const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";
/// Where the cgroup hierarchies are found (see cgroup/mounts.rs).
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
/// This process's cgroups, one line per hierarchy (`0::/path` for cgroup2).
pub const SELF_CGROUP: &str = "/proc/self/cgroup";

/// Overrides where bpffs is expected (default `/sys/fs/bpf`).
pub const BPFFS_ENV: &str = "TRACKER_BPFFS";
/// Overrides where the kernel's BTF is read (default `/sys/kernel/btf/vmlinux`).
pub const BTF_ENV: &str = "TRACKER_BTF";

/// Present when systemd runs as PID 1 (what `sd_booted()` checks).
pub const SYSTEMD_RUNNING: &str = "/run/systemd/system";
/// The extended attributes systemd puts on a cgroup it delegated (`Delegate=yes`): `trusted.`
/// since systemd 251, `user.` too since 252 (readable by the unprivileged delegatee).
pub const DELEGATE_XATTRS: &[&str] = &["trusted.delegate", "user.delegate"];
/// The slice the tracker's own scope goes in (see cgroup/scope.rs), and the tools that make
/// and stop it. The scope holds one process that only keeps it alive.
pub const SCOPE_SLICE: &str = "system.slice";
pub const SYSTEMD_RUN: &str = "systemd-run";
pub const SYSTEMCTL: &str = "systemctl";
pub const SCOPE_HOLDER: &[&str] = &["sleep", "infinity"];
/// The leaf a delegated cgroup's own processes move into, so that the delegated cgroup can
/// enable controllers for the slots beside them (the kernel's no-internal-process rule). The
/// name systemd's documentation uses for `DelegateSubgroup=`.
pub const SUPERVISOR_CGROUP: &str = "supervisor";

/// `off` makes the tracker use no cgroups at all (tag-only mode, e.g. where cgroupfs is
/// read-only); tagging and kill work the same, without freeze and cgroup limits.
pub const CGROUPS_ENV: &str = "TRACKER_CGROUPS";

/// The paths of one tracker instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    instance: String,
    bpffs_root: PathBuf,
    btf: PathBuf,
}

impl Paths {
    pub fn new(instance: &str) -> Result<Self> {
        let ok = (1..=32).contains(&instance.len())
            && instance.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !instance.starts_with('-');
        if !ok {
            return Err(Error::InvalidInstance(instance.to_owned()));
        }
        Ok(Self {
            instance: instance.to_owned(),
            bpffs_root: env_path(BPFFS_ENV).unwrap_or_else(|| BPFFS_ROOT.into()),
            btf: env_path(BTF_ENV).unwrap_or_else(|| BTF_VMLINUX.into()),
        })
    }

    /// The instance named by `TRACKER_INSTANCE`, or the default one.
    pub fn from_env() -> Result<Self> {
        match std::env::var(INSTANCE_ENV) {
            Ok(name) if !name.is_empty() => Self::new(&name),
            _ => Self::new(DEFAULT_INSTANCE),
        }
    }

    /// The bpffs mount the pin directory lives in.
    pub fn bpffs_root(&self) -> &Path {
        &self.bpffs_root
    }

    /// The running kernel's BTF.
    pub fn btf(&self) -> &Path {
        &self.btf
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The one bpffs directory that holds everything of this instance (mode 0700).
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs_root.join(&self.instance)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.pin_dir().join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.pin_dir().join("links")
    }

    pub fn progs_dir(&self) -> PathBuf {
        self.pin_dir().join("progs")
    }

    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn link_pin(&self, name: &str) -> PathBuf {
        self.links_dir().join(name)
    }

    pub fn prog_pin(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    /// A pin being prepared during an upgrade, renamed over `final_path` once ready.
    /// (bpffs refuses names with a dot.)
    pub fn staging(final_path: &Path) -> PathBuf {
        let mut name = final_path.file_name().unwrap_or_default().to_os_string();
        name.push("_new");
        final_path.with_file_name(name)
    }

    /// Where the slot registry and its lock live.
    pub fn state_dir(&self) -> PathBuf {
        Path::new(RUN_ROOT).join(&self.instance)
    }

    /// Where the instance keeps data on disk (root-only).
    pub fn data_dir(&self) -> PathBuf {
        Path::new(LIB_ROOT).join(&self.instance)
    }

    /// A slot's scratch directory: what its private `/tmp` and `/var/tmp` are, removed when
    /// the slot is released.
    pub fn scratch_dir(&self, slot_name: &str) -> PathBuf {
        self.data_dir().join("scratch").join(slot_name)
    }

    /// The site configuration file: `$TRACKER_CONFIG`, else `/etc/tracker/tracker.toml`.
    pub fn config_file() -> PathBuf {
        std::env::var_os(CONFIG_ENV).map_or_else(|| PathBuf::from(CONFIG_FILE), PathBuf::from)
    }

    pub fn registry_file(&self) -> PathBuf {
        self.state_dir().join("slots.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.state_dir().join("lock")
    }

    /// The daemon's gRPC socket (`/run/tracker/tracker.sock` for the default instance).
    pub fn socket_file(&self) -> PathBuf {
        self.state_dir().join("tracker.sock")
    }

    /// Held by the instance's one daemon.
    pub fn daemon_lock_file(&self) -> PathBuf {
        self.state_dir().join("daemon.lock")
    }

    /// Held by the one process that reads the kernel's event stream.
    pub fn events_lock_file(&self) -> PathBuf {
        self.state_dir().join("events.lock")
    }

    /// Held while an adoption runs: one at a time, so two never tag the same task.
    pub fn adopt_lock_file(&self) -> PathBuf {
        self.state_dir().join("adopt.lock")
    }

    /// Where the cgroup parent chosen at the first load is recorded (see cgroup/parent.rs), so
    /// that every later command, the daemon and the tests put slots in the same place.
    pub fn cgroup_parent_file(&self) -> PathBuf {
        self.state_dir().join("cgroup-parent.json")
    }

    /// Held shared by every kill under way, in any process: the last one out detaches the
    /// doom program (see tracker/doom.rs).
    pub fn doom_users_lock_file(&self) -> PathBuf {
        self.state_dir().join("doom-users.lock")
    }

    /// Held while the doom program's link is attached and pinned, or unpinned.
    pub fn doom_attach_lock_file(&self) -> PathBuf {
        self.state_dir().join("doom-attach.lock")
    }

    /// The slots' parent, relative to each hierarchy's root, where nothing else is chosen or
    /// recorded (and always in the v1 hierarchies): `<instance>` beside the root's children.
    pub fn default_cgroup_parent(&self) -> PathBuf {
        PathBuf::from(&self.instance)
    }

    /// The cgroup directory of slot `slot_name` under `parent` (relative to the hierarchy
    /// mounted at `mount`). The `slot-` prefix keeps slot names from colliding with controller
    /// files (`memory.max`).
    pub fn slot_cgroup(mount: &Path, parent: &Path, slot_name: &str) -> PathBuf {
        mount.join(parent).join(format!("slot-{slot_name}"))
    }
}

/// The cgroup `rel` (relative to the hierarchy's root) under the hierarchy mounted at `mount`.
pub fn cgroup_dir(mount: &Path, rel: &Path) -> PathBuf {
    mount.join(rel)
}

/// A cgroup the batch system made, `rel` (e.g. `slurm/uid_0/job_42`) under the hierarchy
/// mounted at `mount`.
pub fn bound_cgroup(mount: &Path, rel: &Path) -> PathBuf {
    mount.join(rel)
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_checked() {
        assert!(Paths::new("tracker").is_ok());
        assert!(Paths::new("test-12ab").is_ok());
        for bad in ["", "-x", "A", "a/b", "..", &"x".repeat(33)] {
            assert!(Paths::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn slot_cgroups_are_prefixed() {
        let p = Paths::new("tracker").unwrap();
        assert_eq!(
            Paths::slot_cgroup(Path::new("/sys/fs/cgroup"), &p.default_cgroup_parent(), "1234.0"),
            Path::new("/sys/fs/cgroup/tracker/slot-1234.0")
        );
    }
}
