//! Starting a command as the first task of a slot, tagged before it runs a single instruction
//! of its own; and `run`: start it, wait for it, and kill whatever it leaves behind.
//!
//! The child stops between fork and exec and hands its pid to a helper thread of ours, which
//! adopts it (tags it in the kernel and moves it into the slot's cgroups) and only then lets it
//! exec. Nothing of the command runs untagged, and the tracker process itself is never tagged.
use std::{
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    process::{Child, Command, ExitStatus},
    thread,
};

use serde::Serialize;
use signal_hook::{consts::signal, iterator::Signals};

use super::{
    adopt::{self, AdoptReport},
    instance::Instance,
    kill::{self, KillOptions, KillReport},
    slots::{self, SlotSpec},
    usage::{self, Usage},
};
use crate::{
    cgroup_events::OomWatch,
    error::{Error, IoContext, Result},
    isolation::{Isolation, Prepared},
    registry::SlotRecord,
};

/// How `Tracker::run` behaves.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Keep the slot (and its record) after the command ends, for later queries.
    pub keep_slot: bool,
    pub kill: KillOptions,
    pub isolation: Isolation,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunOutcome {
    pub slot: String,
    /// The command's exit status as a shell reports it: its code, or 128 + the signal.
    pub exit_code: i32,
    /// What was left of the slot when the command ended, and was killed.
    pub leftovers: KillReport,
    /// What the whole tree used, every process it ever had included.
    pub usage: Usage,
    /// The slot went over its memory limit and was killed whole.
    pub killed_for_memory: bool,
    pub released: bool,
}

/// Signals `run` passes on to the command rather than dying of them. SIGINT is not among
/// them: from a terminal it reaches the command directly, being in our process group.
const FORWARDED: &[i32] =
    &[signal::SIGTERM, signal::SIGHUP, signal::SIGQUIT, signal::SIGUSR1, signal::SIGUSR2];

/// Start `cmd` as the first task of slot `name`. `detach` puts it in a session of its own,
/// for a slot that outlives this process (its stdio is the caller's choice). No isolation,
/// but a command that keeps uid 0 runs under the root-job guard, as with `start`.
pub(super) fn spawn(t: &Instance, name: &str, cmd: &mut Command, detach: bool) -> Result<Child> {
    let rec = t.slot(name)?;
    let iso = Isolation::default().prepare(&t.paths, name)?;
    spawn_in(t, &rec, cmd, detach, iso).map(|(child, _)| child)
}

/// Create slot `spec`, isolated as `iso` says, and start `cmd` as its first task. Bad input
/// (a user, a root directory; limits were checked where they entered) fails before anything
/// exists; a failure after that removes whatever was made.
pub(super) fn start(
    t: &Instance,
    spec: &SlotSpec,
    cmd: &mut Command,
    iso: &Isolation,
    detach: bool,
) -> Result<(SlotRecord, Vec<String>, Child)> {
    let prepared = iso.prepare(&t.paths, &spec.name)?;
    let (rec, warnings) = slots::create(t, spec)?;
    let started = prepared.make_dirs().and_then(|()| {
        prepared.configure(cmd);
        spawn_in(t, &rec, cmd, detach, prepared)
    });
    match started {
        Ok((child, _)) => Ok((rec, warnings, child)),
        Err(e) => {
            let _ = kill::kill(t, &rec, &KillOptions::default());
            let _ = slots::release(t, &rec.name);
            Err(e)
        }
    }
}

fn spawn_in(
    t: &Instance,
    rec: &SlotRecord,
    cmd: &mut Command,
    detach: bool,
    iso: Prepared,
) -> Result<(Child, AdoptReport)> {
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let (ready_fd, go_fd) = (ready_w.as_raw_fd(), go_r.as_raw_fd());
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls, on descriptors that stay open until spawn returns, and on data
    // prepared before the fork. Isolation comes after the tag: nothing runs untagged.
    unsafe {
        cmd.pre_exec(move || {
            handshake(ready_fd, go_fd, detach)?;
            iso.enter()
        })
    };
    thread::scope(|s| {
        let helper = s.spawn(move || -> Result<AdoptReport> {
            let pid = read_pid(&ready_r)?;
            let adopted = adopt::adopt(t, rec, pid);
            let _ = write_byte(&go_w, u8::from(adopted.is_ok()));
            adopted
        });
        let spawned = cmd.spawn();
        // Now the helper sees EOF if the child never got as far as the handshake.
        drop((ready_w, go_r));
        let adopted = helper.join().unwrap_or_else(|_| {
            Err(Error::io("tagging the command", io::Error::other("helper thread panicked")))
        });
        match (spawned, adopted) {
            (Ok(child), Ok(report)) => Ok((child, report)),
            // The adoption's error says more than the child's "permission denied".
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(Error::io(format!("starting {:?}", cmd.get_program()), e)),
        }
    })
}

/// Create a slot, run `cmd` in it to the end, kill whatever is left of the slot, and
/// release it (unless `opts.keep_slot`, or something survived the kill).
pub(super) fn run(
    t: &Instance,
    spec: &SlotSpec,
    cmd: &mut Command,
    opts: &RunOptions,
) -> Result<RunOutcome> {
    let (rec, _warnings, mut child) = start(t, spec, cmd, &opts.isolation, false)?;
    let (status, oom_fired) = wait_killing_on_oom(t, &rec, &mut child, &opts.kill)?;
    let leftovers = kill::kill(t, &rec, &opts.kill)?;
    let usage = usage::of(t, &rec.name)?;
    let killed_for_memory = oom_fired || usage.oom_kills > 0;
    let mut exit_code = shell_status(status);
    if killed_for_memory && exit_code == 0 {
        exit_code = 128 + libc::SIGKILL;
    }
    let released =
        !opts.keep_slot && leftovers.is_complete() && slots::release(t, &rec.name).is_ok();
    Ok(RunOutcome { slot: rec.name, exit_code, leftovers, usage, killed_for_memory, released })
}

/// Wait for the command; meanwhile, where the kernel would OOM-kill only one process of
/// the slot (cgroup v1), kill the whole slot when that happens. Returns the command's
/// status and whether the slot was killed for memory here.
fn wait_killing_on_oom(
    t: &Instance,
    rec: &SlotRecord,
    child: &mut Child,
    kill: &KillOptions,
) -> Result<(ExitStatus, bool)> {
    let watch = match OomWatch::new(&rec.cgroups) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("slot {}: no whole-slot OOM kill: {e}", rec.name);
            None
        }
    };
    let Some(watch) = watch else { return Ok((wait_forwarding_signals(child)?, false)) };
    let (stop_r, stop_w) = pipe()?;
    thread::scope(|s| {
        let watcher = s.spawn(|| watch.wait(&stop_r) && kill::kill(t, rec, kill).is_ok());
        let status = wait_forwarding_signals(child);
        let _ = write_byte(&stop_w, 1);
        let fired = watcher.join().unwrap_or(false);
        Ok((status?, fired))
    })
}

/// Wait for `child`, passing on the signals in `FORWARDED` to it.
fn wait_forwarding_signals(child: &mut Child) -> Result<ExitStatus> {
    let mut signals = Signals::new(FORWARDED.iter().copied().chain([signal::SIGINT]))
        .ctx(|| "installing signal handlers".into())?;
    let handle = signals.handle();
    let pid = child.id() as libc::pid_t;
    // The thread hands the iterator back rather than dropping it. `close` marks it closed and
    // then writes to its self-pipe (a socket, without MSG_NOSIGNAL); a thread that saw the
    // mark first and dropped the read end in between made that write a SIGPIPE, whose
    // default action (the CLI restores it) killed the tracker as its command ended (signal
    // 13, once in some hundred runs of a command that exits at once). Dropped here, after
    // `close`, the read end outlives every write to it.
    let forwarder = thread::spawn(move || {
        for sig in signals.forever() {
            if FORWARDED.contains(&sig) {
                // SAFETY: `pid` is our unreaped child, so it cannot have been reused.
                unsafe { libc::kill(pid, sig) };
            }
        }
        signals
    });
    let status = child.wait().ctx(|| "waiting for the command".into());
    handle.close();
    drop(forwarder.join());
    status
}

/// An exit status as a shell gives it: the code, or 128 + the terminating signal.
pub fn shell_status(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// In the child, between fork and exec: report our pid, then wait to be told we are tagged.
fn handshake(ready: RawFd, go: RawFd, detach: bool) -> io::Result<()> {
    // SAFETY: async-signal-safe system calls on descriptors inherited from the parent.
    unsafe {
        if detach && libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        let pid = (libc::getpid() as u32).to_ne_bytes();
        if libc::send(ready, pid.as_ptr().cast(), pid.len(), libc::MSG_NOSIGNAL)
            != pid.len() as isize
        {
            return Err(io::Error::last_os_error());
        }
        let mut answer = 0u8;
        loop {
            let n = libc::read(go, (&raw mut answer).cast(), 1);
            if n == 1 && answer == 1 {
                return Ok(());
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            // Not tagged: refuse to run untracked. (No allocation here: a raw OS error.)
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
}

/// A one-way channel between the tracker and its child: (read end, write end). A connected
/// socket pair rather than a pipe, so that a write to a peer that died is an EPIPE error
/// (`send` with MSG_NOSIGNAL) and not a SIGPIPE, whose default action (the CLI restores it)
/// would end the tracker, or the job between fork and exec, without a word.
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two new descriptors that we then own.
    if unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    } < 0
    {
        return Err(Error::io("creating a socket pair", io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptors from pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn read_pid(fd: &OwnedFd) -> Result<u32> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into a local buffer from a descriptor we own.
        let n =
            unsafe { libc::read(fd.as_raw_fd(), buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        match n {
            0 => {
                return Err(Error::io(
                    "starting the command",
                    io::Error::other("it exited before it could be tagged"),
                ));
            }
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(Error::io("waiting for the command to start", e));
                }
            }
            n => got += n as usize,
        }
    }
    Ok(u32::from_ne_bytes(buf))
}

fn write_byte(fd: &OwnedFd, b: u8) -> io::Result<()> {
    // SAFETY: sending one byte from a local on a socket we own.
    if unsafe { libc::send(fd.as_raw_fd(), (&raw const b).cast(), 1, libc::MSG_NOSIGNAL) } == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::{env, process::Command};

    use super::*;

    const CHILD: &str = "TRACKER_TEST_FORWARDER_CHILD";

    /// Run in a process of its own with SIGPIPE's default action, as the CLI runs: wait for
    /// many commands that exit at once, the case where the forwarding thread can see its
    /// iterator closed before `close` writes to it.
    #[test]
    fn waiting_for_a_command_that_exits_at_once_never_raises_sigpipe() {
        if env::var_os(CHILD).is_some() {
            // SAFETY: restoring a signal's default disposition, as the CLI's main does.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            for _ in 0..2000 {
                let mut child = Command::new("true").spawn().expect("spawning true");
                let status = wait_forwarding_signals(&mut child).expect("waiting");
                assert!(status.success());
            }
            return;
        }
        let out = Command::new(env::current_exe().unwrap())
            .args(["--exact", "tracker::launch::tests::waiting_for_a_command_that_exits_at_once_never_raises_sigpipe", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the waiting process ended with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // The child ran this test, not none (a renamed module would match nothing).
        assert!(stdout.contains("1 passed"), "{stdout}");
    }
}
