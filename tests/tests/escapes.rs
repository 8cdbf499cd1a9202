//! The holes an attacker inside a slot found in the tracker's one promise (every descendant of
//! a job is tagged before it runs and dies with the slot), each tried from outside as the job
//! would: a thread that execs, io_uring's own threads, a raised pid_max, a deep tree, and
//! kills racing the kernel's counters. Each test failed before the hole was closed.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet, fs, os::unix::fs::PermissionsExt as _, process::Command, time::Duration,
};

use tracker::KillOptions;
use tracker_tests::{ESCAPE, Instance, marker, processes_named, test_dir, wait_for};

const T: Duration = Duration::from_secs(20);
const PID_MAX: &str = "/proc/sys/kernel/pid_max";

/// The tids of process `pid` now.
fn tids_of(pid: u32) -> BTreeSet<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn comm_of(pid: u32, tid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default().trim().into()
}

#[test]
fn a_thread_that_execs_stays_in_its_slot() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("texec");
    // Three threads; one that is not the leader execs a sleeper named `m`.
    inst.run_detached("texec", &["--user", "nobody"], "thread-exec", &m, &[]);
    assert!(wait_for(T, || processes_named(&m).len() == 1), "{:?}", processes_named(&m));
    let pid = processes_named(&m)[0];
    // The exec'ing thread took the leader's pid; the other threads are gone.
    assert!(wait_for(T, || tids_of(pid).len() == 1), "{:?}", tids_of(pid));
    // Where the kernel skipped the exec program's run (7.0+, or the tests' stand-in for it),
    // the tag moves at the old leader's free, a grace period after the exec: waited for.
    let pids = || inst.ps("texec").iter().map(|p| p.pid).collect::<Vec<_>>();
    assert!(wait_for(T, || pids() == vec![pid]), "{:?}", inst.ps("texec"));
    let (state, _) = inst.tracker().kernel_counts("texec").unwrap();
    assert_eq!(state.live_tasks, 1, "{state:?}");
    let report = inst.kill_clean("texec");
    assert_eq!(report["killed"].as_u64(), Some(1), "{report}");
    assert!(wait_for(T, || processes_named(&m).is_empty()), "{:?}", processes_named(&m));
    inst.cli_ok(&["release", "texec"]);
}

/// A thread that execs and whose new image forks at once: on a kernel that skipped the exec
/// program's run, the child is forked before the old leader's free moves the thread's tag,
/// and takes its slot from the leader's exited entry (`fork.rs`'s `exec_skipped`). Both are
/// in the slot, and both die with it.
#[test]
fn a_thread_that_execs_and_forks_at_once_keeps_both_in_its_slot() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("texecf");
    inst.run_detached("texecf", &["--user", "nobody"], "thread-exec-fork", &m, &[]);
    assert!(wait_for(T, || processes_named(&m).len() == 2), "{:?}", processes_named(&m));
    let mut named = processes_named(&m);
    named.sort_unstable();
    let pids = || {
        let mut p: Vec<u32> = inst.ps("texecf").iter().map(|p| p.pid).collect();
        p.sort_unstable();
        p
    };
    assert!(wait_for(T, || pids() == named), "{named:?} against {:?}", inst.ps("texecf"));
    let (state, _) = inst.tracker().kernel_counts("texecf").unwrap();
    assert_eq!(state.live_tasks, 2, "{state:?}");
    let report = inst.kill_clean("texecf");
    assert_eq!(report["killed"].as_u64(), Some(2), "{report}");
    assert!(wait_for(T, || processes_named(&m).is_empty()), "{:?}", processes_named(&m));
    inst.cli_ok(&["release", "texecf"]);
}

#[test]
fn io_uring_threads_are_tagged_and_bound_by_the_slot() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("iour");
    let out = test_dir("iouring").join("out");
    fs::write(&out, "").unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o666)).unwrap();
    // As an ordinary user, in a slot that may not open /dev/zero (1:5): an SQPOLL thread and
    // an io-wq worker each open it and read it; another worker stays blocked on a pipe.
    inst.run_detached(
        "iour",
        &["--user", "nobody", "--deny-device", "1:5"],
        "io-uring",
        &m,
        &[out.to_str().unwrap()],
    );
    let report = || fs::read_to_string(&out).unwrap_or_default();
    let done = |r: String| r.contains("ready\n") || r.starts_with("setup");
    assert!(wait_for(T, || done(report())), "helper: {}", report());
    let report = report();
    if report.starts_with("setup") {
        // kernel.io_uring_disabled, or a kernel without io_uring: nothing to escape through.
        tracker_tests::skip(&format!("io_uring is not available to an ordinary user: {report}"));
        return;
    }
    for who in ["sqpoll", "async"] {
        assert!(report.contains(&format!("{who} open -1\n")), "{who} opened /dev/zero: {report}");
    }
    let pid = processes_named(&m)[0];
    let t = inst.tracker();
    // A thread seen before and after the kernel's tags were read existed throughout.
    let before = tids_of(pid);
    let tagged: BTreeSet<u32> = t.tags("iour").unwrap().into_iter().map(|(tid, _)| tid).collect();
    let after = tids_of(pid);
    let stayed: BTreeSet<u32> = before.intersection(&after).copied().collect();
    let comms: Vec<(u32, String)> = stayed.iter().map(|t| (*t, comm_of(pid, *t))).collect();
    assert!(comms.iter().any(|(_, c)| c.starts_with("iou-sqp")), "no SQPOLL thread: {comms:?}");
    assert!(comms.iter().any(|(_, c)| c.starts_with("iou-wrk")), "no io-wq worker: {comms:?}");
    let untagged: Vec<&(u32, String)> =
        comms.iter().filter(|(tid, _)| !tagged.contains(tid)).collect();
    assert!(untagged.is_empty(), "untagged threads {untagged:?}, tagged {tagged:?}");
    inst.kill_clean("iour");
    assert!(wait_for(T, || processes_named(&m).is_empty()), "{:?}", processes_named(&m));
}

#[test]
fn raising_pid_max_past_the_tasks_array_is_refused() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let status = || -> serde_json::Value {
        serde_json::from_str(&inst.cli_ok(&["status", "--json"])).unwrap()
    };
    let capacity = status()["max_tasks"].as_u64().unwrap();
    let read = || fs::read_to_string(PID_MAX).unwrap().trim().parse::<u64>().unwrap();
    let before = read();
    assert!(before <= capacity, "pid_max {before} > capacity {capacity} right after load");
    // A value the array can tag is let through (this one changes nothing).
    fs::write(PID_MAX, before.to_string()).unwrap();
    let raised = fs::write(PID_MAX, (capacity + 1).to_string());
    let now = read();
    if now != before {
        // Put the machine back at once: other tests run beside this one.
        let _ = fs::write(PID_MAX, before.to_string());
    }
    assert_eq!(now, before, "kernel.pid_max was raised past the tasks array ({capacity})");
    let e = raised.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    assert!(status()["pid_max_refused"].as_u64().unwrap() >= 1);
}

#[test]
fn adopt_takes_a_tree_deeper_than_any_fixed_walk() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("deep");
    let depth = 100;
    let mut top = Command::new(ESCAPE).args(["chain", &m, &depth.to_string()]).spawn().unwrap();
    assert!(
        wait_for(T, || processes_named(&m).len() == depth),
        "{} of {depth}",
        processes_named(&m).len()
    );
    let chain: BTreeSet<u32> = processes_named(&m).into_iter().collect();
    inst.cli_ok(&["create", "deep"]);
    inst.cli_ok(&["adopt", "deep", &top.id().to_string()]);
    let in_slot: BTreeSet<u32> = inst.ps("deep").iter().map(|p| p.pid).collect();
    assert_eq!(in_slot, chain, "missing: {:?}", chain.difference(&in_slot).collect::<Vec<_>>());
    let report = inst.kill_clean("deep");
    assert_eq!(report["killed"].as_u64(), Some(depth as u64), "{report}");
    let _ = top.wait();
    assert!(wait_for(T, || processes_named(&m).is_empty()), "{:?}", processes_named(&m));
}

#[test]
fn a_hundred_kills_of_a_churning_job_leave_every_counter_consistent() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let t = inst.tracker();
    let m = marker("churn");
    inst.cli_ok(&["create", "churn"]);
    // A slot with no memory cgroup of its own keeps rss_stat attached, and it follows every
    // tagged process: the churn slot's resident-memory figures must balance too.
    let out = inst.cli().env("TRACKER_CGROUPS", "off").args(["create", "rss-on"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let opts = KillOptions { timeout: tracker_tests::scaled(T) };
    for i in 0..100u64 {
        let (_, c) = t.kernel_counts("churn").unwrap();
        let mut cmd = Command::new(ESCAPE);
        cmd.args(["churn", &m, "3"]);
        let mut child = t.spawn("churn", &mut cmd, true).unwrap();
        // Kill it in mid-churn, at a different point each time: tasks come and go, threads
        // fault memory in on every CPU, while the kill dooms the slot.
        let want = c.counts.tasks_started + 10 + (i % 10) * 15;
        assert!(wait_for(T, || t.kernel_counts("churn").unwrap().1.counts.tasks_started >= want));
        let report = t.kill("churn", &opts).unwrap();
        assert!(report.is_complete(), "kill {i}: {report:?}");
        let _ = child.wait();
        // The exit programs have run for every task once the kill is done; the last of them
        // may still be folding a process's memory out.
        assert!(
            wait_for(T, || {
                let (s, _) = t.kernel_counts("churn").unwrap();
                s.live_tasks == 0 && s.mem_current == 0
            }),
            "after kill {i}: {:?}",
            t.kernel_counts("churn").unwrap()
        );
    }
    let (state, counters) = t.kernel_counts("churn").unwrap();
    assert_eq!((state.live_tasks, state.mem_current), (0, 0), "{state:?}");
    assert_eq!(counters.counts.tasks_started, counters.counts.tasks_exited, "{counters:?}");
    assert_eq!(counters.counts.tag_failures, 0, "{counters:?}");
    assert!(state.mem_peak > 0 && state.peak_tasks > 1, "{state:?}");
    assert!(processes_named(&m).is_empty(), "{:?}", processes_named(&m));
    inst.cli_ok(&["release", "churn"]);
}
