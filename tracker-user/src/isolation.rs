//! What a job sees of the machine: a private `/tmp`, its own PID namespace, a root directory,
//! another user; and, for a job that keeps uid 0, the root-job guard. Everything is resolved
//! and checked by `Isolation::prepare` before a slot exists; the child then applies it between
//! fork and exec with system calls only (no allocation: the parent may have other threads),
//! after it has been tagged.
//!
//! Directories a job could have written (a root directory it was given, anything inside it)
//! are never followed through a symbolic link: every mount target and every directory made
//! is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a descriptor of the
//! root (or of `/`), bind mounts are made from descriptors (`open_tree` + `move_mount`), and
//! the working directory is reopened the same way. A link found before the slot exists is one
//! clear error; one planted later fails the start (ELOOP) rather than being followed.
//!
//! The root-job guard (on by default for a job that keeps uid 0; `no_root_guard` turns it
//! off) keeps such a job from untracking itself or others: its own mount namespace with every
//! bpffs mount detached (so no pin is reachable by path), no CAP_SYS_PTRACE (so no
//! `/proc/PID/root` of a process outside, whose view still has bpffs), no CAP_SYS_MODULE,
//! CAP_BPF or CAP_PERFMON, and the seccomp filter of `seccomp.rs` (no `bpf`, no mount-family
//! call, no `setns`, no `ptrace`, no module or kexec loading). What it does not stop is in the
//! README's threat model: root can still kill processes, write files (the tracker's binary and
//! configuration included), change sysctls, and read the daemon's token files.
use std::{
    ffi::{CStr, CString},
    fs, io,
    os::{
        fd::{AsFd as _, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    process::Command,
    ptr,
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
    },
};

use rustix::{
    fs::{CWD, Mode, OFlags, ResolveFlags},
    mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, fsconfig_create,
        fsmount, fsopen, move_mount, open_tree,
    },
};

use crate::{
    accounts::{self, UserIds},
    error::{Error, IoContext as _, Result},
    paths::Paths,
    seccomp,
};

/// How a job is isolated; the default is not at all (but a job that keeps uid 0 is guarded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Its own `/tmp` and `/var/tmp`, backed by the slot's scratch directory.
    pub private_tmp: bool,
    /// Its own PID namespace: it sees and can signal only its own processes.
    pub pid_ns: bool,
    /// Run chrooted into this directory, the working directory bind-mounted inside.
    pub root: Option<PathBuf>,
    /// Run as this user (name or uid), with `no_new_privs` and no capabilities.
    pub user: Option<String>,
    /// Run a job that keeps uid 0 without the root-job guard.
    pub no_root_guard: bool,
}

/// An `Isolation` resolved for one slot: paths as C strings, the user as ids, the root as a
/// descriptor.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    scratch: Option<PathBuf>,
    unshare: libc::c_int,
    pid_ns: bool,
    /// What mount targets are resolved beneath: the root directory, or `/`. A path, opened
    /// again in the child: a descriptor from before `unshare` would name the machine's
    /// mounts, not the job's copies.
    base: Option<CString>,
    /// In order, in the child: mount points are made where the earlier mounts put them
    /// (the working directory may be under a private /tmp).
    steps: Vec<Step>,
    /// The working directory inside the root, relative to it: chroot there.
    chroot: Option<CString>,
    user: Option<UserIds>,
    guard: Option<RootGuard>,
}

#[derive(Clone, Debug)]
enum Step {
    /// A directory to make if missing: its parent (relative to the base; "." for the base
    /// itself) and its name.
    Mkdir { parent: CString, name: CString },
    /// Bind `source` (an absolute, root-owned path; `None`: the working directory) on
    /// `target` (relative to the base).
    Bind { source: Option<CString>, target: CString, recursive: bool },
    /// A new procfs (of the job's PID namespace) on `target`.
    Proc { target: CString },
}

/// What the root-job guard does in the child.
#[derive(Clone, Default)]
struct RootGuard {
    /// Every bpffs mount point, deepest last (detached in reverse).
    bpffs: Vec<CString>,
    filter: Vec<libc::sock_filter>,
}

impl std::fmt::Debug for RootGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootGuard")
            .field("bpffs", &self.bpffs)
            .field("filter_len", &self.filter.len())
            .finish()
    }
}

impl Isolation {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Resolve and check everything, changing nothing: an unknown user, a missing root or a
    /// symbolic link where a directory must be is an error before any slot, cgroup,
    /// directory or mount exists.
    pub fn prepare(&self, paths: &Paths, slot_name: &str) -> Result<Prepared> {
        let mut p = Prepared { pid_ns: self.pid_ns, ..Default::default() };
        p.user = self.user.as_deref().map(accounts::resolve).transpose()?;
        let keeps_root = p.user.as_ref().map_or_else(crate::preflight::is_root, |u| u.uid == 0);
        if keeps_root && !self.no_root_guard {
            p.guard =
                Some(RootGuard { bpffs: bpffs_mounts()?, filter: seccomp::root_guard_filter() });
            p.unshare = libc::CLONE_NEWNS;
        }
        if !(self.private_tmp || self.pid_ns || self.root.is_some()) {
            return Ok(p);
        }
        let root = self.root.as_deref().map(check_root).transpose()?;
        let base_path = root.as_ref().map_or(Path::new("/"), |(abs, _)| abs.as_path());
        let base = match &root {
            Some((_, fd)) => fd.clone(),
            None => Arc::new(open_dir(CWD, c"/").map_err(|e| Error::io("opening /", e))?),
        };
        // A directory of the base that must exist already (and be no link).
        let existing = |what: &str, rel: &str| -> Result<CString> {
            let c = cstring(Path::new(rel))?;
            open_dir(base.as_fd(), &c).map_err(|e| {
                Error::Isolation(format!("{what}: {}: {}", base_path.join(rel).display(), why(&e)))
            })?;
            Ok(c)
        };
        p.unshare = libc::CLONE_NEWNS;
        if self.pid_ns {
            p.unshare |= libc::CLONE_NEWPID;
        }
        if self.private_tmp {
            let scratch = paths.scratch_dir(slot_name);
            for (sub, target) in [("tmp", "tmp"), ("var_tmp", "var/tmp")] {
                let target = existing("--private-tmp", target)?;
                let source = Some(cstring(&scratch.join(sub))?);
                p.steps.push(Step::Bind { source, target, recursive: false });
            }
            p.scratch = Some(scratch);
        }
        if self.pid_ns {
            // A /proc of the new namespace, or `ps` would show the machine's processes.
            p.steps.push(Step::Proc { target: existing("--pid-ns", "proc")? });
        }
        if let Some((root, _)) = &root {
            let maybe = |rel: &str| -> Result<Option<CString>> {
                match open_dir(base.as_fd(), &cstring(Path::new(rel))?) {
                    Ok(_) => Ok(Some(cstring(Path::new(rel))?)),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
                    Err(e) => Err(Error::Isolation(format!(
                        "--root: {}: {}",
                        root.join(rel).display(),
                        why(&e)
                    ))),
                }
            };
            if !self.pid_ns
                && let Some(target) = maybe("proc")?
            {
                p.steps.push(Step::Bind { source: Some(c"/proc".into()), target, recursive: true });
            }
            if let Some(target) = maybe("dev")? {
                p.steps.push(Step::Bind { source: Some(c"/dev".into()), target, recursive: true });
            }
            let cwd = std::env::current_dir().ctx(|| "reading the working directory".into())?;
            let cwd_rel = cwd.strip_prefix("/").unwrap_or(&cwd).to_path_buf();
            let mut ancestors: Vec<&Path> =
                cwd_rel.ancestors().filter(|a| !a.as_os_str().is_empty()).collect();
            ancestors.reverse();
            for dir in ancestors {
                // What exists already must be a directory reached without a link.
                maybe(&dir.to_string_lossy())?;
                let parent = match dir.parent() {
                    Some(d) if !d.as_os_str().is_empty() => cstring(d)?,
                    _ => c".".into(),
                };
                let name = cstring(Path::new(dir.file_name().unwrap_or_default()))?;
                p.steps.push(Step::Mkdir { parent, name });
            }
            if cwd_rel.as_os_str().is_empty() {
                p.chroot = Some(c".".into());
            } else {
                let target = cstring(&cwd_rel)?;
                p.steps.push(Step::Bind { source: None, target: target.clone(), recursive: true });
                p.chroot = Some(target);
            }
        }
        p.base = Some(cstring(base_path)?);
        Ok(p)
    }
}

/// `--root-name NAME`: the directory the site configuration names in its `[roots]` table.
pub fn named_root(config: &Path, name: &str) -> Result<PathBuf> {
    let text = fs::read_to_string(config).ctx(|| {
        format!("--root-name {name}: reading the site configuration {}", config.display())
    })?;
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        Error::Isolation(format!("{}: {}", config.display(), e.message()))
    })?;
    doc.get("roots")
        .and_then(|r| r.get(name))
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| {
            Error::Isolation(format!(
                "no root named {name:?} in the [roots] table of {}",
                config.display()
            ))
        })
}

/// The root directory, and a descriptor of it opened through no symbolic link: the path may
/// be one the job's user can change, so a link anywhere in it is refused, not followed.
fn check_root(root: &Path) -> Result<(PathBuf, Arc<OwnedFd>)> {
    let abs = if root.is_absolute() {
        root.to_path_buf()
    } else {
        std::env::current_dir().ctx(|| "reading the working directory".into())?.join(root)
    };
    let fd = open_dir(CWD, &cstring(&abs)?)
        .map_err(|e| Error::Isolation(format!("root directory {}: {}", abs.display(), why(&e))))?;
    let same =
        |a: &rustix::fs::Stat, b: &rustix::fs::Stat| a.st_dev == b.st_dev && a.st_ino == b.st_ino;
    if let (Ok(r), Ok(slash)) = (rustix::fs::fstat(&fd), rustix::fs::stat("/"))
        && same(&r, &slash)
    {
        return Err(Error::Isolation("--root / would isolate nothing".into()));
    }
    Ok((abs, Arc::new(fd)))
}

/// An `O_PATH` descriptor of the directory `rel`, beneath `base`, through no symbolic link.
/// A system call only: the child uses it too.
fn open_dir<Fd: rustix::fd::AsFd>(base: Fd, rel: &CStr) -> io::Result<OwnedFd> {
    let mut resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    // An absolute path (the root itself, resolved already) is only checked for links.
    if !rel.to_bytes().starts_with(b"/") {
        resolve |= ResolveFlags::BENEATH;
    }
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::openat2(base, rel, flags, Mode::empty(), resolve)?)
}

/// Why a directory could not be used, in words.
fn why(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => "a symbolic link is on the path: refused (root follows none a \
                              job could have planted)"
            .into(),
        Some(libc::EXDEV) => "the path leaves the root directory: refused".into(),
        Some(libc::ENOTDIR) => "is not a directory".into(),
        _ => e.to_string(),
    }
}

/// Every bpffs mount point of this mount namespace, parents before children.
fn bpffs_mounts() -> Result<Vec<CString>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").ctx(|| "reading /proc/self/mountinfo".into())?;
    let mut out = vec![];
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split(' ').next() != Some("bpf") {
            continue;
        }
        if let Some(point) = left.split(' ').nth(4) {
            out.push(cstring(Path::new(&unescape_mountinfo(point)))?);
        }
    }
    Ok(out)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(v) = b
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Isolation(format!("{} contains a NUL byte", p.display())))
}

impl Prepared {
    pub fn is_empty(&self) -> bool {
        self.unshare == 0 && self.user.is_none()
    }

    /// Make the slot's scratch directories (as open as `/tmp`, in a root-only parent), each
    /// made and opened beneath the last, through no link.
    pub fn make_dirs(&self) -> Result<()> {
        let Some(scratch) = &self.scratch else { return Ok(()) };
        let (Some(slot), Some(top)) =
            (scratch.file_name(), scratch.parent().and_then(Path::parent))
        else {
            return Err(Error::Isolation(format!("{}: no slot directory", scratch.display())));
        };
        let fail = |what: &Path, e: io::Error| {
            Error::Isolation(format!("creating {}: {}", what.display(), why(&e)))
        };
        fs::create_dir_all(top).ctx(|| format!("creating {}", top.display()))?;
        let top_fd = dir_fd(CWD, &cstring(top)?).map_err(|e| fail(top, e))?;
        rustix::fs::fchmod(&top_fd, Mode::from_raw_mode(0o700)).map_err(|e| fail(top, e.into()))?;
        let parent = scratch.parent().unwrap_or(top);
        let scratch_fd = mkdir_beneath(&top_fd, c"scratch", 0o700).map_err(|e| fail(parent, e))?;
        let slot_fd = mkdir_beneath(&scratch_fd, &cstring(Path::new(slot))?, 0o755)
            .map_err(|e| fail(scratch, e))?;
        for sub in [c"tmp", c"var_tmp"] {
            let dir = scratch.join(sub.to_str().unwrap_or_default());
            let fd = mkdir_beneath(&slot_fd, sub, 0o1777).map_err(|e| fail(&dir, e))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o1777))
                .map_err(|e| fail(&dir, e.into()))?;
        }
        Ok(())
    }

    /// What the command's environment says about who runs it.
    pub fn configure(&self, cmd: &mut Command) {
        if let Some(u) = &self.user {
            cmd.env("USER", &u.name).env("LOGNAME", &u.name).env("HOME", &u.home);
            cmd.env("SHELL", &u.shell);
        }
    }

    /// In the child, between fork and exec, once tagged. With a PID namespace this forks
    /// once more: the caller's child stays behind as a shim that waits for the namespace's
    /// init (and passes signals on), and only the init returns from here.
    pub(crate) fn enter(&self) -> io::Result<()> {
        // SAFETY (whole function): system calls only, on data prepared before the fork.
        unsafe {
            if self.unshare != 0 {
                check(libc::unshare(self.unshare))?;
                // Our mounts must not reach the machine; the machine's still reach us.
                check(libc::mount(
                    ptr::null(),
                    c"/".as_ptr(),
                    ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    ptr::null(),
                ))?;
            }
            if self.pid_ns {
                become_init()?;
            }
            // Checked in `prepare`; a link swapped in since is refused here.
            let base = match &self.base {
                Some(path) => Some(open_dir(CWD, path)?),
                None => None,
            };
            for step in &self.steps {
                let Some(base) = &base else { break };
                self.step(base.as_fd(), step)?;
            }
            if let Some(g) = &self.guard {
                // Out of reach by path: no pin can be opened, renamed or unlinked.
                for point in g.bpffs.iter().rev() {
                    libc::umount2(point.as_ptr(), libc::MNT_DETACH);
                }
            }
            if let (Some(base), Some(cwd)) = (&base, &self.chroot) {
                // The working directory as mounted inside the root, reached through no link.
                let cwd = open_dir(base.as_fd(), cwd)?;
                rustix::process::fchdir(base)?;
                rustix::process::chroot(c".")?;
                rustix::process::fchdir(&cwd)?;
            }
            if let Some(u) = &self.user {
                drop_to(u)?;
            }
            if let Some(g) = &self.guard {
                drop_caps(GUARD_DROPS)?;
                seccomp::install(&g.filter)?;
            }
        }
        Ok(())
    }

    /// One step, in the child: system calls only.
    fn step(&self, base: BorrowedFd<'_>, step: &Step) -> io::Result<()> {
        let empty =
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
        match step {
            Step::Mkdir { parent, name } => {
                let dir = open_dir(base, parent)?;
                match rustix::fs::mkdirat(&dir, name.as_c_str(), Mode::from_raw_mode(0o755)) {
                    Err(rustix::io::Errno::EXIST) => Ok(()),
                    r => Ok(r?),
                }
            }
            Step::Bind { source, target, recursive } => {
                let target = open_dir(base, target)?;
                let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
                if *recursive {
                    flags |= OpenTreeFlags::AT_RECURSIVE;
                }
                let tree = match source {
                    Some(path) => open_tree(CWD, path.as_c_str(), flags)?,
                    // The directory itself, whatever its path names now.
                    None => open_tree(CWD, c".", flags)?,
                };
                Ok(move_mount(&tree, c"", &target, c"", empty)?)
            }
            Step::Proc { target } => {
                let target = open_dir(base, target)?;
                let fs = fsopen(c"proc", FsOpenFlags::FSOPEN_CLOEXEC)?;
                fsconfig_create(&fs)?;
                let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID
                    | MountAttrFlags::MOUNT_ATTR_NODEV
                    | MountAttrFlags::MOUNT_ATTR_NOEXEC;
                let m = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
                Ok(move_mount(&m, c"", &target, c"", empty)?)
            }
        }
    }
}

/// A descriptor of directory `name` beneath `dir`, made first (with `mode`) if missing.
fn mkdir_beneath(dir: &OwnedFd, name: &CStr, mode: u32) -> io::Result<OwnedFd> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    dir_fd(dir, name)
}

/// A readable descriptor (for fchmod) of the directory `rel` beneath `base`, through no link.
fn dir_fd<Fd: rustix::fd::AsFd>(base: Fd, rel: &CStr) -> io::Result<OwnedFd> {
    // An absolute path is the instance's own (root-owned) data directory.
    let resolve = if rel.to_bytes().starts_with(b"/") {
        ResolveFlags::empty()
    } else {
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    Ok(rustix::fs::openat2(base, rel, flags, Mode::empty(), resolve)?)
}

/// Capabilities a guarded root job loses: tracing (and with it `/proc/PID/root` of any
/// process that holds more than it), modules, BPF and perf.
const GUARD_DROPS: &[u32] = &[
    19, // CAP_SYS_PTRACE
    16, // CAP_SYS_MODULE
    38, // CAP_PERFMON
    39, // CAP_BPF
];

/// Drop `caps` from the bounding, effective, permitted, inheritable and ambient sets.
unsafe fn drop_caps(caps: &[u32]) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as the kernel expects.
    unsafe {
        for &cap in caps {
            // EINVAL: a capability this kernel does not know (CAP_BPF before 5.8).
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0
                && *libc::__errno_location() != libc::EINVAL
            {
                return Err(io::Error::last_os_error());
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_LOWER,
                cap as libc::c_ulong,
                0,
                0,
            );
        }
        if libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
        for &cap in caps {
            let (i, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
            data[i].effective &= !bit;
            data[i].permitted &= !bit;
            data[i].inheritable &= !bit;
        }
        if libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The namespace init's pid, for the shim's signal handler.
static INIT_PID: AtomicI32 = AtomicI32::new(0);

/// Signals the shim passes on to the namespace's init.
const SHIM_FORWARDS: [libc::c_int; 6] =
    [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGINT];

extern "C" fn forward(sig: libc::c_int) {
    // SAFETY: kill is async-signal-safe; the pid is our own unreaped child.
    unsafe { libc::kill(INIT_PID.load(Ordering::Relaxed), sig) };
}

/// Fork into the new PID namespace. The child (pid 1 there) returns; the parent never does.
unsafe fn become_init() -> io::Result<()> {
    // SAFETY: fork in a child that has one thread; the rest are plain system calls.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            return Ok(());
        }
        // The shim: drop every descriptor beyond stdio, among them the one that tells the
        // spawning process that exec happened (its EOF), which the init's exec now gives.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        INIT_PID.store(pid, Ordering::Relaxed);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = forward as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        for sig in SHIM_FORWARDS {
            libc::sigaction(sig, &sa, ptr::null_mut());
        }
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {
            if *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        libc::_exit(code)
    }
}

/// Become `u` for good: no capabilities left (not even in the bounding set), and
/// `no_new_privs`, so a setuid binary cannot raise the job back to root.
unsafe fn drop_to(u: &UserIds) -> io::Result<()> {
    // SAFETY: plain system calls; `groups` is a live slice.
    unsafe {
        check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))?;
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                break; // EINVAL: past the kernel's last capability.
            }
        }
        check(libc::setgroups(u.groups.len(), u.groups.as_ptr()))?;
        check(libc::setresgid(u.gid, u.gid, u.gid))?;
        // Leaving uid 0 clears the permitted and effective capability sets.
        check(libc::setresuid(u.uid, u.uid, u.uid))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Remove a released slot's scratch directory, whatever the job left in it.
pub fn remove_scratch(paths: &Paths, slot_name: &str) -> Result<()> {
    let dir = paths.scratch_dir(slot_name);
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_read_as_the_kernel_escapes_them() {
        assert_eq!(unescape_mountinfo(r"/sys/fs/bpf"), "/sys/fs/bpf");
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b\011c\134d"), "/mnt/a b\tc\\d");
        assert_eq!(unescape_mountinfo(r"/x\04"), r"/x\04");
        assert_eq!(unescape_mountinfo("/é\\"), "/é\\");
    }
}
