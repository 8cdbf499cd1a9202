//! A slot's limits, written to whichever controller files its cgroups have.
use std::{fs, path::PathBuf};

use super::SlotCgroups;
use crate::{
    error::{Error, IoContext, Result},
    limits::Limits,
};

impl SlotCgroups {
    /// Set the limits. A limit with no controller to enforce it is an error.
    pub fn apply(&self, limits: &Limits) -> Result<()> {
        if let Some(max) = limits.tasks_max {
            self.set("tasks-max", "pids", ("pids.max", max.to_string()), None)?;
        }
        if let Some(max) = limits.memory_max {
            // v2: the OOM killer takes the whole cgroup (memory.oom.group). v1 has no such
            // switch; the tracker kills the slot when its OOM counter moves (tracker/oom_guard.rs).
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
}
