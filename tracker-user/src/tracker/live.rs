//! The slot's tasks as the kernel has them now, from one pass of the usage iterator over the
//! machine's tasks (in proportion to the tasks there are, not to pid_max): the records the
//! usage adds up, and the tags kill, signal and `ps` act on.
use tracker_common::{TaskTag, USAGE_EXITED, UsageRecord, UsageRequest};

use super::instance::Instance;
use crate::{
    error::{Error, Result},
    programs,
    task_iter::{self, current_tid},
};

/// The live tagged tasks of slot id `slot`, `(tid, tag)`, from one pass of the usage iterator
/// over the machine's tasks: in proportion to the tasks there are, not to pid_max, and
/// without mapping the tasks array.
pub(super) fn tags_of(t: &Instance, slot: u32) -> Result<Vec<(u32, TaskTag)>> {
    Ok(records(t, slot)?
        .into_iter()
        .filter(|r| r.flags & USAGE_EXITED == 0)
        .map(|r| (r.tid, TaskTag { slot: r.slot, tgid: r.tgid, start_ns: r.start_ns }))
        .collect())
}

/// The usage iterator's records for slot `slot` (0: every slot).
pub(super) fn records(t: &Instance, slot: u32) -> Result<Vec<UsageRecord>> {
    let tid = current_tid();
    t.maps()
        .usage
        .insert(tid, UsageRequest { slot, _pad0: 0 }, 0)
        .map_err(|e| Error::bpf("writing the usage request", e))?;
    let records = task_iter::run::<UsageRecord>(&t.paths, programs::USAGE);
    let _ = t.maps().usage.remove(&tid);
    records
}
