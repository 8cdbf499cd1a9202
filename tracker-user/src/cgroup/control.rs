//! Stopping what is in a slot's cgroups: freeze, thaw, kill, and the processes in them.
use std::{
    fs, thread,
    time::{Duration, Instant},
};

use super::{SlotCgroups, subtree};

impl SlotCgroups {
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
            wait_until(timeout, || super::event_set(dir, "frozen"));
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
