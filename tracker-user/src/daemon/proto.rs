//! The generated `tracker.v1` code, and the conversions between it and the library's types.
//! Every conversion from a request is checked: a bad value is an `Error` (INVALID_ARGUMENT),
//! never a silent default.
#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("tracker.v1");

/// The encoded `FileDescriptorSet` of the .proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tracker_v1_descriptor");

use tracker_common::SlotCounts;

use crate::{
    cgroup,
    error::{Error, Result},
    events::{EventKind as Kind, WatchEvent},
    limits, procinfo, registry, tracker,
};

impl TryFrom<Limits> for limits::Limits {
    type Error = Error;

    fn try_from(l: Limits) -> Result<Self> {
        if l.deny_network && !l.allow_connect.is_empty() {
            return Err(Error::InvalidLimit(
                "deny_network and allow_connect exclude each other".into(),
            ));
        }
        let network = if l.deny_network {
            Some(vec![])
        } else if l.allow_connect.is_empty() {
            None
        } else {
            Some(limits::parse_allow_list(&l.allow_connect.join(","))?)
        };
        limits::RawLimits {
            tasks_max: l.tasks_max,
            memory_max: l.memory_max_bytes,
            cpu_weight: l.cpu_weight,
            cpu_quota_percent: l.cpu_quota_percent,
            network,
            deny_devices: limits::parse_devices(&l.deny_devices.join(","))?,
        }
        .try_into()
    }
}

impl From<&limits::Limits> for Limits {
    fn from(l: &limits::Limits) -> Self {
        let network = l.network.as_deref();
        Self {
            memory_max_bytes: l.memory_max,
            tasks_max: l.tasks_max,
            cpu_weight: l.cpu_weight,
            cpu_quota_percent: l.cpu_quota_percent,
            deny_network: network.is_some_and(<[_]>::is_empty),
            allow_connect: network.unwrap_or_default().iter().map(ToString::to_string).collect(),
            deny_devices: l.deny_devices.iter().map(ToString::to_string).collect(),
        }
    }
}

impl From<&cgroup::SlotCgroups> for Cgroups {
    fn from(c: &cgroup::SlotCgroups) -> Self {
        Self {
            unified: c.unified.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            v1: c.v1.iter().map(|(k, v)| (k.clone(), v.display().to_string())).collect(),
            bound: c.bound.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        }
    }
}

impl From<&registry::SlotRecord> for Slot {
    fn from(r: &registry::SlotRecord) -> Self {
        Self {
            name: r.name.clone(),
            id: r.id,
            owner_uid: r.owner_uid,
            created_unix_ms: r.created_unix_ms,
            cgroups: Some((&r.cgroups).into()),
            limits: Some((&r.limits).into()),
        }
    }
}

impl From<&tracker::SlotStatus> for SlotStatus {
    /// The status carries the slot's record fields too: no second registry read.
    fn from(s: &tracker::SlotStatus) -> Self {
        Self {
            slot: Some(Slot {
                name: s.name.clone(),
                id: s.id,
                owner_uid: s.owner_uid,
                created_unix_ms: s.created_unix_ms,
                cgroups: Some((&s.cgroups).into()),
                limits: Some((&s.limits).into()),
            }),
            tasks_live: s.tasks_live,
            tasks_peak: s.tasks_peak,
            doomed: s.doomed,
            cpu_seconds: s.cpu_seconds,
            memory_current_bytes: s.memory_current_bytes,
            memory_peak_bytes: s.memory_peak_bytes,
            suspended: s.suspended,
            ..Self::default()
        }
        .with_counts(&s.counts)
    }
}

impl From<&tracker::Usage> for Usage {
    fn from(u: &tracker::Usage) -> Self {
        Self {
            slot: u.slot.clone(),
            cpu_user_seconds: u.cpu_user_seconds,
            cpu_system_seconds: u.cpu_system_seconds,
            memory_current_bytes: u.memory_current_bytes,
            memory_peak_bytes: u.memory_peak_bytes,
            max_process_rss_bytes: u.max_process_rss_bytes,
            read_bytes: u.read_bytes,
            write_bytes: u.write_bytes,
            rchar_bytes: u.rchar_bytes,
            wchar_bytes: u.wchar_bytes,
            read_syscalls: u.read_syscalls,
            write_syscalls: u.write_syscalls,
            cancelled_write_bytes: u.cancelled_write_bytes,
            minor_faults: u.minor_faults,
            major_faults: u.major_faults,
            tasks_live: u.tasks_live,
            tasks_peak: u.tasks_peak,
            processes_live: u.processes_live,
            forks_refused: u.forks_refused,
            oom_kills: u.oom_kills,
            ..Self::default()
        }
        .with_counts(&u.counts)
    }
}

/// Each message that carries a slot's counts gets every count of tracker-common's list, by
/// name: a count the .proto lacks fails the build (and `the_proto_carries_the_counts_and_no_more`
/// checks the other way).
macro_rules! with_counts {
    ($($name:ident, $metric:literal, $help:literal;)*) => {
        impl Usage {
            fn with_counts(mut self, c: &SlotCounts) -> Self {
                $(self.$name = c.$name;)*
                self
            }
        }

        impl SlotStatus {
            fn with_counts(mut self, c: &SlotCounts) -> Self {
                $(self.$name = c.$name;)*
                self
            }
        }
    };
}

tracker_common::for_each_slot_count!(with_counts);

impl From<procinfo::ProcessInfo> for Process {
    fn from(p: procinfo::ProcessInfo) -> Self {
        Self {
            pid: p.pid,
            ppid: p.ppid,
            start_time_ns: p.start_time_ns,
            state: p.state,
            comm: p.comm,
            uid: p.uid,
            threads: p.threads,
            cmdline: p.cmdline,
        }
    }
}

impl From<&tracker::KillReport> for KillReport {
    fn from(r: &tracker::KillReport) -> Self {
        Self {
            slot: r.slot.clone(),
            killed: r.killed,
            tasks_killed: r.tasks_killed,
            elapsed_ms: r.elapsed_ms,
            froze: r.froze,
            doom_kills: r.doom_kills,
            survivors: r
                .survivors
                .iter()
                .map(|s| Survivor {
                    pid: s.pid,
                    tgid: s.tgid,
                    state: s.state.clone(),
                    comm: s.comm.clone(),
                    wchan: s.wchan.clone(),
                    stack: s.stack.clone(),
                })
                .collect(),
            warnings: r.warnings.clone(),
            complete: r.is_complete(),
        }
    }
}

impl From<&WatchEvent> for Event {
    fn from(e: &WatchEvent) -> Self {
        let kind = match e.kind {
            Kind::Fork => EventKind::Fork,
            Kind::Exec => EventKind::Exec,
            Kind::Exit => EventKind::Exit,
            Kind::LeftCgroup => EventKind::LeftCgroup,
            Kind::Oom => EventKind::Oom,
            Kind::SlotEmpty => EventKind::SlotEmpty,
            Kind::Lost => EventKind::Lost,
            Kind::KillDone => EventKind::KillDone,
        };
        Self {
            seq: e.seq,
            kind: kind.into(),
            slot: e.slot.clone(),
            pid: e.pid,
            tgid: e.tgid,
            parent: e.parent,
            exit_code: e.exit_code,
            group_dead: e.group_dead,
            time_ns: e.time_ns,
            comm: e.comm.clone(),
            cgroup_id: e.cgroup_id,
            lost: e.lost,
            lost_reason: if e.kind == Kind::Lost {
                LostReason::KernelBufferFull.into()
            } else {
                LostReason::Unspecified.into()
            },
        }
    }
}

impl Event {
    /// What a Watch client gets when it fell `n` events behind and they were dropped for it.
    pub fn client_lost(n: u64) -> Self {
        Self {
            kind: EventKind::Lost.into(),
            lost: n,
            lost_reason: LostReason::ClientTooSlow.into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of `message name` in the .proto, by name.
    fn proto_fields(name: &str) -> Vec<String> {
        let text = include_str!("../../../proto/tracker/v1/tracker.proto");
        let start = text.find(&format!("message {name} {{")).expect("message in the .proto");
        let body = &text[start..start + text[start..].find("\n}").expect("end of message")];
        body.lines()
            .map(|l| l.split("//").next().unwrap_or_default())
            .filter_map(|l| l.split_once('=').map(|(decl, _)| decl))
            .filter_map(|decl| decl.split_whitespace().last().map(str::to_owned))
            .collect()
    }

    #[test]
    fn the_proto_carries_the_counts_and_no_more() {
        let counts: Vec<&str> = SlotCounts::FIELDS.iter().map(|f| f.name).collect();
        // What each message carries besides the counts, from the library's own figures.
        let usage_own = [
            "slot",
            "cpu_user_seconds",
            "cpu_system_seconds",
            "memory_current_bytes",
            "memory_peak_bytes",
            "max_process_rss_bytes",
            "read_bytes",
            "write_bytes",
            "rchar_bytes",
            "wchar_bytes",
            "read_syscalls",
            "write_syscalls",
            "cancelled_write_bytes",
            "minor_faults",
            "major_faults",
            "tasks_live",
            "tasks_peak",
            "processes_live",
            "forks_refused",
            "oom_kills",
        ];
        let status_own = [
            "slot",
            "tasks_live",
            "tasks_peak",
            "doomed",
            "cpu_seconds",
            "memory_current_bytes",
            "memory_peak_bytes",
            "suspended",
        ];
        for (message, own) in [("Usage", &usage_own[..]), ("SlotStatus", &status_own[..])] {
            let mut want: Vec<&str> = own.iter().copied().chain(counts.iter().copied()).collect();
            let mut have = proto_fields(message);
            want.sort_unstable();
            have.sort_unstable();
            assert_eq!(have, want, "message {message} and the counts of tracker-common disagree");
        }
    }

    #[test]
    fn counts_reach_the_messages_by_name() {
        let c = SlotCounts { net_tx_packets: 3, tag_failures: 1, ..Default::default() };
        let u = Usage::default().with_counts(&c);
        assert_eq!((u.net_tx_packets, u.tag_failures), (3, 1));
    }

    #[test]
    fn limits_round_trip() {
        let wire = Limits {
            memory_max_bytes: Some(100 << 20),
            tasks_max: Some(50),
            cpu_weight: Some(200),
            cpu_quota_percent: Some(150.0),
            deny_network: false,
            allow_connect: vec!["10.0.0.0/8:443".into(), "[::1]:22".into()],
            deny_devices: vec!["195:*".into(), "1:5".into()],
        };
        let domain = limits::Limits::try_from(wire.clone()).unwrap();
        assert_eq!(domain.memory_max, Some(100 << 20));
        assert_eq!(domain.network.as_ref().map(Vec::len), Some(2));
        assert_eq!(Limits::from(&domain), wire);
    }

    #[test]
    fn deny_network_is_an_empty_allow_list() {
        let l = Limits { deny_network: true, ..Default::default() };
        let domain = limits::Limits::try_from(l.clone()).unwrap();
        assert_eq!(domain.network, Some(vec![]));
        assert_eq!(Limits::from(&domain), l);
        assert_eq!(limits::Limits::try_from(Limits::default()).unwrap(), limits::Limits::default());
    }

    #[test]
    fn bad_limits_are_refused() {
        for bad in [
            Limits { cpu_weight: Some(0), ..Default::default() },
            Limits { cpu_quota_percent: Some(f64::NAN), ..Default::default() },
            Limits { memory_max_bytes: Some(0), ..Default::default() },
            Limits { allow_connect: vec!["10.0.0.0/33".into()], ..Default::default() },
            Limits { deny_devices: vec!["x:1".into()], ..Default::default() },
            Limits {
                deny_network: true,
                allow_connect: vec!["1.2.3.4".into()],
                ..Default::default()
            },
        ] {
            assert!(limits::Limits::try_from(bad.clone()).is_err(), "{bad:?} accepted");
        }
    }
}
