//! The tracker's own systemd scope, where its slots live on a machine run by systemd when no
//! delegated cgroup was given: `system.slice/tracker-<instance>.scope`, made with
//! `Delegate=yes` as Slurm makes `slurmstepd.scope`.
//!
//! A scope, not the daemon's service: a service's cgroup goes when the service stops, and on
//! systemd before 254 (no `DelegateSubgroup=`) a restarted service cannot put its new main
//! process into a cgroup that enables controllers for running jobs; so the daemon's restarts
//! would fight the jobs for the cgroup. A scope is a unit of its own that nothing restarts. It
//! lives while it holds a process, so it holds one that does nothing (`sleep infinity`, in the
//! `supervisor` leaf beside the slots): the slots' parent stays while they are empty and the
//! daemon is stopped. Stopping the scope (`systemctl stop tracker-<instance>.scope`) kills
//! everything in it, jobs included, as stopping any unit does; `tracker unload` stops it only
//! once the slots' parent is gone.
use std::{
    io::Read as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    error::{Error, Result},
    paths::{DEFAULT_INSTANCE, SCOPE_HOLDER, SCOPE_SLICE, SYSTEMCTL, SYSTEMD_RUN},
};

/// How long systemd may take to make the scope: under software emulation a transient unit
/// takes seconds.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The scope's unit name for `instance`: `tracker.scope` for the default one.
pub fn unit_name(instance: &str) -> String {
    if instance == DEFAULT_INSTANCE {
        format!("{DEFAULT_INSTANCE}.scope")
    } else {
        format!("tracker-{instance}.scope")
    }
}

/// Where systemd puts the scope's cgroup, relative to the cgroup2 root.
pub fn cgroup_rel(unit: &str) -> PathBuf {
    Path::new(SCOPE_SLICE).join(unit)
}

/// Whether this machine can make the scope: systemd runs it and `systemd-run` is there.
pub fn available() -> bool {
    Path::new(crate::paths::SYSTEMD_RUNNING).exists() && find_tool(SYSTEMD_RUN).is_some()
}

/// Start the scope `unit` whose cgroup is `dir`, unless it runs, and wait until its holder is
/// in it. The holder is `systemd-run --scope`, which asks systemd for the scope and then
/// becomes the holder. It is forked twice, in a session of its own: an orphan from the start,
/// which systemd reaps, never a zombie of a long-lived daemon.
pub fn ensure(unit: &str, dir: &Path) -> Result<()> {
    if populated(dir) {
        return Ok(());
    }
    let fail = |detail: String| Error::Scope { unit: unit.to_owned(), detail };
    let tool =
        find_tool(SYSTEMD_RUN).ok_or_else(|| fail(format!("{SYSTEMD_RUN} is not installed")))?;
    let holder = find_tool(SCOPE_HOLDER[0])
        .ok_or_else(|| fail(format!("{} is not installed", SCOPE_HOLDER[0])))?;
    let mut cmd = Command::new(tool);
    cmd.args(["--scope", "--quiet", "--collect", "--property=Delegate=yes"])
        .arg(format!("--unit={unit}"))
        .arg(format!("--slice={SCOPE_SLICE}"))
        .arg("--description=tracker: the batch slots' cgroups (its process only holds the scope)")
        .arg("--")
        .arg(holder)
        .args(&SCOPE_HOLDER[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setsid, fork and _exit are async-signal-safe; nothing else runs between fork and
    // exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            match libc::fork() {
                0 => Ok(()),
                pid if pid > 0 => libc::_exit(0),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let mut child = cmd.spawn().map_err(|e| fail(format!("cannot run {SYSTEMD_RUN}: {e}")))?;
    // The first fork, gone already.
    let _ = child.wait();
    let mut err = child.stderr.take().ok_or_else(|| fail("no stderr pipe".into()))?;
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe { libc::fcntl(err.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    // Until the cgroup holds the holder: systemd-run says why it failed on stderr and exits
    // (end of file); once it has become the holder, the pipe stays open and silent.
    let mut why = Vec::new();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if populated(dir) {
            return Ok(());
        }
        let mut buf = [0u8; 512];
        match err.read(&mut buf) {
            Ok(0) => {
                // Another command may have made the scope a moment before ("already exists").
                thread::sleep(Duration::from_secs(1));
                if populated(dir) {
                    return Ok(());
                }
                let why = String::from_utf8_lossy(&why);
                return Err(fail(format!("{SYSTEMD_RUN} failed: {}", why.trim())));
            }
            Ok(n) => why.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(fail(format!("reading {SYSTEMD_RUN}'s errors: {e}"))),
        }
        if Instant::now() > deadline {
            return Err(fail(format!("its cgroup {} did not appear in time", dir.display())));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Stop the scope (its holder is all that is left in it); errors are not the caller's
/// business beyond a line.
pub fn stop(unit: &str) -> Option<String> {
    let tool = find_tool(SYSTEMCTL)?;
    match Command::new(tool).args(["stop", "--quiet", unit]).stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("stopping {unit}: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("stopping {unit}: {e}")),
    }
}

/// Whether the scope's cgroup exists with a process in it or below.
fn populated(dir: &Path) -> bool {
    super::event_set(dir, "populated")
}

/// systemd's tools where distributions put them (a root service's PATH may be short).
fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_is_named_after_the_instance_in_the_system_slice() {
        assert_eq!(unit_name("tracker"), "tracker.scope");
        assert_eq!(unit_name("x"), "tracker-x.scope");
        assert_eq!(cgroup_rel("tracker-x.scope"), Path::new("system.slice/tracker-x.scope"));
    }
}
