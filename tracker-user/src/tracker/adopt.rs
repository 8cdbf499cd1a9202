//! Adopting an existing process and its descendants into a slot, in the kernel.
//!
//! The tagging itself is done by the `trk_adopt` task iterator (see tracker-ebpf/src/adopt.rs),
//! which walks the kernel's task list and tags the target and every task whose real parent
//! is tagged in the slot: no `/proc` scan decides who is a descendant, and no depth limit
//! applies. Once a process is tagged, its future children are tagged at fork. Tagging never
//! fails silently: an adoption that leaves the target untagged is an error.
use std::collections::BTreeSet;

use serde::Serialize;
use tracker_common::{AdoptRecord, AdoptRequest, PF_KTHREAD};

use super::instance::Instance;
use crate::{
    error::{Error, Result},
    pidfd, procinfo, programs,
    registry::{SlotRecord, StateLock},
    task_iter::{self, current_tid},
};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AdoptReport {
    /// Processes (thread groups) newly tagged.
    pub processes: usize,
    /// Tasks (threads included) newly tagged.
    pub tasks: usize,
}

/// Tag process `pid` and all its current descendants into slot `name`, and move them into
/// the slot's cgroups; into a bound slot, only tag them: they stay in the batch system's
/// cgroups.
pub(super) fn adopt(t: &Instance, rec: &SlotRecord, pid: u32) -> Result<AdoptReport> {
    check_adoptable(t, rec, pid)?;
    // systemd may have removed the slot's cgroup while it was empty (see `restore`).
    super::restore::slot(t, rec)?;
    let _one_at_a_time = StateLock::adoption(&t.paths)?;
    let tid = current_tid();
    t.maps()
        .adopt
        .insert(tid, AdoptRequest { target_tgid: pid, slot: rec.id }, 0)
        .map_err(|e| Error::bpf("writing the adopt request", e))?;
    let result = adopt_passes(t);
    let _ = t.maps().adopt.remove(&tid);
    let records = result?;
    check_tagged(t, rec, pid)?;
    let processes: BTreeSet<u32> =
        records.iter().map(|r| r.tgid).chain(std::iter::once(pid)).collect();
    if rec.cgroups.bound.is_none() {
        for tgid in &processes {
            rec.cgroups.add_process(*tgid)?;
        }
    }
    Ok(AdoptReport {
        processes: records.iter().filter(|r| r.tid == r.tgid).count(),
        tasks: records.len(),
    })
}

fn check_adoptable(t: &Instance, rec: &SlotRecord, pid: u32) -> Result<()> {
    if pid <= 1 {
        return Err(Error::RefusedAdopt { pid, why: "it is the init process" });
    }
    if pid == std::process::id() {
        return Err(Error::RefusedAdopt { pid, why: "it is this tracker process" });
    }
    if let Err(e) = pidfd::open_process(pid) {
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => {
                Error::RefusedAdopt { pid, why: "it is a thread, not a process: adopt its process" }
            }
            _ => Error::NoSuchProcess(pid),
        });
    }
    let stat = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map_err(|_| Error::NoSuchProcess(pid))?;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(Error::RefusedAdopt { pid, why: "it is a kernel thread" });
    }
    if stat.state == 'Z' {
        return Err(Error::NoSuchProcess(pid));
    }
    if let Some(tag) = t.maps().tag(pid)?
        && tag.slot != rec.id
    {
        return Err(Error::AlreadyInSlot { pid, slot: t.slot_name_of(tag.slot) });
    }
    Ok(())
}

/// The target must be tagged in the slot now: a task the kernel could not tag (a tid
/// beyond the tasks array) would otherwise run untracked while the caller reports success.
fn check_tagged(t: &Instance, rec: &SlotRecord, pid: u32) -> Result<()> {
    let maps = t.maps();
    let tag = maps.tag(pid)?;
    // The tag must be the target's, not one left at its pid by an earlier process.
    if tag.is_some_and(|t| t.slot == rec.id && procinfo::state_of(pid, t.start_ns).is_some()) {
        return Ok(());
    }
    let capacity = maps.tasks_capacity();
    let why = if pid >= capacity {
        format!(
            "its pid is beyond the {capacity} tids the tasks array can tag \
             (kernel.pid_max was raised after the tracker loaded): `tracker unload`, then \
             load again"
        )
    } else if procfs::process::Process::new(pid as i32).is_err() {
        "it exited during the adoption".to_owned()
    } else {
        "the kernel did not tag it (see tag_failures in `tracker status`)".to_owned()
    };
    Err(Error::NotTagged { pid, why })
}

/// Run the iterator until a pass tags nothing. A pass tags each task whose parent is
/// tagged by then; a child met before its parent is caught by the next pass. Every pass
/// but the last tags at least one task, so the tasks array's size bounds the passes.
fn adopt_passes(t: &Instance) -> Result<Vec<AdoptRecord>> {
    let bound = t.maps().tasks_capacity();
    let mut all = vec![];
    for _ in 0..bound {
        let more: Vec<AdoptRecord> = task_iter::run(&t.paths, programs::ADOPT)?;
        if more.is_empty() {
            break;
        }
        all.extend(more);
    }
    Ok(all)
}
