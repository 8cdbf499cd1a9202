//! Usage accounted in the kernel, per slot: exact for processes that live a millisecond,
//! compared with the kernel's own per-cgroup counters where they exist.
//!
//! Each test counts exits and frees exactly, so the tests run one at a time: another test's
//! instance loading or unloading beside them makes the kernel skip runs of their programs
//! (see `tracker_tests::Instance::start_alone`).
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
    thread,
    time::Duration,
};

use serde_json::Value;
use tracker_tests::{ESCAPE, Instance, marker, time_scale, wait_for};

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

fn stat(inst: &Instance, slot: &str) -> Value {
    serde_json::from_str(&inst.cli_ok(&["stat", slot, "--json"])).unwrap()
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing from {v}"))
}

/// Wait until every task of the slot has exited and been freed, where its last CPU time is
/// added (`tracker stat` waits for that itself, but only a second: a slow machine's RCU grace
/// period can take longer). A task is freed once reaped: the tests' jobs are waited for and
/// reap their whole tree themselves (a detached job's top process is an orphan, which the
/// machine's PID 1 may never reap: a VM's minimal init does not).
fn wait_empty(inst: &Instance, slot: &str) {
    let done = || {
        let s = stat(inst, slot);
        num(&s, "tasks_live") == 0.0 && num(&s, "tasks_exited") == num(&s, "tasks_finished")
    };
    // The kernel's pending count tells a free never run (still pending) from one whose
    // count was lost (0 pending).
    assert!(wait_for(T, done), "{}, pending frees {:?}", stat(inst, slot), pending_frees(inst));
}

/// Ten thousand; a thousand where the kernel is emulated in software, where one exec of
/// `/bin/true` takes 150 to 300 ms (measured: 300 of them in 50 s on 6.1 and 96 s on 5.10,
/// beside another VM), and ten thousand the better part of an hour.
#[test]
fn thousands_of_short_processes_are_all_counted() {
    let Some(inst) = Instance::start_alone() else { return };
    let n: u32 = if time_scale() > 1 { 1_000 } else { 10_000 };
    let script = format!("for i in $(seq {n}); do /bin/true; done");
    let out = inst.cli_output(&["run", "--slot", "short", "--keep", "--", "bash", "-c", &script]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = stat(&inst, "short");
    assert!(num(&s, "tasks_started") >= f64::from(n + 1), "{s}");
    assert!(num(&s, "execs") >= f64::from(n), "{s}");
    assert_eq!(num(&s, "tasks_live"), 0.0, "{s}");
    // Nothing runs: what the slot's memory cgroup is still charged (page cache, kernel
    // memory), as the cgroup has it; with no cgroup, no resident page.
    let now = num(&s, "memory_current_bytes") as u64;
    match cgroup_memory(&inst, "short", "memory.current", "memory.usage_in_bytes") {
        Some(cg) => assert!(now.abs_diff(cg) <= MIB, "{s}, cgroup: {cg}"),
        None => assert_eq!(now, 0, "{s}"),
    }
    // The harvest stays until the slot is released, and `slots` shows CPU and memory.
    let slots = inst.cli_ok(&["slots"]);
    assert!(slots.lines().next().unwrap().contains("CPU"), "{slots}");
    assert!(slots.lines().next().unwrap().contains("MEM PEAK"), "{slots}");
}

/// The slot's CPU time as the kernel's own cgroup counter has it, in seconds.
fn cgroup_cpu_seconds(inst: &Instance, slot: &str) -> Option<f64> {
    let cg = inst.tracker().slot(slot).unwrap().cgroups;
    if let Some(dir) = &cg.unified
        && let Ok(text) = fs::read_to_string(dir.join("cpu.stat"))
    {
        let usec = text.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
        return usec.trim().parse::<f64>().ok().map(|u| u / 1e6);
    }
    let dir = cg.v1.get("cpuacct")?;
    let ns: f64 = fs::read_to_string(dir.join("cpuacct.usage")).ok()?.trim().parse().ok()?;
    Some(ns / 1e9)
}

#[test]
fn cpu_time_matches_the_kernels_cgroup_counter_and_getrusage() {
    let Some(inst) = Instance::start_alone() else { return };
    let m = marker("spin");
    // Two processes spinning a second each, one of them a daemon in its own session.
    let script = format!("{ESCAPE} daemon-spin {m} 1; {ESCAPE} spin {m} 1");
    // The job reaps its own tree, the daemon too: a task's final CPU is harvested when it is
    // freed, after it is reaped, and the machine's PID 1 need not reap orphans (a VM's does
    // not).
    inst.cli_ok(&[
        "run", "--keep", "--slot", "cpu", "--", ESCAPE, "reaper", &m, "bash", "-c", &script,
    ]);
    wait_empty(&inst, "cpu");
    let s = stat(&inst, "cpu");
    let ours = num(&s, "cpu_user_seconds") + num(&s, "cpu_system_seconds");
    assert!(ours >= 2.0, "{s}");
    match cgroup_cpu_seconds(&inst, "cpu") {
        Some(kernel) => {
            assert!((ours - kernel).abs() <= 0.05 * kernel, "tracker {ours} s, cgroup {kernel} s");
        }
        None => tracker_tests::skip("no cgroup CPU counter for the slot"),
    }
    // A well-behaved tree (every process waited for): the job's shell's getrusage, of itself
    // and of its children (`times` prints both), is the whole slot's CPU, as the tracker sees
    // it. (Not the CPU of a shell outside: its children would include `tracker run` itself.)
    let script = format!("{ESCAPE} spin {m} 1; times");
    let out = inst.cli_output(&["run", "--slot", "rusage", "--keep", "--", "bash", "-c", &script]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // `times`: the shell's user/sys, then its children's, as `0m1.002s 0m0.004s`.
    let secs: f64 = text.lines().take(2).flat_map(str::split_whitespace).map(parse_times).sum();
    wait_empty(&inst, "rusage");
    let s = stat(&inst, "rusage");
    let ours = num(&s, "cpu_user_seconds") + num(&s, "cpu_system_seconds");
    assert!((ours - secs).abs() <= 0.05 * secs, "tracker {ours} s, getrusage {secs} s ({text})");
}

/// `0m1.002s` -> 1.002
fn parse_times(s: &str) -> f64 {
    let (m, rest) = s.split_once('m').unwrap();
    m.parse::<f64>().unwrap() * 60.0 + rest.trim_end_matches('s').parse::<f64>().unwrap()
}

/// A memory file of the slot's own memory cgroup (v2 name, v1 name), in bytes.
fn cgroup_memory(inst: &Instance, slot: &str, v2: &str, v1: &str) -> Option<u64> {
    let cg = inst.tracker().slot(slot).unwrap().cgroups;
    let read = |p: std::path::PathBuf| fs::read_to_string(p).ok()?.trim().parse().ok();
    cg.unified
        .as_ref()
        .and_then(|d| read(d.join(v2)))
        .or_else(|| cg.v1.get("memory").and_then(|d| read(d.join(v1))))
}

/// The cgroup's own memory high-water mark for the slot, in bytes.
/// Process `pid`'s resident memory (VmRSS), in KiB; 0 once it is gone.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn cgroup_memory_peak(inst: &Instance, slot: &str) -> Option<u64> {
    cgroup_memory(inst, slot, "memory.peak", "memory.max_usage_in_bytes")
}

#[test]
fn a_short_memory_spike_of_a_grandchild_shows_in_the_peak() {
    let Some(inst) = Instance::start_alone() else { return };
    let m = marker("mem");
    // A grandchild touches 400 MiB for 100 ms and frees it.
    let script = format!("bash -c '{ESCAPE} touch {m} 400 100'; sleep 0.2");
    // Waited for (not detached): every process of the job is reaped, so freed (see
    // `wait_empty`).
    inst.cli_ok(&["run", "--keep", "--slot", "mem", "--", "bash", "-c", &script]);
    wait_empty(&inst, "mem");
    let s = stat(&inst, "mem");
    let peak = num(&s, "memory_peak_bytes") as u64;
    assert!(peak >= 400 * MIB, "{s}");
    assert!(num(&s, "max_process_rss_bytes") as u64 >= 400 * MIB, "{s}");
    // The spike is gone; what the cgroup is still charged (page cache) is not 400 MiB.
    assert!((num(&s, "memory_current_bytes") as u64) < 100 * MIB, "{s}");
    let rss_stat = inst.paths.link_pin("trk_rss").exists();
    match cgroup_memory_peak(&inst, "mem") {
        // The figures are the cgroup's own, read a moment before; rss_stat, which runs at
        // every RSS change of the machine, is not attached for it.
        Some(cg) => {
            assert!(
                peak <= cg && peak + 8 * MIB >= cg,
                "tracker peak {} MiB, cgroup peak {} MiB",
                peak / MIB,
                cg / MIB
            );
            assert!(!rss_stat);
        }
        // A memory cgroup without a peak (cgroup v2 before 5.19): the figures are rss_stat's,
        // attached while the slot exists.
        None if cgroup_memory(&inst, "mem", "memory.current", "memory.usage_in_bytes")
            .is_some() =>
        {
            assert!(rss_stat, "no memory.peak, and rss_stat is not attached");
        }
        None => tracker_tests::skip("no memory cgroup for the slot"),
    }
}

/// A slot with no memory cgroup of its own takes its memory from rss_stat, attached while
/// such a slot exists and only then.
#[test]
fn a_slot_without_a_memory_cgroup_keeps_its_peak_through_rss_stat() {
    let Some(inst) = Instance::start_alone() else { return };
    let link = inst.paths.link_pin("trk_rss");
    assert!(!link.exists());
    let m = marker("rssmem");
    let script = format!("bash -c '{ESCAPE} touch {m} 300 100'; sleep 0.2");
    let out = inst
        .cli()
        .env("TRACKER_CGROUPS", "off")
        .args(["run", "--keep", "--slot", "rssmem", "--", "bash", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(link.exists(), "rss_stat not attached for a slot without a memory cgroup");
    wait_empty(&inst, "rssmem");
    let s = stat(&inst, "rssmem");
    assert!(num(&s, "memory_peak_bytes") as u64 >= 300 * MIB, "{s}");
    // The resident pages of its processes: none left.
    assert_eq!(num(&s, "memory_current_bytes"), 0.0, "{s}");
    inst.cli_ok(&["release", "rssmem"]);
    assert!(!link.exists(), "rss_stat still attached with no slot needing it");
}

/// A root job moves one of its processes out of the slot's memory cgroup, where its new pages
/// are no longer charged: the slot's memory still has them.
#[test]
fn memory_of_a_process_moved_out_of_the_slots_cgroup_still_counts() {
    let Some(inst) = Instance::start_alone() else { return };
    let t = inst.tracker();
    inst.cli_ok(&["create", "away"]);
    let cg = t.slot("away").unwrap().cgroups;
    let mounts = t.cgroups().mounts().clone();
    // The hierarchy whose memory controller charges the slot's pages: the process moves to
    // its root. On cgroup v2 before 5.19 (no memory.peak) the slot's figures are rss_stat's,
    // while its v2 cgroup still has the memory controller.
    let v2_memory = cg.unified.as_ref().is_some_and(|d| d.join("memory.current").exists());
    let root = match cg.memory_source() {
        tracker::cgroup::MemorySource::V2(_) => mounts.unified.clone(),
        tracker::cgroup::MemorySource::V1(_) => mounts.v1.get("memory").cloned(),
        tracker::cgroup::MemorySource::Rss if v2_memory => mounts.unified.clone(),
        tracker::cgroup::MemorySource::Rss => None,
    };
    let Some(root) = root else {
        tracker_tests::skip("the slot has no memory cgroup of its own");
        return;
    };
    let m = marker("away");
    let script =
        format!("echo $$ > {}/cgroup.procs && exec {ESCAPE} touch {m} 200 60000", root.display());
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script]);
    let mut child = t.spawn("away", &mut cmd, true).unwrap();
    let pid = child.id();
    let rss_kib = || rss_kib(pid);
    assert!(wait_for(T, || rss_kib() >= 200 * 1024), "rss {} KiB", rss_kib());
    let s = stat(&inst, "away");
    let inside = cgroup_memory(&inst, "away", "memory.current", "memory.usage_in_bytes").unwrap();
    assert!(inside < 100 * MIB, "the pages were charged to the slot's cgroup: {inside}");
    assert!(num(&s, "memory_current_bytes") as u64 >= 200 * MIB, "{s}");
    assert!(num(&s, "memory_peak_bytes") as u64 >= 200 * MIB, "{s}");
    inst.kill_clean("away");
    let _ = child.wait();
}

/// A process adopted with 200 MiB already resident, which then sleeps: the slot's memory has
/// them, though the kernel leaves their charges in the process's former cgroup.
#[test]
fn memory_an_adopted_process_had_before_counts() {
    let Some(inst) = Instance::start_alone() else { return };
    inst.cli_ok(&["create", "adoptmem"]);
    let m = marker("adoptmem");
    let mut child = Command::new(ESCAPE).args(["touch", &m, "200", "60000"]).spawn().unwrap();
    let pid = child.id();
    let rss_kib = || rss_kib(pid);
    assert!(wait_for(T, || rss_kib() >= 200 * 1024), "rss {} KiB", rss_kib());
    inst.cli_ok(&["adopt", "adoptmem", &pid.to_string()]);
    assert!(inst.paths.link_pin("trk_rss").exists(), "rss_stat not attached for an adoption");
    let s = stat(&inst, "adoptmem");
    assert!(num(&s, "memory_current_bytes") as u64 >= 200 * MIB, "{s}");
    assert!(num(&s, "memory_peak_bytes") as u64 >= 200 * MIB, "{s}");
    inst.kill_clean("adoptmem");
    let _ = child.wait();
}

#[test]
fn block_writes_and_file_reads_are_counted() {
    let Some(inst) = Instance::start_alone() else { return };
    let dir = tracker_tests::test_dir("io");
    let file = dir.join("data");
    let script = format!(
        "dd if=/dev/zero of={f} bs=1M count=50 conv=fsync status=none && cat {f} > /dev/null",
        f = file.display()
    );
    let out = inst.cli_output(&["run", "--slot", "io", "--keep", "--", "bash", "-c", &script]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = stat(&inst, "io");
    assert!(num(&s, "write_bytes") as u64 >= 50 * MIB, "{s}");
    assert!(num(&s, "wchar_bytes") as u64 >= 50 * MIB, "{s}");
    assert!(num(&s, "rchar_bytes") as u64 >= 50 * MIB, "{s}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn network_of_the_slot_is_counted_and_nothing_else() {
    let Some(inst) = Instance::start_alone() else { return };
    if inst.tracker().slot("x").is_err() && inst.tracker().cgroups().mounts().unified.is_none() {
        tracker_tests::skip("no cgroup2 hierarchy for the network programs");
        return;
    }
    // A server outside the slot: reads everything, answers 1 MB.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let serve = thread::spawn(move || {
        for _ in 0..2 {
            let (mut c, _) = server.accept().unwrap();
            let mut sink = vec![];
            c.read_to_end(&mut sink).unwrap();
            c.write_all(&vec![7u8; 1_000_000]).unwrap();
        }
    });
    let client = format!(
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(b'x' * 20_000_000)\n\
         s.shutdown(socket.SHUT_WR)\n\
         while s.recv(1 << 20): pass\n"
    );
    let out = inst.cli_output(&["run", "--slot", "net", "--keep", "--", "python3", "-c", &client]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = stat(&inst, "net");
    assert!(num(&before, "net_tx_bytes") >= 20_000_000.0, "{before}");
    assert!(num(&before, "net_rx_bytes") >= 1_000_000.0, "{before}");
    assert!(num(&before, "net_tx_packets") > 0.0 && num(&before, "net_rx_packets") > 0.0);
    // The same traffic from outside the slot changes nothing.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&vec![1u8; 5_000_000]).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut sink = vec![];
    c.read_to_end(&mut sink).unwrap();
    serve.join().unwrap();
    let after = stat(&inst, "net");
    for key in ["net_tx_bytes", "net_rx_bytes", "net_tx_packets", "net_rx_packets"] {
        assert_eq!(before[key], after[key], "{key}");
    }
}

#[test]
fn a_process_the_kill_took_is_harvested_too() {
    let Some(inst) = Instance::start_alone() else { return };
    let m = marker("burn");
    inst.cli_ok(&["run", "--detach", "--slot", "burn", "--", ESCAPE, "spin", &m, "100"]);
    assert!(wait_for(T, || {
        let s = stat(&inst, "burn");
        num(&s, "cpu_user_seconds") + num(&s, "cpu_system_seconds") >= 0.5
    }));
    let live = stat(&inst, "burn");
    inst.kill_clean("burn");
    let s = stat(&inst, "burn");
    let cpu = |v: &Value| num(v, "cpu_user_seconds") + num(v, "cpu_system_seconds");
    assert!(cpu(&s) >= cpu(&live), "{live} then {s}");
    assert_eq!(num(&s, "exits_by_signal"), 1.0, "{s}");
    assert_eq!(num(&s, "tasks_live"), 0.0, "{s}");
}

#[test]
fn run_prints_the_trees_usage_and_writes_the_summary() {
    let Some(inst) = Instance::start_alone() else { return };
    let file = std::env::temp_dir().join(format!("tracker-summary-{}.json", std::process::id()));
    let m = marker("sum");
    // The job waits for its daemon to finish its 0.2 s (however slow the machine), so that
    // the end of the job does not kill it first. The daemon is the process whose command line
    // (which its new name leaves alone) starts with the helper: not this script's shell.
    let script = format!(
        "{ESCAPE} daemon-spin {m} 0.2; while pgrep -f '^[^ ]*/escape daemon-spin {m} ' >/dev/null; do sleep 0.05; done"
    );
    let out =
        inst.cli_output(&["run", "--summary", file.to_str().unwrap(), "--", "bash", "-c", &script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("usage of the whole tree"), "{stderr}");
    assert!(stderr.contains("cpu "), "{stderr}");
    let v: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    // The daemon's 0.2 s are in the tree's usage, and it ended on its own.
    assert_eq!(num(&v, "exits_by_signal"), 0.0, "{v}");
    assert!(num(&v, "cpu_user_seconds") + num(&v, "cpu_system_seconds") >= 0.2, "{v}");
    assert!(num(&v, "tasks_started") >= 4.0, "{v}");
    fs::remove_file(&file).unwrap();
}

/// The kernel's count of tagged tasks that exited and are not yet freed (`tracker status`).
fn pending_frees(inst: &Instance) -> Option<u64> {
    let st: Value = serde_json::from_str(&inst.cli_ok(&["status", "--json"])).unwrap();
    st["pending_frees"].as_u64()
}

/// While no tagged task is between its exit and its free, the free program returns before it
/// reads the task being freed. It must still see every tagged free: of processes, of threads,
/// and of a leader that a thread's exec replaced, freed under that thread's old tid. Each is
/// counted finished (which a skipped free never is), and the count returns to 0 once all are
/// freed, so that the machine's other frees pay nothing again.
#[test]
fn every_exited_task_is_freed_and_the_pending_count_returns_to_zero() {
    let Some(inst) = Instance::start_alone() else { return };
    assert_eq!(pending_frees(&inst), Some(0));
    // Processes, reaped by the job's shell.
    let script = "for i in $(seq 100); do /bin/true; done";
    inst.cli_ok(&["run", "--keep", "--slot", "procs", "--", "bash", "-c", script]);
    wait_empty(&inst, "procs");
    // Threads, one of which execs (the leader is freed under the exec'ing thread's old tid).
    // In the foreground, so that `tracker run` reaps it; killed once the exec happened.
    let m = marker("pfree");
    let mut job = inst
        .cli()
        .args(["run", "--keep", "--slot", "texec", "--", ESCAPE, "thread-exec", &m])
        .spawn()
        .unwrap();
    let exec_done = || {
        let pids = tracker_tests::processes_named(&m);
        pids.len() == 1 && inst.ps("texec").first().is_some_and(|p| p.threads == 1)
    };
    assert!(wait_for(T, exec_done), "{:?}", inst.ps("texec"));
    inst.cli_ok(&["kill", "texec"]);
    job.wait().unwrap();
    wait_empty(&inst, "texec");
    let s = stat(&inst, "texec");
    assert_eq!(num(&s, "tasks_started"), 4.0, "{s}");
    assert!(wait_for(T, || pending_frees(&inst) == Some(0)), "{:?}", pending_frees(&inst));
}

/// A task's CPU time is harvested at its exit, and only its last slice (the exit itself, and
/// at most a scheduler tick before it) at its free: where the kernel skips the free program's
/// run (it does while another program attaches to or detaches from `sched_process_free`, see
/// `Instance::start_alone`), the slot keeps the task's CPU time. Here the free program is
/// detached outright, so that no free is seen at all: the condition is certain, and observed
/// (every exit stays pending).
#[test]
fn a_task_whose_free_is_never_seen_keeps_the_cpu_its_exit_harvested() {
    let Some(inst) = Instance::start_alone() else { return };
    inst.detach(tracker::programs::FREE);
    let m = marker("nofree");
    let script = format!("{ESCAPE} spin {m} 1; times");
    let out = inst.cli_output(&["run", "--slot", "nofree", "--keep", "--", "bash", "-c", &script]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let secs: f64 = text.lines().take(2).flat_map(str::split_whitespace).map(parse_times).sum();
    let s = stat(&inst, "nofree");
    assert_eq!(num(&s, "tasks_live"), 0.0, "{s}");
    assert_eq!(num(&s, "tasks_exited"), num(&s, "tasks_started"), "{s}");
    assert_eq!(num(&s, "tasks_finished"), 0.0, "no free was seen: {s}");
    let ours = num(&s, "cpu_user_seconds") + num(&s, "cpu_system_seconds");
    assert!(ours >= 0.9 * secs && ours <= 1.05 * secs, "tracker {ours} s, getrusage {secs} s");
}

/// The zombie whose name is `comm`, and its parent.
fn zombie_named(comm: &str) -> Option<(u32, u32)> {
    fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next()?, fields.next()?.parse().ok()?);
        (name == comm && state == "Z").then_some((pid, ppid))
    })
}

/// A task's runtime as the kernel has it (`sum_exec_runtime`, in `/proc/PID/schedstat`), in
/// seconds.
fn runtime(pid: u32) -> f64 {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    text.split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9
}

/// A zombie (exited, not yet reaped by its parent) counts once: what its exit harvested, in
/// the slot's counters, plus the rest, which the usage iterator reads of it. Both are the
/// kernel's own runtime of the task, which `/proc/PID/schedstat` shows, and the parent's,
/// asleep, does not move either. Once reaped, it counts once still.
#[test]
fn a_zombies_cpu_time_counts_once_before_and_after_it_is_reaped() {
    let Some(inst) = Instance::start_alone() else { return };
    let m = marker("zcpu");
    let mut job = inst
        .cli()
        .args(["run", "--keep", "--slot", "zcpu", "--", ESCAPE, "reap-on-input", &m, "0.3"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut found = None;
    let zombie = || {
        found = zombie_named(&m);
        found.is_some()
    };
    assert!(wait_for(T, zombie), "no zombie {m}");
    let (child, parent) = found.unwrap();
    let s = stat(&inst, "zcpu");
    assert_eq!((num(&s, "tasks_started"), num(&s, "tasks_exited")), (2.0, 1.0), "{s}");
    assert_eq!(num(&s, "tasks_finished"), 0.0, "{s}");
    let kernel = runtime(child) + runtime(parent);
    let ours = num(&s, "cpu_user_seconds") + num(&s, "cpu_system_seconds");
    assert!(
        (ours - kernel).abs() <= 0.001 + kernel / 1000.0,
        "tracker {ours} s, kernel {kernel} s"
    );
    // Reaped: the rest is added at the free, and the parent's exit, a moment of CPU.
    job.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(job.wait().unwrap().success());
    wait_empty(&inst, "zcpu");
    let s = stat(&inst, "zcpu");
    let after = num(&s, "cpu_user_seconds") + num(&s, "cpu_system_seconds");
    assert!(after >= ours && after - ours < 0.1, "{ours} s, then {after} s once reaped");
}
