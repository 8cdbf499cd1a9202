//! Checks before acting, and the facts they rest on: privilege, and that a directory is the
//! filesystem it should be (bpffs, tracefs, cgroupfs).
use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use crate::error::{Error, Result};

pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const TRACEFS_MAGIC: i64 = 0x7472_6163;
pub const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root() -> Result<()> {
    if is_root() { Ok(()) } else { Err(Error::NotRoot) }
}

/// Whether `dir` is the root of a filesystem with this magic number.
pub fn fs_magic_is(dir: &Path, magic: i64) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == magic
    }
}

pub fn require_bpffs(dir: &Path) -> Result<()> {
    if fs_magic_is(dir, BPF_FS_MAGIC) { Ok(()) } else { Err(Error::BpffsUnavailable(dir.into())) }
}
