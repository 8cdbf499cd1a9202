//! The containment promise: every trick a job uses to escape its batch system stays in its
//! slot (as `tracker ps` shows) and dies with `tracker kill`, with nothing left anywhere.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeSet, time::Duration};

use tracker::programs;

use tracker_tests::{
    ESCAPE, Instance, cgroups_of, live_processes_named, marker, processes_named, wait_for,
};

const T: Duration = Duration::from_secs(10);

/// Start `mode` in slot `slot`, wait until `want` processes named `m` exist, check that every
/// one of them is in the slot, then kill the slot and check that none is left on the machine.
fn contained(inst: &Instance, slot: &str, mode: &str, m: &str, args: &[&str], want: usize) {
    inst.run_detached(slot, &[], mode, m, args);
    assert!(
        wait_for(T, || processes_named(m).len() >= want),
        "{mode}: expected {want} process(es) named {m}, found {:?}",
        processes_named(m)
    );
    let escapees: BTreeSet<u32> = processes_named(m).into_iter().collect();
    let in_slot: BTreeSet<u32> = inst.ps(slot).iter().map(|p| p.pid).collect();
    assert!(escapees.is_subset(&in_slot), "{mode}: {escapees:?} not all in slot {in_slot:?}");
    let report = inst.kill_clean(slot);
    assert!(report["killed"].as_u64().unwrap() >= want as u64, "{mode}: {report}");
    assert!(
        wait_for(T, || processes_named(m).is_empty()),
        "{mode}: survivors {:?}",
        processes_named(m)
    );
    assert!(inst.ps(slot).is_empty());
    inst.cli_ok(&["release", slot]);
}

#[test]
fn classic_daemonize_double_fork_with_setsid() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("dfork");
    contained(&inst, "daemonize", "daemonize", &m, &[], 1);
}

#[test]
fn shell_double_fork_and_nohup_disown() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("nohup");
    let script = format!(
        "(setsid {ESCAPE} sleep {m} &) ; nohup {ESCAPE} sleep {m} >/dev/null 2>&1 & disown; exit 0"
    );
    inst.cli_ok(&["run", "--detach", "--slot", "shell", "--", "bash", "-c", &script]);
    assert!(wait_for(T, || processes_named(&m).len() == 2));
    let pids: BTreeSet<u32> = processes_named(&m).into_iter().collect();
    let in_slot: BTreeSet<u32> = inst.ps("shell").iter().map(|p| p.pid).collect();
    assert!(pids.is_subset(&in_slot), "{pids:?} vs {in_slot:?}");
    inst.kill_clean("shell");
    assert!(wait_for(T, || processes_named(&m).is_empty()));
}

#[test]
fn empty_environment_and_new_process_group() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("envi");
    contained(&inst, "envpgrp", "env-pgrp", &m, &[], 1);
    // And through env -i from a shell, in a new session.
    let m2 = marker("envsh");
    let script = format!("env -i setsid {ESCAPE} sleep {m2} & exit 0");
    inst.cli_ok(&["run", "--detach", "--slot", "envsh", "--", "bash", "-c", &script]);
    assert!(wait_for(T, || processes_named(&m2).len() == 1));
    let pid = processes_named(&m2)[0];
    assert!(inst.ps("envsh").iter().any(|p| p.pid == pid));
    inst.kill_clean("envsh");
    assert!(wait_for(T, || processes_named(&m2).is_empty()));
}

#[test]
fn threads_are_tagged() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("thr");
    inst.run_detached("threads", &[], "threads", &m, &["4"]);
    assert!(wait_for(T, || inst.ps("threads").first().is_some_and(|p| p.threads == 5)));
    let rows = inst.cli_ok(&["ps", "threads", "--threads", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&rows).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 5, "{rows}");
    let status = inst.tracker().slot_status("threads").unwrap();
    assert_eq!(status.tasks_live, 5);
    let report = inst.kill_clean("threads");
    assert_eq!(report["tasks_killed"].as_u64(), Some(5), "{report}");
    assert_eq!(report["killed"].as_u64(), Some(1), "{report}");
}

#[test]
fn vfork_and_clone_parent() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("vfork");
    // The vfork child execs a sleeper; its parent exits.
    contained(&inst, "vfork", "vfork", &m, &[], 1);
    let m = marker("clonep");
    // CLONE_PARENT makes the child a sibling of its creator: a child of `tracker run`'s
    // detached process's parent, outside any tree the creator roots.
    contained(&inst, "cloneparent", "clone-parent", &m, &[], 1);
}

#[test]
fn a_command_that_forks_at_once_is_tagged_before_it_runs() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("fnow");
    contained(&inst, "forknow", "fork-now", &m, &[], 2);
}

#[test]
fn pid_hopper_is_followed_and_killed() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("hop");
    inst.run_detached("hopper", &[], "hopper", &m, &[]);
    let t = inst.tracker();
    assert!(wait_for(T, || t.slot_status("hopper").unwrap().counts.tasks_started > 2000));
    // Its pid changes thousands of times a second, yet the slot always has it, and only it.
    // Frozen, the set stands still: every hopper process on the machine (but one already in
    // `do_exit`, which no freezer stops and which has left its slot) is in the slot, and the
    // slot holds nothing else. How many there are at once depends on the scheduler.
    for _ in 0..5 {
        inst.cli_ok(&["freeze", "hopper"]);
        // A task caught in `do_exit` finishes it; nothing else moves until the thaw.
        let agree = || {
            let mut ps: Vec<u32> = inst.ps("hopper").iter().map(|p| p.pid).collect();
            let mut named = live_processes_named(&m);
            ps.sort_unstable();
            named.sort_unstable();
            let live = t.slot_status("hopper").unwrap().tasks_live;
            (!ps.is_empty() && ps == named && live == ps.len() as u64, (ps, named, live))
        };
        // On failure: the two lists, and what the kernel says of each pid they do not share.
        let explain = || {
            let (ps, named, live) = agree().1;
            let odd: Vec<String> = ps
                .iter()
                .filter(|p| !named.contains(p))
                .chain(named.iter().filter(|p| !ps.contains(p)))
                .map(|p| format!("{p}: {}", stat_of(*p)))
                .collect();
            format!("slot's pids {ps:?}, the machine's {m} pids {named:?}, live {live}; {odd:?}")
        };
        assert!(wait_for(T, || agree().0), "{}", explain());
        inst.cli_ok(&["thaw", "hopper"]);
    }
    inst.kill_clean("hopper");
    assert!(wait_for(T, || processes_named(&m).is_empty()), "{:?}", processes_named(&m));
    let after = t.slot_status("hopper").unwrap();
    assert_eq!(after.tasks_live, 0, "{after:?}");
}

/// A process's state and flags (`/proc/PID/stat`), or that it is gone.
fn stat_of(pid: u32) -> String {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return "gone".into();
    };
    let after: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let flags = after.get(6).and_then(|f| f.parse::<u64>().ok()).unwrap_or_default();
    format!("state {} flags {flags:#x}", after.first().copied().unwrap_or("?"))
}

#[test]
fn fork_bomb_is_killed_while_it_forks() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("bomb");
    inst.run_detached("bomb", &["--tasks-max", "300"], "forkbomb", &m, &[]);
    let t = inst.tracker();
    assert!(wait_for(T, || t.slot_status("bomb").unwrap().tasks_live >= 250));
    let report = inst.kill_clean("bomb");
    assert!(report["killed"].as_u64().unwrap() >= 250, "{report}");
    assert!(wait_for(T, || processes_named(&m).is_empty()), "{:?}", processes_named(&m));
    let after = t.slot_status("bomb").unwrap();
    assert_eq!(after.tasks_live, 0, "{after:?}");
}

/// From 7.0 the kernel runs tracepoint programs preemptibly, and skips a program's run on a
/// CPU where another task is preempted inside that same program. The programs that tag and
/// close tasks run where no task can be preempted (`sched_wakeup_new`, a task's final context
/// switch, its free), so thousands of forks and exits leave none of their runs skipped, and
/// every task that started is counted exited, whichever run of another program the kernel
/// skipped. On older kernels nothing is skipped at all, and the counts hold the same.
#[test]
fn forks_and_exits_by_the_thousand_skip_no_run_of_the_programs_that_tag_and_close() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("storm");
    inst.run_detached("storm", &[], "hopper", &m, &[]);
    let t = inst.tracker();
    assert!(wait_for(T, || t.slot_status("storm").unwrap().counts.tasks_started > 2000));
    inst.kill_clean("storm");
    assert!(wait_for(T, || processes_named(&m).is_empty()), "{:?}", processes_named(&m));
    let s = t.slot_status("storm").unwrap();
    assert_eq!(s.tasks_live, 0, "{s:?}");
    assert_eq!(s.counts.tasks_exited, s.counts.tasks_started, "{s:?}");
    let st = tracker::status::status(&inst.paths).unwrap();
    let runs = |name: &str| st.programs.iter().find(|p| p.name == name);
    for name in [programs::FORK, programs::DEAD, programs::FREE] {
        // trk_dead is there only where exits can be skipped (7.0+).
        if let Some(p) = runs(name) {
            assert_eq!(p.skipped.unwrap_or(0), 0, "{name} had runs skipped: {p:?}");
        }
    }
    let exit = runs(programs::EXIT).and_then(|p| p.skipped);
    println!("runs of {} the kernel skipped: {exit:?}", programs::EXIT);
}

#[test]
fn root_job_that_leaves_its_cgroup_is_still_killed() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let t = inst.tracker();
    let mounts = t.cgroups().mounts().clone();
    let roots: Vec<String> = mounts
        .unified
        .iter()
        .chain(mounts.v1.values())
        .map(|p| p.display().to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if roots.is_empty() {
        tracker_tests::skip("no cgroup hierarchy on this machine");
        return;
    }
    let m = marker("leave");
    let mut args: Vec<&str> = roots.iter().map(String::as_str).collect();
    args.retain(|r| !r.ends_with("cpuset"));
    inst.run_detached("leaver", &[], "leave-cgroups", &m, &args);
    assert!(wait_for(T, || processes_named(&m).len() == 1));
    let pid = processes_named(&m)[0];
    // It is out of every slot cgroup...
    assert!(wait_for(T, || !cgroups_of(pid).contains("slot-leaver")), "{}", cgroups_of(pid));
    // ...but not out of the slot.
    assert!(inst.ps("leaver").iter().any(|p| p.pid == pid));
    inst.kill_clean("leaver");
    assert!(wait_for(T, || processes_named(&m).is_empty()));
}

#[test]
fn without_cgroups_tagging_and_kill_work_by_the_tag_alone() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("nocg");
    let out = inst
        .cli()
        .env("TRACKER_CGROUPS", "off")
        .args(["run", "--detach", "--slot", "nocg", "--", ESCAPE, "daemonize", &m])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_for(T, || processes_named(&m).len() == 1));
    let pid = processes_named(&m)[0];
    assert!(!cgroups_of(pid).contains("slot-nocg"), "{}", cgroups_of(pid));
    assert!(inst.ps("nocg").iter().any(|p| p.pid == pid));
    let report = inst.kill_clean("nocg");
    assert_eq!(report["froze"], false, "{report}");
    assert!(wait_for(T, || processes_named(&m).is_empty()));
}

/// Two kills of one instance at once (a batch system's kill while `tracker run` cleans up
/// after its command, or the daemon killing two slots) both have the doom program. Before
/// 6.10 the kernel refuses one program twice on one tracepoint, and the first kill's detach
/// took it from the second. Here a kill under way is held open by taking its lock, as a kill
/// does for its whole length: the slots killed meanwhile keep the program, and it stays
/// attached until the last kill ends.
#[test]
fn kills_at_once_share_the_doom_program_and_the_last_one_detaches_it() {
    let Some(inst) = Instance::start() else { return };
    let link = inst.paths.link_pin(programs::DOOM);
    let no_doom_warning = |v: &serde_json::Value| {
        let w = v["warnings"].as_array().unwrap();
        assert!(w.iter().all(|w| !w.as_str().unwrap().contains("doom")), "{v}");
    };
    for slot in ["a", "b", "c"] {
        inst.cli_ok(&["run", "--detach", "--slot", slot, "--", "sleep", "1000"]);
    }
    let lock = tracker::registry::StateLock::doom_user(&inst.paths).unwrap();

    no_doom_warning(&inst.kill_clean("a"));
    assert!(link.exists(), "the doom program was detached while another kill was under way");
    // Attached by another process (the first kill's): the kernel's EEXIST before 6.10.
    no_doom_warning(&inst.kill_clean("b"));
    assert!(link.exists());

    drop(lock);
    no_doom_warning(&inst.kill_clean("c"));
    assert!(!link.exists(), "the last kill left the doom program attached");
}

#[test]
fn the_doom_program_a_dead_kill_left_attached_goes_at_the_next_load() {
    use tracker::loader::{self, LoadOptions};
    let Some(inst) = Instance::start() else { return };
    let link = inst.paths.link_pin(programs::DOOM);
    inst.cli_ok(&["run", "--detach", "--slot", "a", "--", "sleep", "1000"]);
    // A kill that died before its end: its lock gone, its link still pinned.
    let lock = tracker::registry::StateLock::doom_user(&inst.paths).unwrap();
    inst.kill_clean("a");
    assert!(link.exists());
    // A load leaves the program to a kill under way...
    loader::load(&inst.paths, &LoadOptions::default()).unwrap();
    assert!(link.exists(), "the load detached the doom program from under a kill");
    // ...and detaches it once none is.
    drop(lock);
    let report = loader::load(&inst.paths, &LoadOptions::default()).unwrap();
    assert!(!link.exists(), "the doom program stayed attached: {report:?}");
}
