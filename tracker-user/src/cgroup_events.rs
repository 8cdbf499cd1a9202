//! What a slot's cgroups counted (OOM kills, forks refused by `pids.max`), and a wait for the
//! slot's next OOM kill on cgroup v1, where the kernel kills one process and not the job.
//!
//! cgroup v2 has `memory.oom.group`: the kernel itself kills the whole cgroup. v1 has no such
//! switch, so whoever runs the job (`tracker run`, the daemon) waits on the v1 OOM
//! notification (an eventfd registered in `cgroup.event_control`) and kills the slot.
use std::{
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::{
    cgroup::{SlotCgroups, subtree},
    error::{Error, IoContext as _, Result},
};

impl SlotCgroups {
    /// Processes the OOM killer killed in the slot's memory cgroup.
    pub fn oom_kills(&self) -> u64 {
        self.count("memory.events", "memory", "memory.oom_control", "oom_kill")
    }

    /// Forks refused because the slot was at its `tasks-max`.
    pub fn forks_refused(&self) -> u64 {
        self.count("pids.events", "pids", "pids.events", "max")
    }

    /// `key` of the v2 file where the slot's v2 directory has it, else of the v1 file of
    /// `controller`; 0 where neither is. v2 counts its subtree; v1 counts each cgroup apart,
    /// so a bound job cgroup's figure is the sum over its step cgroups.
    fn count(&self, v2: &str, controller: &str, v1: &str, key: &str) -> u64 {
        let from_v2 = self.unified.as_ref().and_then(|d| keyed(&d.join(v2), key));
        from_v2
            .or_else(|| {
                let dir = self.v1.get(controller)?;
                let counts: Vec<u64> =
                    subtree(dir).iter().filter_map(|d| keyed(&d.join(v1), key)).collect();
                (!counts.is_empty()).then(|| counts.iter().sum())
            })
            .unwrap_or(0)
    }

    /// Whether the kernel kills the whole slot on OOM by itself (cgroup v2 `memory.oom.group`).
    fn oom_kills_group(&self) -> bool {
        self.unified.as_ref().is_some_and(|d| {
            fs::read_to_string(d.join("memory.oom.group")).is_ok_and(|s| s.trim() == "1")
        })
    }
}

/// `key N` from a flat-keyed cgroup file; None if the file cannot be read (the slot's
/// directory in that hierarchy lacks the controller), 0 if it lacks the key.
fn keyed(file: &std::path::Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    Some(
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0),
    )
}

/// A registered v1 OOM notification for one slot: readable once the slot's memory cgroup has
/// been under OOM.
pub struct OomWatch {
    event: OwnedFd,
    // The registration lasts while the control file stays open.
    _control: fs::File,
}

impl OomWatch {
    /// Register for the slot's OOM notifications, where the kernel would kill only one
    /// process of it. None where there is nothing to do (v2 with `memory.oom.group`, or no
    /// memory cgroup).
    pub fn new(cg: &SlotCgroups) -> Result<Option<Self>> {
        if cg.oom_kills_group() {
            return Ok(None);
        }
        let Some(dir) = cg.v1.get("memory") else { return Ok(None) };
        let control = fs::File::open(dir.join("memory.oom_control"))
            .ctx(|| format!("opening {}/memory.oom_control", dir.display()))?;
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io("creating an eventfd", io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we now own.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        let line = format!("{} {}", event.as_raw_fd(), control.as_raw_fd());
        fs::write(dir.join("cgroup.event_control"), line)
            .ctx(|| format!("registering for OOM events in {}", dir.display()))?;
        Ok(Some(Self { event, _control: control }))
    }

    pub(crate) fn event_fd(&self) -> std::os::fd::RawFd {
        self.event.as_raw_fd()
    }

    /// Wait until the slot is under OOM (true) or `stop` becomes readable (false).
    pub fn wait(&self, stop: &OwnedFd) -> bool {
        let mut fds = [
            libc::pollfd { fd: self.event.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        loop {
            // SAFETY: polling two descriptors we hold, with a correctly sized array.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return n > 0 && fds[0].revents & libc::POLLIN != 0 && fds[1].revents == 0;
        }
    }
}
