//! The doom program's attachment: one link, pinned, shared by every kill of the instance that
//! is under way, in any process.
//!
//! Before 6.10 the kernel refuses to attach one program twice to one raw tracepoint (EEXIST:
//! it keys the attachment by the program, not by the link). Two kills at once (a batch
//! system's `kill` while `tracker run` cleans up after its command, or the daemon killing two
//! slots) would leave the second without the program, and the first's detach would take it
//! from the second mid-kill. So the link is pinned, each kill holds a shared lock for its
//! whole length, and the last kill out (the one that can turn its shared lock exclusive)
//! unpins it. A kill that died leaves the link pinned: the next kill's end, or the next
//! load, detaches it.
use super::instance::Instance;
use crate::{error::Result, on_demand, paths::Paths, programs, registry::StateLock};

/// The doom program is attached for as long as this value (or another kill's) lives.
pub(super) struct Doom<'a> {
    paths: &'a Paths,
    user: StateLock,
}

impl<'a> Doom<'a> {
    pub(super) fn attach(t: &'a Instance) -> Result<Self> {
        let paths = &t.paths;
        let user = StateLock::doom_user(paths)?;
        let _attaching = StateLock::doom_attach(paths)?;
        on_demand::attach(paths, programs::DOOM)?;
        Ok(Self { paths, user })
    }
}

/// Detach the doom program if no kill is under way: what a kill that died left attached
/// (`sys_enter` runs for every system call on the node while it is).
pub(crate) fn detach_if_idle(paths: &Paths) -> Result<()> {
    detach_if_last(paths, &StateLock::doom_user(paths)?)
}

/// Detach the doom program unless a kill other than `user`'s holder is under way, and release
/// `user`. Under the attach lock, so no kill pins the link between the check and the unpin,
/// and `user` released under it, so the next kill to end sees exactly the kills still on.
fn detach_if_last(paths: &Paths, user: &StateLock) -> Result<()> {
    let _attaching = StateLock::doom_attach(paths)?;
    let detached =
        if user.try_exclusive() { on_demand::detach(paths, programs::DOOM) } else { Ok(()) };
    user.release();
    detached
}

impl Drop for Doom<'_> {
    fn drop(&mut self) {
        if let Err(e) = detach_if_last(self.paths, &self.user) {
            tracing::warn!("detaching the doom program: {e}");
        }
    }
}
