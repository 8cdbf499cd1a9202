//! pidfds: a handle on one process that a reused pid can never redirect.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `PIDFD_THREAD` (6.9+): a pidfd on a thread rather than a thread-group leader.
const PIDFD_THREAD: libc::c_int = libc::O_EXCL;

fn pidfd_open(pid: u32, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall; on success it returns a new file descriptor that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A pidfd on task `tid` of process `tgid`: on the process itself when `tid` is its leader,
/// on the thread otherwise (the leader may be gone while other threads live).
pub fn open_task(tid: u32, tgid: u32) -> io::Result<OwnedFd> {
    if tid == tgid {
        return pidfd_open(tid, 0);
    }
    match pidfd_open(tid, PIDFD_THREAD) {
        // A kernel before 6.9: fall back to the process.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => pidfd_open(tgid, 0),
        other => other,
    }
}

pub fn open_process(pid: u32) -> io::Result<OwnedFd> {
    pidfd_open(pid, 0)
}

/// Send `sig` through a pidfd. A process that is already gone is not an error.
pub fn send_signal(fd: &OwnedFd, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: a plain syscall on a descriptor we own.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<u8>(), 0)
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}
