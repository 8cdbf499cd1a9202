//! Where the cgroup hierarchies are mounted on this machine.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use crate::{
    error::{IoContext, Result},
    paths::{CGROUPS_ENV, MOUNTINFO},
};

/// Where the cgroup hierarchies are mounted on this machine, read from `/proc/self/mountinfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// The cgroup2 mount: `/sys/fs/cgroup` on a pure v2 system, `/sys/fs/cgroup/unified` on a
    /// hybrid one.
    pub unified: Option<PathBuf>,
    /// cgroup v1 controllers and the mount of each (co-mounted controllers share a path).
    pub v1: BTreeMap<String, PathBuf>,
}

impl CgroupMounts {
    pub fn detect() -> Result<Self> {
        if std::env::var(CGROUPS_ENV).is_ok_and(|v| v == "off") {
            return Ok(Self::default());
        }
        let text = fs::read_to_string(MOUNTINFO).ctx(|| format!("reading {MOUNTINFO}"))?;
        Ok(Self::parse(&text))
    }

    pub fn parse(mountinfo: &str) -> Self {
        let mut mounts = Self::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(root), Some(mount_point), Some(fstype)) =
                (left.get(3), left.get(4), right.first())
            else {
                continue;
            };
            // A bind mount of a sub-cgroup (root other than "/") is not the hierarchy's root.
            if *root != "/" {
                continue;
            }
            let mount_point = PathBuf::from(unescape_mount(mount_point));
            match *fstype {
                "cgroup2" => {
                    mounts.unified.get_or_insert(mount_point);
                }
                "cgroup" => {
                    let options = right.get(2).copied().unwrap_or_default();
                    for opt in options.split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            mounts.v1.entry(opt.to_owned()).or_insert_with(|| mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        mounts
    }

    /// The v1 mount of `controller`, if that controller is mounted as v1.
    pub fn v1(&self, controller: &str) -> Option<&Path> {
        self.v1.get(controller).map(PathBuf::as_path)
    }
}

/// The v1 controllers the tracker knows; named hierarchies (`name=systemd`) are ignored.
const V1_CONTROLLERS: &[&str] =
    &["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "net_cls"];

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 30 0:31 /sub /mnt/memsub rw - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer";

    #[test]
    fn hybrid_layout_is_detected() {
        let m = CgroupMounts::parse(HYBRID);
        assert_eq!(m.unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(m.v1("cpu"), Some(Path::new("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(m.v1("cpuacct"), Some(Path::new("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(m.v1("memory"), Some(Path::new("/sys/fs/cgroup/memory")));
        assert_eq!(m.v1("freezer"), Some(Path::new("/sys/fs/cgroup/freezer")));
        assert_eq!(m.v1("pids"), None);
        assert!(!m.v1.contains_key("name=systemd"));
    }

    #[test]
    fn pure_v2_layout_is_detected() {
        let m =
            CgroupMounts::parse("29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate");
        assert_eq!(m.unified.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert!(m.v1.is_empty());
    }

    #[test]
    fn escaped_mount_points_are_unescaped() {
        assert_eq!(unescape_mount(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
