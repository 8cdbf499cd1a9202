//! Signals to a whole slot, and suspend/resume. Every signal goes through `tagged`. Suspend freezes the slot's cgroup; the slot's tasks outside it (a root job that
//! left it, or a machine without a freezer) get SIGSTOP instead, and SIGCONT on resume.
use std::collections::BTreeSet;

use serde::Serialize;
use tracker_common::TaskTag;

use super::{instance::Instance, live, tagged};
use crate::{
    error::{Error, Result},
    registry::{self, SlotRecord},
};

/// How long a suspend waits for the slot's cgroup to report itself frozen.
const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Passes over the slot's tags while stopping the tasks outside its cgroup: a task that forks
/// between two passes has its child stopped by the next.
const STOP_PASSES: usize = 8;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SuspendReport {
    /// Whether the slot's cgroup was frozen (or thawed, for a resume).
    pub cgroup: bool,
    /// Processes outside the cgroup that got SIGSTOP (or SIGCONT).
    pub processes: u64,
}

/// A signal number the kernel accepts (1 to SIGRTMAX), from a number or a name (`TERM`,
/// `SIGTERM`, `15`).
pub fn parse_signal(s: &str) -> Result<i32> {
    let t = s.trim();
    let sig = match t.parse::<i32>() {
        Ok(n) => n,
        Err(_) => {
            let name = t.to_ascii_uppercase();
            let name = name.strip_prefix("SIG").unwrap_or(&name);
            NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).ok_or_else(|| {
                Error::InvalidSignal(format!("{s:?} is not a signal: use a number or e.g. TERM"))
            })?
        }
    };
    check_signal(sig)?;
    Ok(sig)
}

pub fn check_signal(sig: i32) -> Result<()> {
    if (1..=libc::SIGRTMAX()).contains(&sig) {
        Ok(())
    } else {
        Err(Error::InvalidSignal(format!("{sig} is not a signal: use 1 to {}", libc::SIGRTMAX())))
    }
}

const NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ABRT", libc::SIGABRT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Send `sig` to every process of slot `name`. Returns how many processes got it.
pub(super) fn signal(t: &Instance, name: &str, sig: i32) -> Result<u64> {
    check_signal(sig)?;
    let rec = t.slot(name)?;
    let tags = live::tags_of(t, rec.id)?;
    Ok(tagged::signal(t, &tags, rec.id, sig).len() as u64)
}

/// Stop every task of slot `name` where it is: freeze its cgroup, SIGSTOP what is
/// outside it.
pub(super) fn suspend(t: &Instance, name: &str) -> Result<SuspendReport> {
    let rec = t.slot(name)?;
    let frozen = rec.cgroups.freeze(FREEZE_TIMEOUT);
    let mut stopped = BTreeSet::new();
    for _ in 0..STOP_PASSES {
        let outside = tags_outside_cgroup(t, &rec, frozen)?;
        let fresh: Vec<(u32, TaskTag)> =
            outside.into_iter().filter(|(_, t)| !stopped.contains(&t.tgid)).collect();
        if fresh.is_empty() {
            break;
        }
        stopped.extend(tagged::signal(t, &fresh, rec.id, libc::SIGSTOP));
    }
    registry::set_suspended(&t.paths, name, true)?;
    Ok(SuspendReport { cgroup: frozen, processes: stopped.len() as u64 })
}

/// Undo `suspend`: thaw the slot's cgroup, SIGCONT what is outside it.
pub(super) fn resume(t: &Instance, name: &str) -> Result<SuspendReport> {
    let rec = t.slot(name)?;
    let has_freezer = rec.cgroups.has_freezer();
    rec.cgroups.thaw();
    let outside = tags_outside_cgroup(t, &rec, has_freezer)?;
    let continued = tagged::signal(t, &outside, rec.id, libc::SIGCONT);
    registry::set_suspended(&t.paths, name, false)?;
    Ok(SuspendReport { cgroup: has_freezer, processes: continued.len() as u64 })
}

/// The slot's tasks that its cgroup does not hold: all of them when `cgroup_holds` is
/// false (no freezer).
fn tags_outside_cgroup(
    t: &Instance,
    rec: &SlotRecord,
    cgroup_holds: bool,
) -> Result<Vec<(u32, TaskTag)>> {
    let tags = live::tags_of(t, rec.id)?;
    if !cgroup_holds {
        return Ok(tags);
    }
    let inside: BTreeSet<u32> = rec.cgroups.procs().into_iter().collect();
    Ok(tags.into_iter().filter(|(_, t)| !inside.contains(&t.tgid)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigusr1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("9").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal(&libc::SIGRTMAX().to_string()).unwrap(), libc::SIGRTMAX());
    }

    #[test]
    fn bad_signals_are_refused() {
        for bad in ["0", "-1", "65", "FOO", "", "SIG"] {
            assert!(parse_signal(bad).is_err(), "{bad:?} accepted");
        }
    }
}
