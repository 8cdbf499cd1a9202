//! The daemon's Unix socket: bound under a temporary name, mode 0600, given to root and the
//! configured group, mode 0660, and only then renamed into place, so that a client that can
//! connect to the path finds it ready (owner and mode set). Never world-writable. A socket
//! left by a daemon that died is replaced; one that answers belongs to a running daemon and is
//! left alone.
use std::{
    fs,
    io::ErrorKind,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

use crate::error::{Error, IoContext as _, Result};

pub const SOCKET_MODE: u32 = 0o660;

/// The bound socket; its file is removed on drop, if it is still the one we made.
pub struct Socket {
    pub listener: UnixListener,
    path: PathBuf,
    ino: u64,
}

pub fn bind(path: &Path, gid: u32) -> Result<Socket> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    remove_stale(path)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.new", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let listener = {
        // SAFETY: umask only changes this process's file-creation mask; restored below.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(&tmp);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        bound.ctx(|| format!("binding {}", tmp.display()))?
    };
    let ready = prepare(&tmp, gid).and_then(|()| {
        fs::rename(&tmp, path).ctx(|| format!("moving {} into place", tmp.display()))
    });
    if let Err(e) = ready {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let ino = fs::symlink_metadata(path).ctx(|| format!("reading {}", path.display()))?.ino();
    listener.set_nonblocking(true).ctx(|| "making the socket non-blocking".into())?;
    Ok(Socket { listener, path: path.to_owned(), ino })
}

/// Root and group `gid` own the socket at `path`, mode 0660.
fn prepare(path: &Path, gid: u32) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Daemon(format!("{} contains a NUL byte", path.display())))?;
    // The daemon runs as root, which made the socket, so root owns it already: only the group
    // changes (-1 keeps the owner, so the unit test runs as any user).
    // SAFETY: a valid C path; lchown does not follow a symlink put in its place.
    if unsafe { libc::lchown(c.as_ptr(), libc::uid_t::MAX, gid) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::io(format!("giving {} to group {gid}", path.display()), e));
    }
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
        .ctx(|| format!("setting the mode of {}", path.display()))
}

fn remove_stale(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::Daemon(format!(
            "{} exists and is not a socket: remove it or set `socket` elsewhere",
            path.display()
        )));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::Daemon(format!(
            "another daemon is serving {}: stop it first",
            path.display()
        ))),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            fs::remove_file(path).ctx(|| format!("removing the stale socket {}", path.display()))
        }
        Err(e) => Err(Error::io(format!("checking {}", path.display()), e)),
    }
}

impl Socket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_never_world_writable_and_a_live_one_is_kept() {
        let dir = std::env::temp_dir().join(format!("trk-sock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("t.sock");
        // SAFETY: getegid cannot fail.
        let gid = unsafe { libc::getegid() };
        let s = bind(&path, gid).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, SOCKET_MODE);
        assert_eq!(meta.gid(), gid);
        let e = bind(&path, gid).err().unwrap().to_string();
        assert!(e.contains("another daemon"), "{e}");
        drop(s);
        assert!(!path.exists(), "the socket was not removed");
        // A stale one (nobody listening) is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        let s = bind(&path, gid).unwrap();
        drop(s);
        fs::write(&path, "x").unwrap();
        assert!(bind(&path, gid).err().unwrap().to_string().contains("not a socket"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
