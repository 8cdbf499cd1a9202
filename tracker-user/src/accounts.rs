//! Unix accounts: resolving `--user` (and the daemon's group) to ids before anything starts:
//! an unknown user is an error while nothing exists yet, and the child, between fork and
//! exec, only makes system calls.
use std::ffi::{CStr, CString};

use crate::error::{Error, Result};

/// Who a job runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserIds {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, as `initgroups` would set them.
    pub groups: Vec<u32>,
    pub home: String,
    pub shell: String,
}

/// A user name, or a uid that has a passwd entry.
pub fn resolve(spec: &str) -> Result<UserIds> {
    let unknown = || Error::UnknownUser(spec.to_owned());
    let mut pw: libc::passwd = unsafe_zeroed();
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let rc = if let Ok(uid) = spec.parse::<u32>() {
        // SAFETY: the buffers outlive the call; `out` is set to `&pw` or NULL.
        unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) }
    } else {
        let name = CString::new(spec).map_err(|_| unknown())?;
        // SAFETY: as above, with a NUL-terminated name.
        unsafe { libc::getpwnam_r(name.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) }
    };
    if rc != 0 || out.is_null() {
        return Err(unknown());
    }
    // SAFETY: getpw*_r filled these with NUL-terminated strings in `buf`.
    let text = |p: *const libc::c_char| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    let (name, uid, gid) = (text(pw.pw_name), pw.pw_uid, pw.pw_gid);
    let (home, shell) = (text(pw.pw_dir), text(pw.pw_shell));
    Ok(UserIds { groups: groups_of(&name, gid)?, name, uid, gid, home, shell })
}

/// A group name, or a gid (which need not have a group entry).
pub fn resolve_group(spec: &str) -> Result<u32> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    let unknown = || Error::UnknownGroup(spec.to_owned());
    let name = CString::new(spec).map_err(|_| unknown())?;
    // SAFETY: `group` is plain data (integers and pointers), for which zero is valid.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: the buffers outlive the call; `out` is set to `&gr` or NULL.
    let rc =
        unsafe { libc::getgrnam_r(name.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Err(unknown());
    }
    Ok(gr.gr_gid)
}

fn groups_of(name: &str, gid: u32) -> Result<Vec<u32>> {
    let cname = CString::new(name).map_err(|_| Error::UnknownUser(name.to_owned()))?;
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; `n` is updated to the count needed.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return Ok(groups);
        }
        if n as usize <= groups.len() || groups.len() > 65_536 {
            return Err(Error::UnknownUser(format!("{name} (its groups cannot be read)")));
        }
        groups.resize(n as usize, 0);
    }
}

fn unsafe_zeroed() -> libc::passwd {
    // SAFETY: `passwd` is plain data (integers and pointers), for which zero is valid.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve() {
        let root = resolve("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        assert_eq!(resolve("0").unwrap().name, "root");
        assert!(matches!(resolve("no-such-user-xyz"), Err(Error::UnknownUser(_))));
    }

    #[test]
    fn groups_resolve() {
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert_eq!(resolve_group("4242").unwrap(), 4242);
        assert!(matches!(resolve_group("no-such-group-xyz"), Err(Error::UnknownGroup(_))));
    }
}
