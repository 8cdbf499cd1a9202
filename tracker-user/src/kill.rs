//! Freeze-and-kill: empty a slot so that nothing survives, and say so.
//!
//! 1. Doom the slot in the kernel and attach the doom program: from now on a task of the slot
//!    dies at its next system call, and a fork or exec already under way kills the forker.
//! 2. Freeze the slot's cgroup, so that what is in it stops where it is.
//! 3. Kill: `cgroup.kill` when everything in the cgroup is tagged; and every tagged task, in
//!    the cgroup or not (a root job may have left it), through a pidfd that is checked against
//!    the kernel tag after it is opened, so a reused pid is never hit.
//! 4. Thaw, and sweep until the kernel says the slot has no task left.
//! 5. Report how long it took, how many were killed, and anything that survived.
use std::{
    collections::BTreeSet,
    thread,
    time::{Duration, Instant},
};

use aya::programs::BtfTracePoint;
use serde::Serialize;
use tracker_common::{SLOT_DOOMED, TaskTag};

use crate::{
    error::{Error, Result},
    procinfo, programs,
    registry::SlotRecord,
    tracker::Tracker,
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

/// The doom program, attached for as long as this value lives.
struct DoomLink {
    _prog: BtfTracePoint,
}

impl DoomLink {
    fn attach(tracker: &Tracker) -> Result<Self> {
        let pin = tracker.paths().prog_pin(programs::DOOM);
        let mut prog = BtfTracePoint::from_pin(&pin)
            .map_err(|e| Error::bpf(format!("opening {}", pin.display()), e))?;
        prog.attach().map_err(|e| Error::bpf("attaching the doom program", e))?;
        Ok(Self { _prog: prog })
    }
}

impl Tracker {
    pub fn kill(&self, name: &str, opts: &KillOptions) -> Result<KillReport> {
        let rec = self.slot(name)?;
        self.kill_slot(&rec, opts)
    }

    pub(crate) fn kill_slot(&self, rec: &SlotRecord, opts: &KillOptions) -> Result<KillReport> {
        let start = Instant::now();
        let before = self.maps().counters(rec.id)?;
        let mut warnings = vec![];
        self.maps().set_flags(rec.id, SLOT_DOOMED, 0)?;
        let doom = match DoomLink::attach(self) {
            Ok(d) => Some(d),
            Err(e) => {
                warnings.push(format!("killing without the doom program: {e}"));
                None
            }
        };
        let froze = rec.cgroups.freeze(FREEZE_TIMEOUT);
        let tags = self.maps().tags_of(rec.id)?;
        if froze && self.cgroup_is_all_tagged(rec, &tags, &mut warnings) {
            rec.cgroups.kill_all();
        }
        self.signal_tags(&tags, rec.id, libc::SIGKILL);
        rec.cgroups.thaw();

        let deadline = start + opts.timeout;
        let mut pause = Duration::from_micros(200);
        let remaining = loop {
            let tags = self.maps().tags_of(rec.id)?;
            if tags.is_empty() {
                break tags;
            }
            if Instant::now() >= deadline {
                break tags;
            }
            self.signal_tags(&tags, rec.id, libc::SIGKILL);
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        drop(doom);
        if remaining.is_empty() {
            self.maps().set_flags(rec.id, 0, SLOT_DOOMED)?;
        }
        // Otherwise the slot stays doomed: a survivor that wakes up dies at its next fork or
        // exec, and a later kill starts where this one stopped.

        // The kill thawed what a suspend froze.
        if rec.suspended
            && let Err(e) = crate::signal::set_suspended(self, &rec.name, false)
        {
            warnings.push(format!("the slot still reads as suspended: {e}"));
        }
        let after = self.maps().counters(rec.id)?;
        Ok(KillReport {
            slot: rec.name.clone(),
            killed: after.procs_exited - before.procs_exited,
            tasks_killed: after.tasks_exited - before.tasks_exited,
            elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
            froze,
            doom_kills: after.doom_kills - before.doom_kills,
            survivors: remaining.iter().map(|(tid, tag)| survivor(*tid, tag)).collect(),
            warnings,
        })
    }

    /// Whether every process in the slot's cgroups is tagged with the slot, so that
    /// `cgroup.kill` cannot hit a process that is not the job's.
    fn cgroup_is_all_tagged(
        &self,
        rec: &SlotRecord,
        tags: &[(u32, TaskTag)],
        warnings: &mut Vec<String>,
    ) -> bool {
        let tagged: BTreeSet<u32> = tags.iter().map(|(_, t)| t.tgid).collect();
        let strangers: Vec<u32> =
            rec.cgroups.procs().into_iter().filter(|p| !tagged.contains(p)).collect();
        if !strangers.is_empty() {
            warnings.push(format!(
                "untagged processes {strangers:?} are in the slot's cgroup: they were left alone"
            ));
        }
        strangers.is_empty()
    }
}

fn survivor(tid: u32, tag: &TaskTag) -> Survivor {
    let info = procinfo::describe(tid, tag);
    Survivor {
        pid: tid,
        tgid: tag.tgid,
        state: info.as_ref().map(|i| i.state.clone()).unwrap_or_default(),
        comm: info.map(|i| i.comm).unwrap_or_default(),
        wchan: procinfo::wchan(tid),
        stack: procinfo::kernel_stack(tid),
    }
}
