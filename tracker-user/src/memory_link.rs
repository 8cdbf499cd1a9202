//! The `rss_stat` program runs at every change of any process's resident-page counters, about
//! fifteen times per fork+exit, on every process of the machine. It is attached only while
//! some slot takes its memory figures from it (see `cgroup::MemorySource`): a slot whose
//! memory no cgroup of its own keeps. Its link is pinned while attached, so it stays attached
//! with no tracker process running; the loader, the creation and the release of a slot decide,
//! under the registry lock, so that two of them never decide apart.
use std::fs;

use aya::programs::{BtfTracePoint, links::FdLink};

use crate::{
    cgroup::MemorySource,
    error::{Error, IoContext as _, Result},
    paths::Paths,
    programs,
    registry::SlotRecord,
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
    let link = paths.link_pin(programs::RSS);
    if !needed(slots) {
        if link.exists() {
            fs::remove_file(&link).ctx(|| format!("removing {}", link.display()))?;
        }
        return Ok(());
    }
    let prog_pin = paths.prog_pin(programs::RSS);
    let mut prog = BtfTracePoint::from_pin(&prog_pin)
        .map_err(|e| Error::bpf(format!("opening {}", prog_pin.display()), e))?;
    if attached_to(&link, &prog) {
        return Ok(());
    }
    let id = prog.attach().map_err(|e| Error::bpf("attaching the rss_stat program", e))?;
    let fd: FdLink = prog.take_link(id).map_err(|e| Error::bpf("the rss_stat link", e))?.into();
    let staging = Paths::staging(&link);
    let _ = fs::remove_file(&staging);
    fd.pin(&staging).map_err(|e| Error::bpf(format!("pinning {}", staging.display()), e))?;
    // Replacing the pin drops an older generation's link, which detaches its program.
    fs::rename(&staging, &link).ctx(|| format!("pinning {}", link.display()))
}

/// Whether the link pinned at `link` runs `prog`.
fn attached_to(link: &std::path::Path, prog: &BtfTracePoint) -> bool {
    let Ok(pinned) = aya::programs::links::PinnedLink::from_pin(link) else { return false };
    let Ok(info) = FdLink::from(pinned).info() else { return false };
    prog.info().is_ok_and(|p| p.id() == info.program_id())
}
