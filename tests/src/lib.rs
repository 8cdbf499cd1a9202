//! Fixtures for the real-kernel tests.
//!
//! Each test gets its own tracker instance (`t-<pid>-<n>`): its own programs, pins, state and
//! cgroups, so tests never disturb a tracker loaded on the machine nor each other, and the
//! instance is killed and unloaded when the test ends, failed or not. (`cargo xtask test`
//! also removes instances left by a test process that was itself killed.)
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tracker::{KillOptions, LoadOptions, Paths, Tracker, loader};

pub mod calibrate;
pub mod daemon;

/// The C helper with one escape trick per mode (tests/helpers/escape.c).
pub const ESCAPE: &str = env!("ESCAPE_HELPER");

/// The C helper with the probes of an unprivileged user or a root job (tests/helpers/attacker.c).
pub const ATTACKER: &str = env!("ATTACKER_HELPER");

/// A copy of the attacker that every user can run (the build directory may be root's only).
pub fn attacker_for_anyone() -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let to = test_dir("attacker").join("attacker");
    fs::copy(ATTACKER, &to).unwrap();
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).unwrap();
    to
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The running kernel's (major, minor), for tests whose expectation differs by release.
pub fn kernel_release() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok());
    (v.next().unwrap(), v.next().unwrap())
}

/// Whether a skipped core test must fail instead (CI sets this through `cargo xtask test`).
pub fn strict() -> bool {
    std::env::var("TRACKER_TEST_STRICT").is_ok_and(|v| v == "1")
}

/// Skip a test because the machine lacks `what`; under CI, fail instead.
pub fn skip(what: &str) {
    assert!(!strict(), "core kernel test cannot run: {what}");
    eprintln!("SKIP: {what}");
}

/// What a kernel test needs; `None` after reporting a skip.
fn kernel_ready() -> Option<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip("not root: the kernel tests load BPF programs");
        return None;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        skip("the kernel has no BTF");
        return None;
    }
    if !tracker::preflight::fs_magic_is(Path::new("/sys/fs/bpf"), tracker::preflight::BPF_FS_MAGIC)
    {
        skip("bpffs is not mounted at /sys/fs/bpf (cargo xtask test mounts it)");
        return None;
    }
    Some(())
}

/// One isolated tracker instance, unloaded on drop.
pub struct Instance {
    pub paths: Paths,
    pub name: String,
    /// Held from before the load until after the unload (dropped after `Drop::drop`), for an
    /// instance started by [`Instance::start_alone`].
    _alone: Option<MutexGuard<'static, ()>>,
}

impl Instance {
    /// Load a fresh instance, or `None` (after a skip) where the kernel cannot.
    pub fn start() -> Option<Self> {
        Self::load(None)
    }

    /// As [`Instance::start`], for a test whose counts must be exact: no other instance of the
    /// same test binary that was started this way loads or unloads while this one lives.
    ///
    /// While a program is attached to or detached from a tracepoint, the kernel may skip runs
    /// of the other programs already there. Measured on 6.18: a `bpftrace` program attached to
    /// and detached from `sched_process_free` 25 times while a tracked job ran 2,400 short
    /// processes made the tracker's free program miss 8 frees (none with the same churn on
    /// another tracepoint); two test instances loading and unloading beside each other made one
    /// slot miss 10 of 400. Each instance attaches and detaches the whole set of programs, so
    /// tests run side by side make each other's exact counts miss now and then.
    pub fn start_alone() -> Option<Self> {
        static LOCK: Mutex<()> = Mutex::new(());
        // A test that failed while holding it poisons it; the next one still runs alone.
        Self::load(Some(LOCK.lock().unwrap_or_else(PoisonError::into_inner)))
    }

    fn load(alone: Option<MutexGuard<'static, ()>>) -> Option<Self> {
        kernel_ready()?;
        let name = format!("t-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let paths = Paths::new(&name).unwrap();
        loader::load(&paths, &LoadOptions { max_slots: 64, ..Default::default() }).unwrap();
        Some(Self { paths, name, _alone: alone })
    }

    /// Load a fresh instance with the `tracker load` CLI, as `setup` prepares the command (its
    /// cgroup, its arguments); returns it and the command's stderr (its warnings).
    pub fn start_cli(setup: impl FnOnce(&mut Command)) -> Option<(Self, String)> {
        kernel_ready()?;
        let name = format!("t-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let inst = Self { paths: Paths::new(&name).unwrap(), name, _alone: None };
        let mut cmd = inst.cli();
        cmd.args(["load", "--max-slots", "64"]).stdin(Stdio::null());
        setup(&mut cmd);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "tracker load failed: {}\n{err}", out.status);
        Some((inst, err))
    }

    pub fn tracker(&self) -> Tracker {
        Tracker::open(self.paths.clone()).unwrap()
    }

    /// The `tracker` binary, pointed at this instance.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(tracker_bin());
        c.env("TRACKER_INSTANCE", &self.name).env_remove("TRACKER_LOG");
        c
    }

    /// Run the CLI and return its output, whatever its exit status.
    pub fn cli_output(&self, args: &[&str]) -> Output {
        self.cli().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Run a shell command line with this instance selected (for pipelines).
    pub fn cli_sh(&self, script: &str) -> Output {
        Command::new("sh")
            .args(["-c", script])
            .env("TRACKER_INSTANCE", &self.name)
            .env_remove("TRACKER_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Run the CLI, assert success, return stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "tracker {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `tracker run --detach --slot SLOT -- ESCAPE MODE MARKER ARGS...`
    pub fn run_detached(
        &self,
        slot: &str,
        extra: &[&str],
        mode: &str,
        marker: &str,
        args: &[&str],
    ) {
        let mut a = vec!["run", "--detach", "--slot", slot];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--", ESCAPE, mode, marker]);
        a.extend_from_slice(args);
        let out = self.cli_ok(&a);
        assert_eq!(out.trim(), slot);
    }

    /// The processes `tracker ps SLOT --json` reports.
    pub fn ps(&self, slot: &str) -> Vec<Proc> {
        parse_ps(&self.cli_ok(&["ps", slot, "--json"]))
    }

    /// As `ps`, but `None` while the slot does not exist (yet): for waiting on a slot that
    /// another process is creating.
    pub fn ps_if_exists(&self, slot: &str) -> Option<Vec<Proc>> {
        let out = self.cli_output(&["ps", slot, "--json"]);
        out.status.success().then(|| parse_ps(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Detach the instance's program `name` (its link's pin goes), and wait until the kernel
    /// has: from then on it sees none of its tracepoint's runs, as if the kernel skipped them
    /// all.
    pub fn detach(&self, name: &str) {
        let pin = self.paths.link_pin(name);
        let ids = link_ids_of([pin.clone()]);
        assert_eq!(ids.len(), 1, "{} is not an attached link", pin.display());
        fs::remove_file(&pin).unwrap();
        let gone =
            || !aya::programs::loaded_links().filter_map(Result::ok).any(|l| ids.contains(&l.id()));
        assert!(wait_for(Duration::from_secs(10), gone), "{name} still attached");
    }

    /// `tracker kill SLOT --json`, asserting exit 0 and no survivors.
    pub fn kill_clean(&self, slot: &str) -> serde_json::Value {
        // The CLI's default wait (10 s), stretched as every deadline is on a slow machine.
        let timeout = scaled(Duration::from_secs(10)).as_secs().to_string();
        let out = self.cli_output(&["kill", slot, "--json", "--timeout", &timeout]);
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kill output is not JSON ({e}): {text}"));
        assert!(out.status.success(), "kill failed: {v}");
        assert_eq!(v["survivors"].as_array().unwrap().len(), 0, "survivors: {v}");
        v
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Leave nothing running and nothing loaded, even when the test failed.
        if let Ok(t) = Tracker::open(self.paths.clone()) {
            for s in t.slots().unwrap_or_default() {
                let _ = t.kill(&s.name, &KillOptions { timeout: scaled(Duration::from_secs(5)) });
            }
        }
        // An unpinned link is detached later, by a kernel work queue: wait until every link of
        // the instance is gone, so that no detach of this test's programs runs beside the next
        // test's (see `Instance::start_alone`).
        let links = link_ids(&self.paths.links_dir());
        if let Err(e) = loader::unload(&self.paths, true) {
            eprintln!("warning: unloading test instance {}: {e}", self.name);
        }
        let attached = || {
            aya::programs::loaded_links().filter_map(Result::ok).any(|l| links.contains(&l.id()))
        };
        if !wait_for(Duration::from_secs(10), || !attached()) {
            eprintln!(
                "warning: test instance {}: links still attached after its unload",
                self.name
            );
        }
    }
}

/// The kernel's ids of the links pinned in `dir`.
fn link_ids(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    link_ids_of(entries.filter_map(Result::ok).map(|e| e.path()))
}

/// The kernel's ids of the links pinned at `pins`.
fn link_ids_of(pins: impl IntoIterator<Item = PathBuf>) -> Vec<u32> {
    use aya::programs::links::{FdLink, PinnedLink};
    pins.into_iter()
        .filter_map(|p| PinnedLink::from_pin(p).ok())
        .filter_map(|l| FdLink::from(l).info().ok().map(|i| i.id()))
        .collect()
}

fn parse_ps(json: &str) -> Vec<Proc> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| Proc {
            pid: p["pid"].as_u64().unwrap() as u32,
            ppid: p["ppid"].as_u64().unwrap() as u32,
            comm: p["comm"].as_str().unwrap().to_owned(),
            threads: p["threads"].as_u64().unwrap() as u32,
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub threads: u32,
}

/// The tracker binary under test: `TRACKER_BIN` (set by `cargo xtask test`), else the debug
/// build in this workspace.
pub fn tracker_bin() -> PathBuf {
    std::env::var_os("TRACKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tracker"))
}

/// A fresh, empty directory of this test process, `tracker-<tag>-<pid>-<n>` under the temp
/// directory, that every user may traverse (the tests run clients and daemons as others too).
pub fn test_dir(tag: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tracker-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Wait at most `timeout` for `child` to exit; if it does not, kill it, reap it and return
/// None.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    if wait_for(timeout, || {
        status = child.try_wait().unwrap();
        status.is_some()
    }) {
        return status;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `d` stretched for slow machines: times `TRACKER_TEST_TIME_SCALE` (default 1; `cargo xtask
/// test-vm` sets it for kernels emulated in software, some 30 times slower). Tests wait for
/// conditions, so a longer deadline costs nothing where the condition comes early.
pub fn scaled(d: Duration) -> Duration {
    d * time_scale()
}

/// `TRACKER_TEST_TIME_SCALE`, 1 where unset: above 1 the kernel runs emulated in software.
pub fn time_scale() -> u32 {
    std::env::var("TRACKER_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s >= 1)
        .unwrap_or(1)
}

/// Poll `cond` every 10 ms until it holds, for at most `timeout` (scaled, see [`scaled`]).
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + scaled(timeout);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Process `pid`'s state letter from /proc (`R`, `S`, `Z`…), `None` once it is reaped.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis, which the command itself may contain.
    stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()).and_then(|s| s.chars().next())
}

/// Every process on the machine whose name is `comm` (to find survivors of a kill anywhere,
/// not only in the slot).
pub fn processes_named(comm: &str) -> Vec<u32> {
    let mut pids = vec![];
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some(state) = process_state(pid) else {
            continue;
        };
        // A zombie has exited and holds nothing but its pid: it is dead.
        if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
            && state != 'Z'
        {
            pids.push(pid);
        }
    }
    pids
}

/// As `processes_named`, without the processes already in `do_exit` (`PF_EXITING`): they have
/// left their slot, and no freezer stops them.
pub fn live_processes_named(comm: &str) -> Vec<u32> {
    const PF_EXITING: u64 = 0x4;
    processes_named(comm)
        .into_iter()
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command: state ppid pgrp session tty_nr tpgid flags ...
            let flags = stat.rsplit(')').next().and_then(|s| s.split_whitespace().nth(6));
            flags.and_then(|f| f.parse::<u64>().ok()).is_some_and(|f| f & PF_EXITING == 0)
        })
        .collect()
}

/// A marker name (≤ 15 bytes, the kernel's comm length) unique to this test process.
pub fn marker(tag: &str) -> String {
    let m = format!("{tag}{}", std::process::id() % 100_000);
    m.chars().take(15).collect()
}

/// The pid `pid`'s cgroup memberships, one line per hierarchy.
pub fn cgroups_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}
