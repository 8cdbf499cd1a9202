//! Freeze-and-kill: empty a slot so that nothing survives, and say so.
//!
//! 1. Doom the slot in the kernel and attach the doom program: from now on a task of the slot
//!    dies at its next system call, and a fork or exec already under way kills the forker.
//! 2. Freeze the slot's cgroup, so that what is in it stops where it is.
//! 3. Kill everything in the slot's own cgroup (`cgroup.kill`, or each process through a
//!    pidfd where there is none): only the slot's processes, and what root put there, can be
//!    in it, tagged or not. (A cgroup the slot is bound to is the batch system's: there only
//!    the tagged tasks are killed, by `cgroup.kill` when nothing else is in it.) And every tagged task, in the cgroup or not (a root job may have
//!    left it), through a pidfd that is checked against the kernel tag after it is opened.
//!    Nothing else is signalled, and a reused pid is never hit.
//! 4. Thaw, and sweep until no live task carries the slot's tag and its cgroup is empty.
//! 5. Report how long it took, how many were killed, and anything that survived: a task that
//!    is still alive when the time is up, never one that exited meanwhile.
use std::{
    collections::BTreeSet,
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;
use tracker_common::{SLOT_DOOMED, TaskTag};

use super::{doom::Doom, instance::Instance, live, tagged};
use crate::{
    error::Result,
    pidfd, procinfo,
    registry::{self, SlotRecord},
};

const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct KillOptions {
    /// How long to wait for the slot to empty before reporting survivors.
    pub timeout: Duration,
}

impl Default for KillOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(10) }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct KillReport {
    pub slot: String,
    /// Processes of the slot that ended during the kill.
    pub killed: u64,
    /// Tasks (threads included) that ended during the kill.
    pub tasks_killed: u64,
    pub elapsed_ms: f64,
    /// Whether the slot's cgroup was frozen first.
    pub froze: bool,
    /// Tasks killed in the kernel because they tried to run while doomed.
    pub doom_kills: u64,
    /// Tasks still alive when the timeout passed.
    pub survivors: Vec<Survivor>,
    pub warnings: Vec<String>,
}

impl KillReport {
    pub fn is_complete(&self) -> bool {
        self.survivors.is_empty()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Survivor {
    pub pid: u32,
    pub tgid: u32,
    pub state: String,
    pub comm: String,
    pub wchan: String,
    pub stack: Vec<String>,
}

pub(super) fn kill(t: &Instance, rec: &SlotRecord, opts: &KillOptions) -> Result<KillReport> {
    let start = Instant::now();
    let before = t.maps().counters(rec.id)?;
    let mut warnings = vec![];
    t.maps().set_flags(rec.id, SLOT_DOOMED, 0)?;
    let doom = match Doom::attach(t) {
        Ok(d) => Some(d),
        Err(e) => {
            warnings.push(format!("killing without the doom program: {e}"));
            None
        }
    };
    let froze = rec.cgroups.freeze(FREEZE_TIMEOUT);
    let tags = live::tags_of(t, rec.id)?;
    let strangers = untagged(&rec.cgroups.procs(), &tags);
    // A bound slot's cgroup is the batch system's (its step daemons, or this very process
    // as a job wrapper, may be in it): only the tagged tasks are the slot's there.
    let own = rec.cgroups.bound.is_none();
    if own {
        if !strangers.is_empty() {
            warnings.push(format!(
                "untagged processes {strangers:?} were in the slot's cgroup (put there by \
                 root?): killed with it"
            ));
        }
        if !rec.cgroups.kill_all() {
            kill_cgroup_procs(rec);
        }
    } else if strangers.is_empty() {
        rec.cgroups.kill_all();
    } else {
        warnings.push(format!(
            "untagged processes {strangers:?} are in the batch system's cgroup the slot is \
             bound to: they were left alone"
        ));
    }
    tagged::signal(t, &tags, rec.id, libc::SIGKILL);
    rec.cgroups.thaw();

    let deadline = start + opts.timeout;
    let mut pause = Duration::from_micros(200);
    let remaining = loop {
        // A tag that names no living task is not waited for: the task exited between
        // the scan and the check (its exit program clears it), or the tag is stale.
        let tags: Vec<(u32, TaskTag)> =
            live::tags_of(t, rec.id)?.into_iter().filter(|(t, tag)| alive(*t, tag)).collect();
        let procs: Vec<u32> = if own {
            rec.cgroups.procs().into_iter().filter(|p| process_alive(*p)).collect()
        } else {
            vec![]
        };
        if tags.is_empty() && procs.is_empty() {
            break vec![];
        }
        if Instant::now() >= deadline {
            break survivors(rec, &tags);
        }
        tagged::signal(t, &tags, rec.id, libc::SIGKILL);
        if !procs.is_empty() && !rec.cgroups.kill_all() {
            kill_cgroup_procs(rec);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    drop(doom);
    if remaining.is_empty() {
        t.maps().set_flags(rec.id, 0, SLOT_DOOMED)?;
    }
    // Otherwise the slot stays doomed: a survivor that wakes up dies at its next fork or
    // exec, and a later kill starts where this one stopped.

    // The kill thawed what a suspend froze.
    if rec.suspended
        && let Err(e) = registry::set_suspended(&t.paths, &rec.name, false)
    {
        warnings.push(format!("the slot still reads as suspended: {e}"));
    }
    let after = t.maps().counters(rec.id)?;
    Ok(KillReport {
        slot: rec.name.clone(),
        killed: after.counts.processes_exited - before.counts.processes_exited,
        tasks_killed: after.counts.tasks_exited - before.counts.tasks_exited,
        elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
        froze,
        doom_kills: after.counts.doom_kills - before.counts.doom_kills,
        survivors: remaining,
        warnings,
    })
}

/// What is alive of the slot when the time is up: each task of `tags` that still is the
/// tagged task and has not exited, and each process of the slot's cgroup (tagged or not).
/// Described after the check, and dropped if it exited meanwhile.
fn survivors(rec: &SlotRecord, tags: &[(u32, TaskTag)]) -> Vec<Survivor> {
    let mut out: Vec<Survivor> = tags.iter().filter_map(|(t, tag)| survivor(*t, tag)).collect();
    let seen: BTreeSet<u32> = out.iter().map(|s| s.pid).collect();
    let own = if rec.cgroups.bound.is_none() { rec.cgroups.procs() } else { vec![] };
    for pid in own {
        if seen.contains(&pid) {
            continue;
        }
        if let Some(s) =
            procinfo::describe_any(pid).filter(|i| !is_dead(&i.state)).map(|i| Survivor {
                pid,
                tgid: pid,
                state: i.state,
                comm: i.comm,
                wchan: procinfo::wchan(pid),
                stack: procinfo::kernel_stack(pid),
            })
        {
            out.push(s);
        }
    }
    out
}

/// The processes of `procs` that carry no tag of `tags`.
fn untagged(procs: &[u32], tags: &[(u32, TaskTag)]) -> Vec<u32> {
    let tagged: BTreeSet<u32> = tags.iter().map(|(_, t)| t.tgid).collect();
    procs.iter().copied().filter(|p| !tagged.contains(p)).collect()
}

/// SIGKILL each process of the slot's cgroup through a pidfd, where `cgroup.kill` is not
/// available. A pid is signalled only if it is still in the cgroup after its pidfd was
/// opened: a pid reused meanwhile by a process outside the slot is never hit (a new process
/// in the slot's cgroup is the slot's).
fn kill_cgroup_procs(rec: &SlotRecord) {
    let before = rec.cgroups.procs();
    let fds: Vec<(u32, std::os::fd::OwnedFd)> =
        before.iter().filter_map(|p| pidfd::open_process(*p).ok().map(|fd| (*p, fd))).collect();
    let now: BTreeSet<u32> = rec.cgroups.procs().into_iter().collect();
    for (pid, fd) in fds {
        if now.contains(&pid) {
            let _ = pidfd::send_signal(&fd, libc::SIGKILL);
        }
    }
}

/// A dead task's `/proc` state: zombie, or dead.
fn is_dead(state: &str) -> bool {
    matches!(state, "Z" | "X" | "x")
}

/// Whether process `pid` exists and has not exited.
fn process_alive(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// Whether task `tid` is still the task `tag` names, and has not exited.
fn alive(tid: u32, tag: &TaskTag) -> bool {
    procinfo::state_of(tid, tag.start_ns).is_some_and(|s| !matches!(s, 'Z' | 'X' | 'x'))
}

fn survivor(tid: u32, tag: &TaskTag) -> Option<Survivor> {
    let info = procinfo::describe(tid, tag).filter(|i| !is_dead(&i.state))?;
    Some(Survivor {
        pid: tid,
        tgid: tag.tgid,
        state: info.state,
        comm: info.comm,
        wchan: procinfo::wchan(tid),
        stack: procinfo::kernel_stack(tid),
    })
}
