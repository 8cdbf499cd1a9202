//! Files that root opens or creates on a job's behalf (`tracker run --output`, `--summary`),
//! opened without following anything the job could have planted: no symbolic link anywhere
//! in the path (`openat2` with `RESOLVE_NO_SYMLINKS`), no FIFO or device (it must be a
//! regular file), and no hard link to someone else's file (one link only). A refusal is one
//! line that names the option and the path, and nothing was written.
use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use rustix::fs::{CWD, FileType, Mode, OFlags, ResolveFlags};

use crate::error::{Error, Result};

/// How the file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Appended to (created if missing).
    Append,
    /// Replaced (created if missing, emptied otherwise).
    Replace,
}

/// Open `path` for writing, for `what` (the option, for messages).
pub fn open_for_job(what: &str, path: &Path, how: Write) -> Result<File> {
    let mut flags = OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    // Non-blocking, so that a FIFO put in its place cannot hang us before the check.
    flags |= OFlags::NONBLOCK | OFlags::NOCTTY;
    if how == Write::Append {
        flags |= OFlags::APPEND;
    }
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let fd = rustix::fs::openat2(CWD, path, flags, Mode::from_raw_mode(0o644), resolve)
        .map_err(|e| refused(what, path, e.into()))?;
    check(&fd).map_err(|why| refused(what, path, io::Error::other(why)))?;
    if how == Write::Replace {
        rustix::fs::ftruncate(&fd, 0).map_err(|e| refused(what, path, e.into()))?;
    }
    let fl = rustix::fs::fcntl_getfl(&fd).map_err(|e| refused(what, path, e.into()))?;
    rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK)
        .map_err(|e| refused(what, path, e.into()))?;
    Ok(File::from(fd))
}

fn check(fd: &OwnedFd) -> std::result::Result<(), &'static str> {
    let st = rustix::fs::fstat(fd.as_fd()).map_err(|_| "cannot be read")?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err("is not a regular file");
    }
    if st.st_nlink > 1 {
        return Err("has other hard links (it may be another file): refused");
    }
    Ok(())
}

fn refused(what: &str, path: &Path, e: io::Error) -> Error {
    let detail = match e.raw_os_error() {
        Some(libc::ELOOP) => io::Error::other(
            "a symbolic link is on the path: refused (name the real path; a job could have \
             planted the link)",
        ),
        Some(libc::ENXIO) => io::Error::other("is not a regular file"),
        _ => e,
    };
    Error::io(format!("{what} {}", path.display()), detail)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn links_and_fifos_are_refused_and_their_targets_untouched() {
        let dir = std::env::temp_dir().join(format!("trk-safe-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        symlink(&victim, dir.join("link")).unwrap();
        symlink(dir.join("real"), dir.join("dirlink")).unwrap();
        std::fs::hard_link(&victim, dir.join("hard")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid C path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for (name, says) in [
            ("link", "symbolic link"),
            ("dirlink/out", "symbolic link"),
            ("hard", "hard links"),
            ("fifo", "not a regular file"),
        ] {
            for how in [Write::Append, Write::Replace] {
                let e = open_for_job("--output", &dir.join(name), how).unwrap_err().to_string();
                assert!(e.contains(says) && e.starts_with("--output "), "{name}: {e}");
                assert!(!e.contains('\n'), "{e}");
            }
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!dir.join("real/out").exists());
        // A plain path works: appended, then replaced.
        use std::io::Write as _;
        let out = dir.join("real/out");
        open_for_job("--output", &out, Write::Append).unwrap().write_all(b"a").unwrap();
        open_for_job("--output", &out, Write::Append).unwrap().write_all(b"b").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "ab");
        open_for_job("--summary", &out, Write::Replace).unwrap().write_all(b"c").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "c");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
