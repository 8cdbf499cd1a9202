//! What a job sees of the machine: a private `/tmp`, its own PID namespace, a root directory,
//! another user. Everything is resolved and checked by `Isolation::prepare` before a slot
//! exists; the child then applies it between fork and exec with system calls only (no
//! allocation: the parent may have other threads), after it has been tagged.
use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    ptr,
    sync::atomic::{AtomicI32, Ordering},
};

use crate::{
    error::{Error, IoContext as _, Result},
    paths::Paths,
    user::{self, UserIds},
};

/// How a job is isolated; the default is not at all.
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
}

/// An `Isolation` resolved for one slot: paths as C strings, the user as ids.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    scratch: Option<PathBuf>,
    unshare: libc::c_int,
    pid_ns: bool,
    /// In order, in the child: mount points are made where the earlier mounts put them
    /// (the working directory may be under a private /tmp).
    steps: Vec<Step>,
    chroot: Option<(CString, CString)>,
    user: Option<UserIds>,
}

#[derive(Clone, Debug)]
enum Step {
    /// A directory to make if missing.
    Mkdir(CString),
    Mount(Mount),
}

#[derive(Clone, Debug)]
struct Mount {
    source: CString,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
}

impl Isolation {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Resolve and check everything, changing nothing: an unknown user or a missing root is
    /// an error before any slot, cgroup, directory or mount exists.
    pub fn prepare(&self, paths: &Paths, slot_name: &str) -> Result<Prepared> {
        let mut p = Prepared { pid_ns: self.pid_ns, ..Default::default() };
        if self.is_empty() {
            return Ok(p);
        }
        p.user = self.user.as_deref().map(user::resolve).transpose()?;
        let root = self.root.as_deref().map(check_root).transpose()?;
        let inside = |path: &str| match &root {
            Some(r) => r.join(path.trim_start_matches('/')),
            None => PathBuf::from(path),
        };
        if self.private_tmp || self.pid_ns || root.is_some() {
            p.unshare = libc::CLONE_NEWNS;
        }
        if self.pid_ns {
            p.unshare |= libc::CLONE_NEWPID;
        }
        if self.private_tmp {
            let scratch = paths.scratch_dir(slot_name);
            for (sub, target) in [("tmp", "/tmp"), ("var_tmp", "/var/tmp")] {
                let target = inside(target);
                if !target.is_dir() {
                    return Err(Error::Isolation(format!(
                        "--private-tmp: {} is not a directory",
                        target.display()
                    )));
                }
                p.steps.push(Step::Mount(Mount::bind(&scratch.join(sub), &target, false)?));
            }
            p.scratch = Some(scratch);
        }
        if self.pid_ns {
            // A /proc of the new namespace, or `ps` would show the machine's processes.
            p.steps.push(Step::Mount(Mount::proc(&inside("/proc"))?));
        }
        if let Some(root) = &root {
            if !self.pid_ns && root.join("proc").is_dir() {
                let proc = Mount::bind(Path::new("/proc"), &root.join("proc"), true)?;
                p.steps.push(Step::Mount(proc));
            }
            if root.join("dev").is_dir() {
                let dev = Mount::bind(Path::new("/dev"), &root.join("dev"), true)?;
                p.steps.push(Step::Mount(dev));
            }
            let cwd = std::env::current_dir().ctx(|| "reading the working directory".into())?;
            let cwd_inside = inside(&cwd.to_string_lossy());
            let mut ancestors: Vec<&Path> =
                cwd_inside.ancestors().take_while(|a| a.starts_with(root) && a != root).collect();
            ancestors.reverse();
            for dir in ancestors {
                p.steps.push(Step::Mkdir(cstring(dir)?));
            }
            p.steps.push(Step::Mount(Mount::bind(&cwd, &cwd_inside, true)?));
            p.chroot = Some((cstring(root)?, cstring(&cwd)?));
        }
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

fn check_root(root: &Path) -> Result<PathBuf> {
    let abs = fs::canonicalize(root)
        .map_err(|e| Error::Isolation(format!("root directory {}: {e}", root.display())))?;
    if !abs.is_dir() {
        return Err(Error::Isolation(format!("root {} is not a directory", abs.display())));
    }
    if abs == Path::new("/") {
        return Err(Error::Isolation("--root / would isolate nothing".into()));
    }
    Ok(abs)
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Isolation(format!("{} contains a NUL byte", p.display())))
}

impl Mount {
    fn bind(source: &Path, target: &Path, recursive: bool) -> Result<Self> {
        let rec = if recursive { libc::MS_REC } else { 0 };
        Ok(Self {
            source: cstring(source)?,
            target: cstring(target)?,
            fstype: None,
            flags: libc::MS_BIND | rec,
        })
    }

    fn proc(target: &Path) -> Result<Self> {
        Ok(Self {
            source: c"proc".into(),
            target: cstring(target)?,
            fstype: Some(c"proc".into()),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        })
    }
}

impl Prepared {
    pub fn is_empty(&self) -> bool {
        self.unshare == 0 && self.user.is_none()
    }

    /// Make the slot's scratch directories (as open as `/tmp`, in a root-only parent).
    pub fn make_dirs(&self) -> Result<()> {
        if let Some(scratch) = &self.scratch {
            for sub in ["tmp", "var_tmp"] {
                let dir = scratch.join(sub);
                fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777))
                    .ctx(|| format!("setting the mode of {}", dir.display()))?;
            }
            if let Some(top) = scratch.parent().and_then(Path::parent) {
                fs::set_permissions(top, fs::Permissions::from_mode(0o700))
                    .ctx(|| format!("setting the mode of {}", top.display()))?;
            }
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
            for step in &self.steps {
                match step {
                    Step::Mkdir(dir) => {
                        if libc::mkdir(dir.as_ptr(), 0o755) < 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Step::Mount(m) => check(libc::mount(
                        m.source.as_ptr(),
                        m.target.as_ptr(),
                        m.fstype.as_ref().map_or(ptr::null(), |f| f.as_ptr()),
                        m.flags,
                        ptr::null(),
                    ))?,
                }
            }
            if let Some((root, cwd)) = &self.chroot {
                check(libc::chroot(root.as_ptr()))?;
                check(libc::chdir(cwd.as_ptr()))?;
            }
            if let Some(u) = &self.user {
                drop_to(u)?;
            }
        }
        Ok(())
    }
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
