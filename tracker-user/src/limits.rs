//! Limits a slot can carry, and parsing them from the command line. The slot's cgroups
//! enforce them; a limit no controller can enforce is refused, never ignored.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// At most this many live tasks (threads included): `pids.max`. A fork beyond it fails
    /// with EAGAIN in the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_max: Option<u64>,
    /// Memory of the whole slot, in bytes (`memory.max`, or v1 `memory.limit_in_bytes`).
    /// When it is exceeded the whole slot is killed, not one process of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// CPU share, 1..=10000, 100 being the default (`cpu.weight`, or v1 `cpu.shares`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
    /// CPU cap in percent of one CPU (200 = two CPUs) (`cpu.max`, or v1 CFS quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota_percent: Option<f64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Check values that are wrong whatever the machine.
    pub fn validate(&self) -> Result<()> {
        if let Some(w) = self.cpu_weight
            && !(1..=10_000).contains(&w)
        {
            return Err(Error::InvalidLimit(format!("cpu weight {w}: use 1 to 10000")));
        }
        if let Some(q) = self.cpu_quota_percent
            && !(q.is_finite() && q >= 1.0)
        {
            return Err(Error::InvalidLimit(format!("cpu quota {q}%: use 1 or more")));
        }
        if self.memory_max == Some(0) || self.tasks_max == Some(0) {
            return Err(Error::InvalidLimit("a limit of 0 would let nothing run".into()));
        }
        Ok(())
    }
}

/// A size such as `100M`, `1.5G`, `512KiB`, `4096` (bytes); binary multiples.
pub fn parse_size(s: &str) -> Result<u64> {
    let bad =
        || Error::InvalidLimit(format!("{s:?} is not a size: use e.g. 512M, 2G, 1.5GiB or bytes"));
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = num * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("100M").unwrap(), 100 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        for bad in ["10QB", "", "M", "-5M", "1e9", "0"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn limits_are_checked() {
        assert!(Limits { cpu_weight: Some(0), ..Default::default() }.validate().is_err());
        assert!(Limits { cpu_quota_percent: Some(0.5), ..Default::default() }.validate().is_err());
        assert!(Limits { cpu_weight: Some(200), ..Default::default() }.validate().is_ok());
    }
}
