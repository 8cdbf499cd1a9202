//! Where the slots' cgroups go beside systemd: in the cgroup it delegated to the loader
//! (`Delegate=yes`, marked `trusted.delegate`), never writing above it, and made again from
//! the registry after systemd removed them (as it does to a stopped unit's empty cgroups).
//!
//! Where systemd is not PID 1 (this machine), a test makes the cgroups systemd would (an outer
//! one standing for system.slice, `tracker.service` inside it, marked delegated, holding the
//! unit's process) and removes what systemd would remove. Beside a real systemd (`cargo xtask
//! test-vm --systemd`), the tracker's own scope is tested too.
#![allow(clippy::unwrap_used)]

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tracker::cgroup::CgroupMounts;
use tracker_tests::{Instance, cgroups_of, daemon::Daemon, skip, wait_for};

const T: Duration = Duration::from_secs(20);

/// A stand-in for systemd's `system.slice/tracker.service` with `Delegate=yes`.
struct Delegation {
    mount: PathBuf,
    /// Stands for system.slice: not delegated, systemd's to write.
    outer: PathBuf,
    /// The delegated unit's cgroup.
    unit: PathBuf,
    /// The unit's own process (what systemd started in it).
    holder: Child,
}

impl Delegation {
    fn new(tag: &str) -> Option<Self> {
        let Some(mount) = CgroupMounts::detect().unwrap().unified else {
            skip("no cgroup2 hierarchy");
            return None;
        };
        let outer = mount.join(format!("t-{}-{tag}", std::process::id()));
        let unit = outer.join("tracker.service");
        fs::create_dir(&outer).unwrap();
        fs::create_dir(&unit).unwrap();
        mark_delegated(&unit);
        let holder = in_cgroup(Command::new("sleep").arg("1000000"), &unit).spawn().unwrap();
        Some(Self { mount, outer, unit, holder })
    }

    /// What systemd does for a unit with `Delegate=yes`: every controller the root has is
    /// enabled for it, from the root down to its parent.
    fn delegate_controllers(&self) {
        let have = read(&self.mount.join("cgroup.controllers"));
        for level in [&self.mount, &self.outer] {
            for c in have.split_whitespace().filter(|c| ["pids", "memory", "cpu", "io"].contains(c))
            {
                let _ = fs::write(level.join("cgroup.subtree_control"), format!("+{c}"));
            }
        }
    }

    /// What systemd does when the unit stops: its processes end (KillMode=process: the main
    /// one only), then every empty cgroup of the unit is removed, depth first, the unit's own
    /// too once empty.
    fn stop_unit(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        remove_empty_below(&self.unit);
        let _ = fs::remove_dir(&self.unit);
    }

    /// The unit started again: systemd makes its cgroup, marks it and starts its process in it.
    fn start_unit(&mut self) {
        let _ = fs::create_dir(&self.unit);
        mark_delegated(&self.unit);
        self.holder = in_cgroup(Command::new("sleep").arg("1000000"), &self.unit).spawn().unwrap();
    }

    fn rel(&self, dir: &Path) -> String {
        format!("/{}", dir.strip_prefix(&self.mount).unwrap().display())
    }
}

impl Drop for Delegation {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        remove_empty_below(&self.outer);
        let _ = fs::remove_dir(&self.outer);
    }
}

fn mark_delegated(dir: &Path) {
    let path = CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a 1-byte value that live across the call.
    let r = unsafe {
        libc::setxattr(path.as_ptr(), c"trusted.delegate".as_ptr(), b"1".as_ptr().cast(), 1, 0)
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// `cmd`, started in cgroup `dir` (it moves itself there between fork and exec).
fn in_cgroup<'a>(cmd: &'a mut Command, dir: &Path) -> &'a mut Command {
    let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
    // SAFETY: only open, write and close between fork and exec, on a string made before.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if ok { Ok(()) } else { Err(err) }
        })
    }
}

/// rmdir every empty cgroup below `dir`, deepest first (cgroups with processes stay).
fn remove_empty_below(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_below(&e.path());
            let _ = fs::remove_dir(e.path());
        }
    }
}

fn read(file: &Path) -> String {
    fs::read_to_string(file).unwrap_or_default()
}

fn status(inst: &Instance) -> Value {
    serde_json::from_str(&inst.cli_ok(&["status", "--json"])).unwrap()
}

/// The pids limit of a slot's cgroup, wherever the pids controller is (cgroup2, or v1 on a
/// hybrid machine).
fn pids_max(inst: &Instance, slot: &str) -> String {
    let rec = inst.tracker().slot(slot).unwrap();
    let v2 = rec.cgroups.unified.as_ref().map(|d| d.join("pids.max")).filter(|f| f.exists());
    let file = v2.or_else(|| rec.cgroups.v1.get("pids").map(|d| d.join("pids.max"))).unwrap();
    read(&file).trim().to_owned()
}

#[test]
fn a_delegated_loader_puts_the_slots_in_its_delegation_and_writes_nothing_above() {
    let Some(d) = Delegation::new("deleg") else { return };
    let root_before = read(&d.mount.join("cgroup.subtree_control"));
    let outer_before = read(&d.outer.join("cgroup.subtree_control"));
    let Some((inst, warnings)) = Instance::start_cli(|c| {
        in_cgroup(c, &d.unit);
    }) else {
        return;
    };
    let parent = d.unit.join(&inst.name);
    let st = status(&inst);
    assert_eq!(st["cgroup_parent"], parent.to_str().unwrap(), "{st}");
    assert_eq!(st["cgroup_delegated"], d.unit.to_str().unwrap(), "{st}");
    // Recorded where every later command (root or not: `tracker status`) reads it.
    let mode = fs::metadata(inst.paths.cgroup_parent_file()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    // The unit's own process left the delegated cgroup for a leaf, so the delegated cgroup can
    // enable controllers for the slots.
    let supervisor = d.unit.join("supervisor");
    assert!(
        cgroups_of(d.holder.id()).contains(&format!("0::{}\n", d.rel(&supervisor))),
        "{}",
        cgroups_of(d.holder.id())
    );
    assert_eq!(read(&d.unit.join("cgroup.procs")), "");
    assert!(!d.mount.join(&inst.name).exists(), "a cgroup beside systemd's slices was made");

    let m = tracker_tests::marker("deleg");
    inst.run_detached("s1", &[], "sleep", &m, &[]);
    let pid = inst.ps("s1")[0].pid;
    let slot_dir = parent.join("slot-s1");
    assert!(cgroups_of(pid).contains(&format!("0::{}\n", d.rel(&slot_dir))), "{}", cgroups_of(pid));

    // Nothing above the delegated cgroup was written; inside it, the controllers it was given
    // are enabled down to the slots, and any the root has but the delegation lacks is named.
    // Where systemd is PID 1 it enables controllers at the root for other units meanwhile (the
    // other tests' scopes): there `outer` alone stands for what is above.
    if !Path::new("/run/systemd/system").exists() {
        assert_eq!(read(&d.mount.join("cgroup.subtree_control")), root_before);
    }
    assert_eq!(read(&d.outer.join("cgroup.subtree_control")), outer_before);
    let offered = read(&d.unit.join("cgroup.controllers"));
    for level in [&d.unit, &parent] {
        let enabled = read(&level.join("cgroup.subtree_control"));
        for c in ["pids", "memory", "cpu", "io"] {
            if offered.split_whitespace().any(|o| o == c) {
                assert!(enabled.split_whitespace().any(|e| e == c), "{c} not enabled in {level:?}");
            }
        }
    }
    // The outer cgroup (systemd's) enables nothing for its children here, so on pure cgroup v2
    // the delegation lacks every controller the root has; on the hybrid layout cgroup2 has none
    // to lack (the v1 hierarchies give them).
    let root_has = read(&d.mount.join("cgroup.controllers"));
    let lacks = |c: &str| {
        root_has.split_whitespace().any(|r| r == c) && !offered.split_whitespace().any(|o| o == c)
    };
    let lacking = ["pids", "memory", "cpu", "io"].into_iter().any(&lacks);
    let lacks_line = warnings.lines().find(|l| l.contains("lacks the")).unwrap_or_default();
    assert_eq!(!lacks_line.is_empty(), lacking, "{warnings}");
    assert_eq!(lacks_line.contains("memory"), lacks("memory"), "{warnings}");
    assert!(warnings.lines().filter(|l| l.contains("lacks the")).count() <= 1, "{warnings}");
    // A limit whose controller the delegation lacks fails, naming it, rather than reaching
    // above the delegation for it.
    let out = inst.cli_output(&["create", "m", "--memory-max", "100M"]);
    assert_eq!(out.status.success(), !lacks("memory"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read(&d.outer.join("cgroup.subtree_control")), outer_before);

    // A later load (an upgrade) keeps the parent, and refuses another.
    let again = inst.cli_output(&["load", "--cgroup-parent", "elsewhere"]);
    assert!(!again.status.success());
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(e.contains("chosen at its first load") && e.lines().count() <= 2, "{e}");
    inst.kill_clean("s1");
}

#[test]
fn slot_cgroups_systemd_removed_come_back_with_their_limits_and_programs() {
    let Some(mut d) = Delegation::new("prune") else { return };
    d.delegate_controllers();
    let Some((inst, _)) = Instance::start_cli(|c| {
        in_cgroup(c, &d.unit);
    }) else {
        return;
    };
    inst.cli_ok(&["create", "keep", "--tasks-max", "7"]);
    let slot_dir = d.unit.join(&inst.name).join("slot-keep");
    assert!(slot_dir.is_dir());
    let generation = status(&inst)["generation"].as_u64().unwrap();

    // The unit stops: every empty cgroup of it goes, the slot's, the parent's (with the
    // network programs attached to it) and the unit's own.
    d.stop_unit();
    assert!(!d.unit.exists());
    // Until the unit runs again the tracker makes nothing in systemd's place.
    let sleeper = Command::new("sleep").arg("1000000").stdin(Stdio::null()).spawn().unwrap();
    let mut sleeper = scopeguard(sleeper);
    let out = inst.cli_output(&["adopt", "keep", &sleeper.0.id().to_string()]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("systemctl start") && e.lines().count() <= 2, "{e}");
    assert!(!d.unit.exists(), "the tracker made the delegated cgroup itself");

    // Started again: the next process to enter the slot finds its cgroup made again, with its
    // limit, under a parent the cgroup programs are attached to again.
    d.start_unit();
    inst.cli_ok(&["adopt", "keep", &sleeper.0.id().to_string()]);
    assert!(
        cgroups_of(sleeper.0.id()).contains(&format!("0::{}\n", d.rel(&slot_dir))),
        "{}",
        cgroups_of(sleeper.0.id())
    );
    assert_eq!(pids_max(&inst, "keep"), "7");
    // The network program on the new parent holds a new slot to its policy.
    let code = "import socket,errno\n\
                try:\n\
                \x20   socket.create_connection(('127.0.0.1', 9)).close(); print('connected')\n\
                except OSError as e:\n\
                \x20   print(errno.errorcode[e.errno])";
    let out = inst.cli_output(&["run", "--deny-network", "--", "python3", "-c", code]);
    let o = String::from_utf8_lossy(&out.stdout);
    assert_eq!(o.trim(), "EPERM", "{}", String::from_utf8_lossy(&out.stderr));
    let st = status(&inst);
    assert!(
        st["generation"].as_u64().unwrap() > generation,
        "the programs were not attached again"
    );
    assert!(st["programs"].as_array().unwrap().iter().all(|p| p["ready"] == true), "{st}");
    let _ = sleeper.0.kill();
    let _ = sleeper.0.wait();
    inst.kill_clean("keep");

    // The same through a daemon restart: the daemon makes every slot's cgroup again at start.
    inst.cli_ok(&["create", "again", "--tasks-max", "5"]);
    d.stop_unit();
    d.start_unit();
    let daemon = Daemon::start(&inst, "");
    let again = d.unit.join(&inst.name).join("slot-again");
    assert!(wait_for(T, || again.is_dir()), "{}", daemon.log());
    assert_eq!(pids_max(&inst, "again"), "5");
    drop(daemon);
}

/// A child killed when the test ends, failed or not.
struct Guarded(Child);

fn scopeguard(c: Child) -> Guarded {
    Guarded(c)
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_explicit_parent_wins_and_an_old_instance_keeps_its_default() {
    let Some(d) = Delegation::new("expl") else { return };
    let rel = format!("{}/jobs", d.outer.strip_prefix(&d.mount).unwrap().display());
    let Some((inst, _)) = Instance::start_cli(|c| {
        in_cgroup(c, &d.unit).args(["--cgroup-parent", &rel]);
    }) else {
        return;
    };
    let st = status(&inst);
    assert_eq!(st["cgroup_parent"], d.mount.join(&rel).to_str().unwrap(), "{st}");
    assert!(st.get("cgroup_delegated").is_none(), "{st}");
    inst.cli_ok(&["create", "e"]);
    assert!(d.mount.join(&rel).join("slot-e").is_dir());
    drop(inst);

    // An instance loaded before the parent was recorded: its slots stay under <instance>.
    let Some(old) = Instance::start() else { return };
    fs::remove_file(old.paths.cgroup_parent_file()).unwrap();
    old.cli_ok(&["create", "o"]);
    assert!(d.mount.join(&old.name).join("slot-o").is_dir());
    assert_eq!(status(&old)["cgroup_parent"], d.mount.join(&old.name).to_str().unwrap());
}

/// `systemctl show -p NAME --value unit`.
fn unit_property(unit: &str, name: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", "--value", "-p", name, unit])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn systemctl(args: &[&str]) {
    let out = Command::new("systemctl").args(args).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "systemctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Beside systemd as PID 1 (a VM booted by `cargo xtask test-vm --systemd`; systemd is not PID
/// 1 here), with no delegated cgroup given: the slots live in the tracker's own scope, which
/// systemd delegated to it; the daemon's service (not delegated) restarts while a job runs
/// without touching it; systemd's reload keeps the controllers the tracker enabled; unload
/// stops the scope.
#[test]
fn beside_systemd_the_slots_live_in_a_scope_that_outlives_daemon_restarts() {
    if !Path::new("/run/systemd/system").exists() {
        assert!(
            std::env::var("TRACKER_TEST_SYSTEMD").is_err(),
            "TRACKER_TEST_SYSTEMD is set but systemd is not PID 1"
        );
        eprintln!("not run: systemd is not PID 1 here (`cargo xtask test-vm --systemd` runs it)");
        return;
    }
    let mount = CgroupMounts::detect().unwrap().unified.unwrap();
    let Some(inst) = Instance::start() else { return };
    let unit = format!("tracker-{}.scope", inst.name);
    let scope_dir = mount.join("system.slice").join(&unit);
    let st = status(&inst);
    assert_eq!(st["cgroup_scope"], unit.as_str(), "{st}");
    assert_eq!(st["cgroup_delegated"], scope_dir.to_str().unwrap(), "{st}");
    assert_eq!(st["cgroup_parent"], scope_dir.join(&inst.name).to_str().unwrap(), "{st}");
    assert_eq!(unit_property(&unit, "ActiveState"), "active");
    assert_eq!(unit_property(&unit, "Delegate"), "yes");
    // Its holder sits in the leaf beside the slots, so the scope may enable controllers.
    assert!(!read(&scope_dir.join("supervisor/cgroup.procs")).trim().is_empty());
    assert!(read(&scope_dir.join("cgroup.procs")).trim().is_empty());

    // The daemon as systemd runs it: a service of its own, not delegated.
    let dir = tracker_tests::test_dir("scope");
    let socket = dir.join("tracker.sock");
    let config = dir.join("tracker.toml");
    fs::write(&config, format!("[daemon]\nsocket = \"{}\"\n", socket.display())).unwrap();
    let service = format!("t-{}-daemon.service", std::process::id());
    let bin = tracker_tests::tracker_bin();
    let out = Command::new("systemd-run")
        .args(["--quiet", "--collect", "--property=Type=exec", "--property=KillMode=process"])
        .arg(format!("--unit={service}"))
        .args(["--", bin.to_str().unwrap(), "--instance", &inst.name, "daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _stop = Stopper(service.clone());
    assert!(wait_for(T, || std::os::unix::net::UnixStream::connect(&socket).is_ok()));

    inst.cli_ok(&["run", "--detach", "--slot", "s", "--memory-max", "64M", "--", "sleep", "1000"]);
    let slot_dir = scope_dir.join(&inst.name).join("slot-s");
    let member = format!("0::/{}", slot_dir.strip_prefix(&mount).unwrap().display());
    let pid: u32 = read(&slot_dir.join("cgroup.procs")).trim().parse().unwrap();
    assert_eq!(cgroups_of(pid).trim(), member);
    assert_eq!(read(&slot_dir.join("memory.max")).trim(), "67108864");

    systemctl(&["restart", &service]);
    assert!(wait_for(T, || unit_property(&service, "ActiveState") == "active"));
    assert!(wait_for(T, || std::os::unix::net::UnixStream::connect(&socket).is_ok()));
    systemctl(&["daemon-reload"]);
    assert_eq!(cgroups_of(pid).trim(), member);
    assert_eq!(read(&slot_dir.join("memory.max")).trim(), "67108864");
    assert!(read(&scope_dir.join("cgroup.subtree_control")).contains("memory"));
    assert_eq!(unit_property(&unit, "ActiveState"), "active");

    inst.cli_ok(&["kill", "s"]);
    inst.cli_ok(&["release", "s"]);
    systemctl(&["stop", &service]);
    let name = inst.name.clone();
    drop(inst);
    assert!(
        wait_for(T, || unit_property(&unit, "ActiveState") != "active"),
        "{name}: {unit} still active after unload"
    );
    assert!(!scope_dir.exists());
}

/// Stops a transient unit when the test ends, however it ends.
struct Stopper(String);

impl Drop for Stopper {
    fn drop(&mut self) {
        let _ = Command::new("systemctl").args(["stop", &self.0]).stdin(Stdio::null()).output();
    }
}
