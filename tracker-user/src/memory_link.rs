//! The `rss_stat` program runs at every change of any process's resident-page counters, about
//! fifteen times per fork+exit, on every process of the machine. It is attached only while
//! some slot takes its memory figures from it (see `cgroup::MemorySource`): a slot whose
//! memory no cgroup of its own keeps. Its link is pinned while attached, so it stays attached
//! with no tracker process running; the loader, the creation and the release of a slot decide,
//! under the registry lock, so that two of them never decide apart.
use crate::{
    cgroup::MemorySource, error::Result, on_demand, paths::Paths, programs, registry::SlotRecord,
};

/// Where slot `rec`'s memory figures come from: its cgroup's, unless a running process was
/// adopted into it, whose pages from before stay charged to its former cgroup (the kernel
/// moves no charges: v1's `memory.move_charge_at_immigrate` is refused since 6.x, v2 never
/// had it).
pub fn source(rec: &SlotRecord) -> MemorySource {
    if rec.adopted { MemorySource::Rss } else { rec.cgroups.memory_source() }
}

/// Whether `slots` need the `rss_stat` program.
pub fn needed<'a>(slots: impl IntoIterator<Item = &'a SlotRecord>) -> bool {
    slots.into_iter().any(|s| source(s) == MemorySource::Rss)
}

/// Attach the program (from its pin, the active generation's) if `slots` need it, detach it
/// if not. Call with the registry lock held.
pub fn sync<'a>(paths: &Paths, slots: impl IntoIterator<Item = &'a SlotRecord>) -> Result<()> {
    if needed(slots) {
        on_demand::attach(paths, programs::RSS)
    } else {
        on_demand::detach(paths, programs::RSS)
    }
}
