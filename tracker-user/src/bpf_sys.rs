//! The raw bpf(2) commands aya 0.14 leaves out for us: a `bpf_link` for a cgroup device or
//! sysctl program (aya cannot turn those links into ones it can pin), pinning a descriptor,
//! and a program's count of skipped runs (its `ProgramInfo` has no `recursion_misses`).
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
pub const BPF_CGROUP_DEVICE: u32 = 6;
pub const BPF_CGROUP_SYSCTL: u32 = 18;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> io::Result<i64> {
    // SAFETY: `attr` is a zeroed union large enough for these commands.
    let r =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr) as u32) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// `BPF_LINK_CREATE` of `prog` on cgroup `cgroup` for `attach_type`.
pub fn cgroup_link(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 8];
    // link_create: prog_fd, target_fd (u32 each), attach_type, flags (u32 each).
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(cgroup.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(attach_type);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_OBJ_PIN` of `fd` at `path` (on bpffs).
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = [0u64; 8];
    attr[0] = c.as_ptr() as u64;
    attr[1] = u64::from(fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// `bpf_prog_info.recursion_misses` (5.12+): where it is, and the size of the struct up to it.
const RECURSION_MISSES_AT: usize = 208;
const _: () = assert!(
    core::mem::offset_of!(aya_obj::generated::bpf_prog_info, recursion_misses)
        == RECURSION_MISSES_AT
);

/// How many runs of program `prog` the kernel skipped (`recursion_misses`); `None` if the
/// kernel does not count them (before 5.12).
pub fn recursion_misses(prog: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let mut info = [0u64; 32];
    let mut attr = [0u64; 8];
    // info: bpf_fd, info_len (u32 each), info (a pointer).
    attr[0] = u64::from(prog.as_raw_fd() as u32) | ((size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // The kernel writes back how much of the struct it filled.
    let filled = (attr[0] >> 32) as usize;
    Ok((filled >= RECURSION_MISSES_AT + 8).then(|| info[RECURSION_MISSES_AT / 8]))
}
