//! Programs attached on demand (`rss_stat` while a slot needs it, `sys_enter` while a kill
//! runs): attached from their pin and their link pinned, so the attachment outlives the
//! process that made it.
use std::{fs, path::Path};

use aya::programs::{
    BtfTracePoint,
    links::{FdLink, PinnedLink},
};

use crate::{
    error::{Error, IoContext as _, Result},
    paths::Paths,
};

/// Attach program `name` (the active generation's, from its pin) and pin its link, unless the
/// pinned link already runs it. A link of another program there (an older generation's) is
/// replaced, which detaches that program.
pub fn attach(paths: &Paths, name: &str) -> Result<()> {
    let link = paths.link_pin(name);
    let prog_pin = paths.prog_pin(name);
    let mut prog = BtfTracePoint::from_pin(&prog_pin)
        .map_err(|e| Error::bpf(format!("opening {}", prog_pin.display()), e))?;
    if attached_to(&link, &prog) {
        return Ok(());
    }
    let id = prog.attach().map_err(|e| Error::bpf(format!("attaching {name}"), e))?;
    let fd: FdLink =
        prog.take_link(id).map_err(|e| Error::bpf(format!("the link of {name}"), e))?.into();
    let staging = Paths::staging(&link);
    let _ = fs::remove_file(&staging);
    fd.pin(&staging).map_err(|e| Error::bpf(format!("pinning {}", staging.display()), e))?;
    fs::rename(&staging, &link).ctx(|| format!("pinning {}", link.display()))
}

/// Detach program `name`: unpin its link, if pinned.
pub fn detach(paths: &Paths, name: &str) -> Result<()> {
    let link = paths.link_pin(name);
    match fs::remove_file(&link) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.ctx(|| format!("removing {}", link.display())),
    }
}

/// Whether the link pinned at `link` runs `prog`.
fn attached_to(link: &Path, prog: &BtfTracePoint) -> bool {
    let Ok(pinned) = PinnedLink::from_pin(link) else { return false };
    let Ok(info) = FdLink::from(pinned).info() else { return false };
    prog.info().is_ok_and(|p| p.id() == info.program_id())
}
