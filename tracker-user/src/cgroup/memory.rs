//! A slot's memory and its peak, where the kernel keeps them anyway: in the slot's own memory
//! cgroup (v2 `memory.current`/`memory.peak`, v1 `memory.usage_in_bytes`/
//! `memory.max_usage_in_bytes`). Reading two files costs the query, not every page fault of
//! the machine.
//!
//! A slot whose memory no cgroup of its own keeps (a bound slot shares the batch system's
//! cgroup with its step daemons; a machine without a memory controller; cgroup v2 before 5.19,
//! which has no `memory.peak`) takes its figures from the `rss_stat` program instead, which is
//! attached only while such a slot exists (see `memory_link.rs`).
use std::{collections::BTreeSet, fs, path::PathBuf};

use super::{SlotCgroups, subtree};

/// Where a slot's memory figures come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemorySource {
    /// The slot's cgroup v2 directory, with the memory controller and `memory.peak`.
    V2(PathBuf),
    /// The slot's v1 memory cgroup.
    V1(PathBuf),
    /// The resident pages of its processes, kept at every change by `rss_stat`.
    Rss,
}

impl SlotCgroups {
    pub fn memory_source(&self) -> MemorySource {
        if self.bound.is_some() {
            return MemorySource::Rss;
        }
        if let Some(d) = &self.unified
            && d.join("memory.current").exists()
        {
            return if d.join("memory.peak").exists() {
                MemorySource::V2(d.clone())
            } else {
                MemorySource::Rss
            };
        }
        match self.v1.get("memory") {
            Some(d) => MemorySource::V1(d.clone()),
            None => MemorySource::Rss,
        }
    }

    /// The processes in the slot's memory cgroup or below it, if its memory is a cgroup's.
    pub fn memory_procs(&self) -> Option<BTreeSet<u32>> {
        let dir = match self.memory_source() {
            MemorySource::V2(d) | MemorySource::V1(d) => d,
            MemorySource::Rss => return None,
        };
        Some(
            subtree(&dir)
                .iter()
                .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
                .flat_map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<_>>())
                .collect(),
        )
    }

    /// (bytes charged to the slot's memory cgroup now, its high-water mark), or None when
    /// its figures come from `rss_stat` (or the files cannot be read).
    pub fn memory(&self) -> Option<(u64, u64)> {
        let read = |d: &PathBuf, f: &str| -> Option<u64> {
            fs::read_to_string(d.join(f)).ok()?.trim().parse().ok()
        };
        let (now, peak) = match self.memory_source() {
            MemorySource::V2(d) => (read(&d, "memory.current")?, read(&d, "memory.peak")?),
            MemorySource::V1(d) => {
                (read(&d, "memory.usage_in_bytes")?, read(&d, "memory.max_usage_in_bytes")?)
            }
            MemorySource::Rss => return None,
        };
        Some((now, peak.max(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_or_cgroupless_slot_takes_its_memory_from_rss() {
        let dir = std::env::temp_dir().join(format!("trk-mem-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let none = SlotCgroups::default();
        assert_eq!(none.memory_source(), MemorySource::Rss);
        assert_eq!(none.memory(), None);
        let mut v1 = SlotCgroups::default();
        v1.v1.insert("memory".into(), dir.clone());
        assert_eq!(v1.memory_source(), MemorySource::V1(dir.clone()));
        fs::write(dir.join("memory.usage_in_bytes"), "4096\n").unwrap();
        fs::write(dir.join("memory.max_usage_in_bytes"), "8192\n").unwrap();
        assert_eq!(v1.memory(), Some((4096, 8192)));
        let bound = SlotCgroups { bound: Some("batch/job".into()), ..v1.clone() };
        assert_eq!(bound.memory_source(), MemorySource::Rss);
        // cgroup v2 with the memory controller but no memory.peak (before 5.19).
        let v2 = SlotCgroups { unified: Some(dir.clone()), ..Default::default() };
        fs::write(dir.join("memory.current"), "4096\n").unwrap();
        assert_eq!(v2.memory_source(), MemorySource::Rss);
        fs::write(dir.join("memory.peak"), "16384\n").unwrap();
        assert_eq!(v2.memory_source(), MemorySource::V2(dir.clone()));
        assert_eq!(v2.memory(), Some((4096, 16384)));
        fs::remove_dir_all(&dir).unwrap();
    }
}
