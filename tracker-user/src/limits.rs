//! Limits a slot can carry, and parsing them from the command line. The slot's cgroups
//! enforce them; a limit no controller can enforce is refused, never ignored.
//!
//! Limits are checked once, where they enter (the CLI, the gRPC request, the state file):
//! `RawLimits` is what arrives, `Limits` is what passed the check, and only a `Limits` reaches
//! the tracker and the cgroups, which trust it.
use std::{net::IpAddr, ops::Deref};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Limits as they arrive, not yet checked: turn them into `Limits` with `try_into`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RawLimits {
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
    /// Outbound connections (and datagrams) only to these destinations; `Some(empty)`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Vec<AllowRule>>,
    /// Devices the slot may not open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_devices: Vec<DeviceRule>,
}

/// A destination network and port (0: any port) a slot may connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AllowRule {
    pub addr: IpAddr,
    pub prefix: u8,
    pub port: u16,
}

/// The kernel's device numbers: a 12-bit major and a 20-bit minor (`MINORBITS`). A larger
/// number names no device, and `u32::MAX` as a minor is the maps' "any minor" marker.
pub const MAX_DEVICE_MAJOR: u32 = (1 << 12) - 1;
pub const MAX_DEVICE_MINOR: u32 = (1 << 20) - 1;

/// A device a slot may not open; no minor: every minor of the major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceRule {
    pub major: u32,
    pub minor: Option<u32>,
}

/// As `parse_allow_list` reads it: `10.0.0.0/8:443`, `127.0.0.1`, `[2001:db8::/32]:22`.
impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        let net = if self.prefix == full {
            self.addr.to_string()
        } else {
            format!("{}/{}", self.addr, self.prefix)
        };
        match (self.addr.is_ipv4(), self.port) {
            (true, 0) => f.write_str(&net),
            (true, port) => write!(f, "{net}:{port}"),
            (false, 0) => write!(f, "[{net}]"),
            (false, port) => write!(f, "[{net}]:{port}"),
        }
    }
}

/// As `parse_devices` reads it: `195:*`, `1:5`.
impl std::fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.minor {
            Some(minor) => write!(f, "{}:{minor}", self.major),
            None => write!(f, "{}:*", self.major),
        }
    }
}

/// `CIDR[:PORT],...`: `10.0.0.0/8:443`, `127.0.0.1`, `[2001:db8::/32]:22`, `[::1]`.
pub fn parse_allow_list(s: &str) -> Result<Vec<AllowRule>> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(parse_allow_rule).collect()
}

fn parse_allow_rule(s: &str) -> Result<AllowRule> {
    let bad = |why: &str| Error::InvalidLimit(format!("{s:?} is not CIDR[:PORT] ({why})"));
    let (net, port) = if let Some(rest) = s.strip_prefix('[') {
        let (net, after) = rest.split_once(']').ok_or_else(|| bad("no closing ]"))?;
        (net, after.strip_prefix(':'))
    } else if s.matches(':').count() > 1 {
        (s, None)
    } else {
        match s.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None | Some("*") => 0,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port must be 1-65535 or *")),
            Ok(p) => p,
        },
    };
    let (addr, prefix) = match net.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (net, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => {
            p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| bad("bad prefix length"))?
        }
    };
    Ok(AllowRule { addr: mask(addr, prefix), prefix, port })
}

/// Keep the first `prefix` bits of `addr`.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// `MAJ:MIN,...`, `MIN` may be `*`: `195:*,10:200`.
pub fn parse_devices(s: &str) -> Result<Vec<DeviceRule>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|d| {
            let bad = || Error::InvalidLimit(format!("{d:?} is not MAJOR:MINOR (MINOR may be *)"));
            let (maj, min) = d.split_once(':').ok_or_else(bad)?;
            let major = maj.parse().map_err(|_| bad())?;
            let minor = if min == "*" { None } else { Some(min.parse().map_err(|_| bad())?) };
            let rule = DeviceRule { major, minor };
            rule.check()?;
            Ok(rule)
        })
        .collect()
}

impl DeviceRule {
    /// A number the kernel cannot hold would alias another rule (a minor of `u32::MAX` is
    /// "every minor"), so it is refused rather than stored.
    pub fn check(&self) -> Result<()> {
        if self.major > MAX_DEVICE_MAJOR || self.minor.is_some_and(|m| m > MAX_DEVICE_MINOR) {
            return Err(Error::InvalidLimit(format!(
                "device {self}: majors go up to {MAX_DEVICE_MAJOR} and minors up to \
                 {MAX_DEVICE_MINOR} (use MAJOR:* for every minor)"
            )));
        }
        Ok(())
    }
}

/// Limits that passed the check of values that are wrong whatever the machine (whether the
/// machine can enforce them is for the cgroups and the policy maps to say). Read through
/// `Deref` as `RawLimits`; made only by `Limits::try_from(RawLimits)` (or `Default`: none).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawLimits", into = "RawLimits")]
pub struct Limits(RawLimits);

impl Deref for Limits {
    type Target = RawLimits;

    fn deref(&self) -> &RawLimits {
        &self.0
    }
}

impl TryFrom<RawLimits> for Limits {
    type Error = Error;

    fn try_from(raw: RawLimits) -> Result<Self> {
        raw.check()?;
        Ok(Self(raw))
    }
}

impl From<Limits> for RawLimits {
    fn from(l: Limits) -> Self {
        l.0
    }
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.0 == RawLimits::default()
    }

    /// These limits with every limit `change` sets taken from it. Each limit is checked on
    /// its own, so two checked sets make a checked set.
    pub fn merged(&self, change: &Limits) -> Limits {
        let (mut new, change) = (self.0.clone(), &change.0);
        new.tasks_max = change.tasks_max.or(new.tasks_max);
        new.memory_max = change.memory_max.or(new.memory_max);
        new.cpu_weight = change.cpu_weight.or(new.cpu_weight);
        new.cpu_quota_percent = change.cpu_quota_percent.or(new.cpu_quota_percent);
        if change.network.is_some() {
            new.network = change.network.clone();
        }
        if !change.deny_devices.is_empty() {
            new.deny_devices = change.deny_devices.clone();
        }
        Limits(new)
    }
}

impl RawLimits {
    /// Check values that are wrong whatever the machine.
    fn check(&self) -> Result<()> {
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
        self.deny_devices.iter().try_for_each(DeviceRule::check)
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
    fn allow_lists_parse() {
        let r = parse_allow_list("10.1.2.3/8:443, 127.0.0.1, [2001:db8::1/32]:22, ::1").unwrap();
        assert_eq!(r[0], AllowRule { addr: "10.0.0.0".parse().unwrap(), prefix: 8, port: 443 });
        assert_eq!(r[1], AllowRule { addr: "127.0.0.1".parse().unwrap(), prefix: 32, port: 0 });
        assert_eq!(r[2], AllowRule { addr: "2001:db8::".parse().unwrap(), prefix: 32, port: 22 });
        assert_eq!(r[3].prefix, 128);
        for bad in ["10.0.0.0/33", "300.0.0.1", "10.0.0.1:0", "10.0.0.1:x", "[::1", "host:80"] {
            assert!(parse_allow_list(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rules_print_as_they_parse() {
        let text = "10.0.0.0/8:443,127.0.0.1,[2001:db8::/32]:22,[::1]";
        let rules = parse_allow_list(text).unwrap();
        let shown: Vec<String> = rules.iter().map(ToString::to_string).collect();
        assert_eq!(shown.join(","), text);
        let devices = parse_devices("195:*,1:5").unwrap();
        let shown: Vec<String> = devices.iter().map(ToString::to_string).collect();
        assert_eq!(shown.join(","), "195:*,1:5");
    }

    #[test]
    fn devices_parse() {
        let d = parse_devices("195:*,1:5").unwrap();
        assert_eq!(
            d,
            vec![DeviceRule { major: 195, minor: None }, DeviceRule { major: 1, minor: Some(5) }]
        );
        assert!(parse_devices("1").is_err() && parse_devices("a:b").is_err());
    }

    #[test]
    fn device_numbers_the_kernel_cannot_hold_are_refused() {
        // 1:4294967295 used to be stored as 1:* (the any-minor marker).
        for bad in ["1:4294967295", "1:1048576", "4096:1", "4096:*"] {
            let e = parse_devices(bad).unwrap_err().to_string();
            assert!(e.contains("minors up to 1048575"), "{bad}: {e}");
        }
        let top = parse_devices("4095:1048575").unwrap();
        assert_eq!(top, vec![DeviceRule { major: 4095, minor: Some(1_048_575) }]);
        let l = RawLimits {
            deny_devices: vec![DeviceRule { major: 1, minor: Some(u32::MAX) }],
            ..Default::default()
        };
        assert!(Limits::try_from(l).is_err(), "the check let an aliasing device through");
    }

    #[test]
    fn limits_are_checked() {
        let check = |raw: RawLimits| Limits::try_from(raw);
        assert!(check(RawLimits { cpu_weight: Some(0), ..Default::default() }).is_err());
        assert!(check(RawLimits { cpu_quota_percent: Some(0.5), ..Default::default() }).is_err());
        assert!(check(RawLimits { cpu_weight: Some(200), ..Default::default() }).is_ok());
    }

    #[test]
    fn a_state_file_with_a_bad_limit_is_refused_when_read() {
        let bad = r#"{"cpu_weight": 0}"#;
        assert!(serde_json::from_str::<Limits>(bad).is_err());
        let good = r#"{"cpu_weight": 200}"#;
        let l: Limits = serde_json::from_str(good).unwrap();
        assert_eq!(l.cpu_weight, Some(200));
        assert_eq!(serde_json::to_string(&l).unwrap(), good.replace(' ', ""));
    }

    #[test]
    fn merging_takes_what_the_change_sets() {
        let old =
            check_ok(RawLimits { tasks_max: Some(5), cpu_weight: Some(50), ..Default::default() });
        let change = check_ok(RawLimits { cpu_weight: Some(300), ..Default::default() });
        let new = old.merged(&change);
        assert_eq!((new.tasks_max, new.cpu_weight), (Some(5), Some(300)));
    }

    fn check_ok(raw: RawLimits) -> Limits {
        Limits::try_from(raw).unwrap()
    }
}
