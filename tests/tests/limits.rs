//! Limits and isolation of a slot, observed from inside the job and from outside it.
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;
use tracker_tests::{ESCAPE, Instance, marker, processes_named, wait_for};

const T: Duration = Duration::from_secs(30);

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn stat(inst: &Instance, slot: &str) -> Value {
    serde_json::from_str(&inst.cli_ok(&["stat", slot, "--json"])).unwrap()
}

/// `tracker run [opts] -- python3 -c CODE`: (status, stdout, stderr).
fn run_py(inst: &Instance, opts: &[&str], code: &str) -> (Option<i32>, String, String) {
    let mut a = vec!["run"];
    a.extend_from_slice(opts);
    a.extend_from_slice(&["--", "python3", "-c", code]);
    let out = inst.cli_output(&a);
    let (o, e) = text(&out);
    (out.status.code(), o, e)
}

#[test]
fn memory_max_kills_the_whole_slot() {
    let Some(inst) = Instance::start() else { return };
    let m = marker("oomsib");
    // A daemonized sibling that uses no memory must die with the job that does.
    let code = format!(
        "import subprocess,time\n\
         subprocess.run([{ESCAPE:?}, 'daemonize', {m:?}])\n\
         x = bytearray(300 << 20)\n\
         time.sleep(30)"
    );
    let (status, _, err) =
        run_py(&inst, &["--memory-max", "100M", "--keep", "--slot", "oom"], &code);
    assert_ne!(status, Some(0), "{err}");
    assert!(err.contains("KILLED FOR MEMORY"), "{err}");
    assert!(processes_named(&m).is_empty(), "the sibling survived the OOM: {err}");
    let s = stat(&inst, "oom");
    assert!(s["oom_kills"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["tasks_live"].as_u64().unwrap(), 0, "{s}");
    // The peak it reached is reported, and it is near the limit, not the 300 MiB asked for.
    let peak = s["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak > 50 << 20 && peak < 200 << 20, "{s}");
}

#[test]
fn tasks_max_refuses_forks_with_eagain_and_the_job_lives_on() {
    let Some(inst) = Instance::start() else { return };
    let code = "import os,errno,time\n\
                kids = []\n\
                for i in range(200):\n\
                \x20   try:\n\
                \x20       p = os.fork()\n\
                \x20   except OSError as e:\n\
                \x20       print('refused', errno.errorcode[e.errno], len(kids)); break\n\
                \x20   if p == 0:\n\
                \x20       time.sleep(30); os._exit(0)\n\
                \x20   kids.append(p)\n\
                print('alive')";
    let (status, out, err) =
        run_py(&inst, &["--tasks-max", "50", "--keep", "--slot", "pids"], code);
    assert_eq!(status, Some(0), "{out}{err}");
    assert!(out.contains("refused EAGAIN 49"), "{out}");
    assert!(out.contains("alive"), "{out}");
    assert!(stat(&inst, "pids")["forks_refused"].as_u64().unwrap() >= 1);
}

#[test]
fn cpu_weight_and_quota_reach_the_cgroup_and_hold_the_job() {
    let Some(inst) = Instance::start() else { return };
    let spin = marker("quota");
    let started = std::time::Instant::now();
    inst.run_detached("cpu", &["--cpu-weight", "50", "--cpu-quota", "20"], "spin", &spin, &["5"]);
    let cg = inst.tracker().slot("cpu").unwrap().cgroups;
    let read = |ctrl: &str, v1: &str, v2: &str| {
        cg.unified
            .as_ref()
            .map(|d| d.join(v2))
            .filter(|p| p.exists())
            .or_else(|| cg.v1.get(ctrl).map(|d| d.join(v1)))
            .map(|p| fs::read_to_string(p).unwrap().trim().to_owned())
            .unwrap()
    };
    let quota = read("cpu", "cpu.cfs_quota_us", "cpu.max");
    let weight = read("cpu", "cpu.shares", "cpu.weight");
    assert!(quota == "20000" || quota.starts_with("20000 "), "quota {quota}");
    assert!(weight == "512" || weight == "50", "weight {weight}");
    // Held to a fifth of a CPU: over any stretch of time, at most a fifth of it plus one
    // 100 ms period's worth. The bound is from the time that really passed, however slow the
    // machine; the spinner must have run at all, or the bound would prove nothing.
    std::thread::sleep(Duration::from_secs(2));
    let s = stat(&inst, "cpu");
    let used = s["cpu_user_seconds"].as_f64().unwrap() + s["cpu_system_seconds"].as_f64().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(used > 0.0, "the spinner never ran: {s}");
    assert!(used <= 0.2 * elapsed + 0.1, "{used} s of CPU in {elapsed:.2} s under a 20% quota");
    // Changed on the running slot, as systemctl set-property does.
    inst.cli_ok(&["set", "cpu", "--cpu-quota", "50"]);
    let quota = read("cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(quota == "50000" || quota.starts_with("50000 "), "quota {quota}");
    inst.kill_clean("cpu");
}

#[test]
fn private_tmp_is_private_and_goes_with_the_slot() {
    let Some(inst) = Instance::start() else { return };
    let mine = format!("/tmp/{}", marker("hosttmp"));
    fs::write(&mine, "host").unwrap();
    let theirs = format!("/tmp/{}", marker("jobtmp"));
    let script = format!(
        "test ! -e {mine} && echo host-file-invisible; echo job > {theirs}; echo x > /var/tmp/v; \
         cat {theirs}"
    );
    let out = inst.cli_output(&[
        "run",
        "--private-tmp",
        "--keep",
        "--slot",
        "ptmp",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{e}");
    assert!(o.contains("host-file-invisible") && o.contains("job"), "{o}");
    assert!(!Path::new(&theirs).exists(), "the job's /tmp file is on the host");
    let scratch = inst.paths.scratch_dir("ptmp");
    assert!(scratch.join("tmp").join(theirs.trim_start_matches("/tmp/")).exists());
    inst.cli_ok(&["release", "ptmp"]);
    assert!(!scratch.exists(), "release left {}", scratch.display());
    fs::remove_file(&mine).unwrap();
}

#[test]
fn pid_namespace_hides_the_machine_and_the_kill_still_works() {
    let Some(inst) = Instance::start() else { return };
    let me = std::process::id();
    let script = format!(
        "echo pid=$$; ps -e -o pid= | wc -l; kill -0 {me} 2>/dev/null || echo cannot-signal-outside"
    );
    let out = inst.cli_output(&["run", "--pid-ns", "--", "sh", "-c", &script]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{e}");
    assert!(o.contains("pid=1\n"), "{o}");
    assert!(o.contains("cannot-signal-outside"), "{o}");
    let visible: u32 = o.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(visible <= 4, "the job sees {visible} processes");

    // A detached job in its own namespace: ps shows outer and inner pids; kill empties it.
    let m = marker("pidnsd");
    daemon_in_namespace(&inst, "pns", &["--pid-ns"], &m);
    assert!(wait_for(T, || processes_named(&m).len() == 1));
    let ps: Value = serde_json::from_str(&inst.cli_ok(&["ps", "pns", "--json"])).unwrap();
    let daemon = ps.as_array().unwrap().iter().find(|p| p["comm"] == m.as_str()).unwrap().clone();
    assert_eq!(daemon["pid"].as_u64().unwrap() as u32, processes_named(&m)[0]);
    assert!(daemon["ns_pid"].as_u64().unwrap() < 10, "{daemon}");
    inst.kill_clean("pns");
    assert!(processes_named(&m).is_empty());
}

/// Detach a job that daemonizes `marker` and stays, as its namespace's init must (when the
/// init of a PID namespace exits, the kernel kills the whole namespace).
fn daemon_in_namespace(inst: &Instance, slot: &str, opts: &[&str], marker: &str) {
    let script = format!("{ESCAPE} daemonize {marker}; exec sleep 1000");
    let mut a = vec!["run", "--detach", "--slot", slot];
    a.extend_from_slice(opts);
    a.extend_from_slice(&["--", "sh", "-c", &script]);
    assert_eq!(inst.cli_ok(&a).trim(), slot);
}

/// A root directory with a shell and a few tools, copied with their libraries.
fn mini_root(dir: &Path) {
    for d in ["proc", "dev", "tmp", "var/tmp", "etc"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    for tool in ["sh", "cat", "ls", "id"] {
        let bin = String::from_utf8(Command::new("which").arg(tool).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        let ldd =
            String::from_utf8(Command::new("ldd").arg(&bin).output().unwrap().stdout).unwrap();
        let libs = ldd.split_whitespace().filter(|w| w.starts_with('/')).map(str::to_owned);
        for f in std::iter::once(bin).chain(libs) {
            let to = dir.join(f.trim_start_matches('/'));
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(&f, &to).unwrap();
        }
    }
    // The job finds its tools in /bin, whatever the host's layout.
    fs::create_dir_all(dir.join("bin")).unwrap();
}

#[test]
fn root_directory_by_path_and_by_name() {
    let Some(inst) = Instance::start() else { return };
    let base = PathBuf::from(format!("/var/tmp/{}", inst.name));
    let root = base.join("root");
    mini_root(&root);
    fs::write(root.join("etc/which-root"), "the-mini-root\n").unwrap();
    let work = base.join("work");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("input.txt"), "from-the-host\n").unwrap();
    let config = base.join("tracker.toml");
    fs::write(&config, format!("[roots]\nmini = {:?}\n", root.to_str().unwrap())).unwrap();

    for how in [vec!["--root", root.to_str().unwrap()], vec!["--root-name", "mini"]] {
        let mut a = vec!["run"];
        a.extend_from_slice(&how);
        a.extend_from_slice(&["--", "sh", "-c", "cat /etc/which-root; pwd; cat input.txt"]);
        let out =
            inst.cli().args(&a).current_dir(&work).env("TRACKER_CONFIG", &config).output().unwrap();
        let (o, e) = text(&out);
        assert!(out.status.success(), "{how:?}: {e}");
        assert_eq!(o, format!("the-mini-root\n{}\nfrom-the-host\n", work.display()), "{how:?}");
    }
    let out = inst
        .cli()
        .args(["run", "--root-name", "nope", "--", "true"])
        .env("TRACKER_CONFIG", &config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("no root named \"nope\""), "{}", text(&out).1);
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn user_drops_every_privilege_and_setuid_cannot_raise_it() {
    let Some(inst) = Instance::start() else { return };
    // A setuid-root copy of `id`: with no_new_privs it must not make the job root again.
    let dir = PathBuf::from(format!("/var/tmp/{}-suid", inst.name));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let suid = dir.join("id");
    fs::copy("/usr/bin/id", &suid).unwrap();
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    let script = format!(
        "id -u; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status; {} -u; echo $HOME",
        suid.display()
    );
    let out = inst.cli_output(&["run", "--user", "nobody", "--", "sh", "-c", &script]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{e}");
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines[0], "65534", "{o}");
    for cap in ["CapPrm", "CapEff", "CapBnd"] {
        assert!(o.contains(&format!("{cap}:\t0000000000000000")), "{cap}: {o}");
    }
    assert!(o.contains("NoNewPrivs:\t1"), "{o}");
    assert_eq!(lines[5], "65534", "the setuid binary ran as root: {o}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn network_allow_list_and_deny() {
    let Some(inst) = Instance::start() else { return };
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, o) = (allowed.local_addr().unwrap().port(), other.local_addr().unwrap().port());
    let code = format!(
        "import socket,errno\n\
         for port in ({a}, {o}):\n\
         \x20   try:\n\
         \x20       socket.create_connection(('127.0.0.1', port)).close(); print(port, 'ok')\n\
         \x20   except OSError as e:\n\
         \x20       print(port, errno.errorcode[e.errno])"
    );
    let allow = format!("127.0.0.1:{a}");
    let (_, out, err) = run_py(&inst, &["--allow-connect", &allow], &code);
    assert!(out.contains(&format!("{a} ok")), "{out}{err}");
    assert!(out.contains(&format!("{o} EPERM")), "{out}{err}");
    let (_, out, err) = run_py(&inst, &["--deny-network"], &code);
    assert!(
        out.contains(&format!("{a} EPERM")) && out.contains(&format!("{o} EPERM")),
        "{out}{err}"
    );
    // Outside any slot, both work: the policy is the slot's, not the machine's.
    std::net::TcpStream::connect(("127.0.0.1", o)).unwrap();

    // Changed on a running slot: its next connect is refused.
    inst.run_detached("net", &[], "sleep", &marker("netset"), &[]);
    inst.cli_ok(&["set", "net", "--deny-network"]);
    let rec = inst.tracker().slot("net").unwrap();
    assert_eq!(rec.limits.network, Some(vec![]));
    inst.kill_clean("net");
}

#[test]
fn device_deny_list() {
    let Some(inst) = Instance::start() else { return };
    let code = "import errno\n\
                for dev in ('/dev/zero', '/dev/null'):\n\
                \x20   try:\n\
                \x20       open(dev, 'rb').close(); print(dev, 'ok')\n\
                \x20   except OSError as e:\n\
                \x20       print(dev, errno.errorcode[e.errno])";
    let (_, out, err) = run_py(&inst, &["--deny-device", "1:5"], code);
    assert!(out.contains("/dev/zero EPERM"), "{out}{err}");
    assert!(out.contains("/dev/null ok"), "{out}{err}");
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    let Some(inst) = Instance::start() else { return };
    let cases: &[&[&str]] = &[
        &["--memory-max", "10QB"],
        &["--tasks-max", "-5"],
        &["--root", "/no/such/root"],
        &["--user", "no-such-user-here"],
        &["--allow-connect", "10.0.0.300/8"],
        &["--deny-device", "1"],
        &["--cpu-weight", "0"],
    ];
    for opts in cases {
        let mut a = vec!["run", "--slot", "bad", "--private-tmp"];
        a.extend_from_slice(opts);
        a.extend_from_slice(&["--", "true"]);
        let out = inst.cli_output(&a);
        let (_, e) = text(&out);
        assert!(!out.status.success(), "{opts:?} accepted");
        assert!(!e.contains("panicked"), "{opts:?}: {e}");
        assert!(e.trim().lines().count() <= 3, "{opts:?}: not one clear error: {e}");
        assert_nothing_left(&inst);
    }
}

/// No slot, no cgroup, no scratch directory, no mount of the instance.
fn assert_nothing_left(inst: &Instance) {
    let slots: Value = serde_json::from_str(&inst.cli_ok(&["slots", "--json"])).unwrap();
    assert_eq!(slots.as_array().unwrap().len(), 0, "{slots}");
    let scratch = inst.paths.data_dir().join("scratch");
    let left = fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "scratch directories left in {}", scratch.display());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&inst.name), "a mount of the instance is left");
    let mounts = tracker::cgroup::CgroupMounts::detect().unwrap();
    let recorded = tracker::cgroup::CgroupParent::read(&inst.paths).unwrap().rel;
    let v2 = mounts.unified.iter().map(|m| m.join(&recorded));
    let v1 = mounts.v1.values().map(|m| m.join(inst.paths.default_cgroup_parent()));
    for parent in v2.chain(v1) {
        let children = fs::read_dir(&parent)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0);
        assert_eq!(children, 0, "slot cgroups left in {}", parent.display());
    }
}

#[test]
fn options_combine_and_tracking_holds_inside_them() {
    let Some(inst) = Instance::start() else { return };
    let m = marker("combo");
    let opts = [
        "--pid-ns",
        "--private-tmp",
        "--user",
        "nobody",
        "--memory-max",
        "256M",
        "--tasks-max",
        "100",
        "--cpu-quota",
        "150",
        "--deny-network",
        "--deny-device",
        "1:5",
    ];
    daemon_in_namespace(&inst, "combo", &opts, &m);
    assert!(wait_for(T, || processes_named(&m).len() == 1));
    let ps = inst.ps("combo");
    assert!(ps.iter().any(|p| p.comm == m), "{ps:?}");
    let s = stat(&inst, "combo");
    assert!(s["tasks_started"].as_u64().unwrap() >= 3, "{s}");
    assert!(s["execs"].as_u64().unwrap() >= 1, "{s}");
    let uid = fs::read_to_string(format!("/proc/{}/status", processes_named(&m)[0])).unwrap();
    assert!(uid.lines().any(|l| l.starts_with("Uid:\t65534")), "{uid}");
    inst.kill_clean("combo");
    assert!(processes_named(&m).is_empty());
    inst.cli_ok(&["release", "combo"]);
    assert_nothing_left(&inst);
}

#[test]
fn a_hundred_slots_created_and_released_leave_nothing() {
    let Some(inst) = Instance::start() else { return };
    let before = fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    for i in 0..100 {
        let name = format!("h{i}");
        if i % 2 == 0 {
            inst.cli_ok(&[
                "create",
                &name,
                "--memory-max",
                "64M",
                "--tasks-max",
                "20",
                "--deny-network",
            ]);
            inst.cli_ok(&["release", &name]);
        } else {
            inst.cli_ok(&[
                "run",
                "--slot",
                &name,
                "--private-tmp",
                "--pid-ns",
                "--memory-max",
                "64M",
                "--",
                "true",
            ]);
        }
    }
    assert_nothing_left(&inst);
    let after = fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    assert_eq!(before, after, "mounts changed");
    // Every slot id is free again: as many slots as the instance has can be made at once.
    let st = inst.cli_ok(&["status"]);
    assert!(st.contains("0 slot(s) in use"), "{st}");
}

#[test]
fn a_limit_nothing_can_enforce_is_refused() {
    let Some(inst) = Instance::start() else { return };
    // Without cgroups the kernel tag still tracks and kills, but nothing enforces limits.
    for opt in [
        &["--memory-max", "1G"][..],
        &["--tasks-max", "10"],
        &["--deny-network"],
        &["--deny-device", "1:5"],
    ] {
        let mut a = vec!["run"];
        a.extend_from_slice(opt);
        a.extend_from_slice(&["--", "true"]);
        let out = inst.cli().args(&a).env("TRACKER_CGROUPS", "off").output().unwrap();
        let (_, e) = text(&out);
        assert!(!out.status.success(), "{opt:?} accepted without cgroups");
        assert!(e.contains("cannot be enforced here"), "{opt:?}: {e}");
        assert_nothing_left(&inst);
    }
}
