//! Slots, pins and programs over their life: run, adopt, kill, release; the tracker process
//! dying; upgrading the programs; unloading.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use tracker::{LoadOptions, loader};
use tracker_tests::{ESCAPE, Instance, marker, processes_named, wait_for};

const T: Duration = Duration::from_secs(10);

#[test]
fn run_kills_the_leftovers_and_exits_with_the_commands_status() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("left");
    let script = format!("(setsid {ESCAPE} sleep {m} &); {ESCAPE} daemonize {m}; exit 7");
    let out = inst.cli_output(&["run", "--slot", "left", "--", "bash", "-c", &script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("killed 2 leftover process(es)"), "{stderr}");
    assert!(processes_named(&m).is_empty(), "{:?}", processes_named(&m));
    // The slot was released with the command.
    assert!(inst.tracker().slots().unwrap().is_empty());
    // Killed by a signal: 128 + signal, as a shell says.
    let out = inst.cli_output(&["run", "--", "bash", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
}

#[test]
fn the_tracker_process_is_never_in_the_slot() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("self");
    let mut child = inst
        .cli()
        .args(["run", "--slot", "own", "--", ESCAPE, "sleep", &m])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(T, || processes_named(&m).len() == 1));
    let ps: BTreeSet<u32> = inst.ps("own").iter().map(|p| p.pid).collect();
    assert_eq!(ps, processes_named(&m).into_iter().collect(), "only the command is in the slot");
    assert!(!ps.contains(&child.id()));
    inst.kill_clean("own");
    child.wait().unwrap();
    // A process adopting its own parent (a Slurm task does `tracker adopt JOB $PPID`) tags the
    // parent and never itself.
    inst.cli_ok(&["create", "parent"]);
    let m2 = marker("par");
    let script = format!(
        "{} adopt parent $$ >/dev/null && exec {ESCAPE} sleep {m2}",
        tracker_tests::tracker_bin().display()
    );
    let mut sh = Command::new("bash")
        .env("TRACKER_INSTANCE", &inst.name)
        .args(["-c", &script])
        .spawn()
        .unwrap();
    assert!(wait_for(T, || processes_named(&m2).len() == 1));
    let ps = inst.ps("parent");
    assert_eq!(ps.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![sh.id()], "{ps:?}");
    let s = inst.tracker().slot_status("parent").unwrap();
    assert_eq!(s.counts.tasks_started, 1, "only the shell was tagged: {s:?}");
    inst.kill_clean("parent");
    sh.wait().unwrap();
}

#[test]
fn adopt_takes_a_process_and_its_descendants() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("adopt");
    let mut tree = Command::new("bash")
        .args(["-c", &format!("{ESCAPE} sleep {m} & {ESCAPE} sleep {m} & wait")])
        .spawn()
        .unwrap();
    assert!(wait_for(T, || processes_named(&m).len() == 2));
    inst.cli_ok(&["create", "adopted"]);
    let out = inst.cli_ok(&["adopt", "adopted", &tree.id().to_string()]);
    assert!(out.contains("3 process(es)"), "{out}");
    let ps: BTreeSet<u32> = inst.ps("adopted").iter().map(|p| p.pid).collect();
    let want: BTreeSet<u32> = processes_named(&m).into_iter().chain([tree.id()]).collect();
    assert_eq!(ps, want);
    // A process already in a slot cannot be adopted into another.
    inst.cli_ok(&["create", "other"]);
    let out = inst.cli_output(&["adopt", "other", &tree.id().to_string()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in slot \"adopted\""));
    inst.kill_clean("adopted");
    tree.wait().unwrap();
    assert!(processes_named(&m).is_empty());
}

/// The slot's own cgroup holds only the slot's processes and what root put there: kill takes
/// all of it, tagged or not (the report names what was untagged). A process outside the
/// slot's cgroup and tags is never signalled.
#[test]
fn kill_takes_the_slots_cgroup_whole_and_nothing_outside_it() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let t = inst.tracker();
    let m = marker("job");
    inst.run_detached("innocent", &[], "sleep", &m, &[]);
    let rec = t.slot("innocent").unwrap();
    let Some(v2) = rec.cgroups.unified.clone() else {
        tracker_tests::skip("no cgroup2 directory for the slot");
        return;
    };
    // Root puts an unrelated process into the slot's cgroup; another stays outside.
    let mut stranger = Command::new(ESCAPE).args(["sleep", &marker("strange")]).spawn().unwrap();
    let mut bystander = Command::new(ESCAPE).args(["sleep", &marker("bystand")]).spawn().unwrap();
    fs::write(v2.join("cgroup.procs"), stranger.id().to_string()).unwrap();
    let report = inst.kill_clean("innocent");
    assert!(report["warnings"].to_string().contains(&stranger.id().to_string()), "{report}");
    assert!(processes_named(&m).is_empty());
    let status = tracker_tests::wait_exit(&mut stranger, T);
    assert!(status.is_some(), "the process in the slot's cgroup survived the kill: {report}");
    assert!(bystander.try_wait().unwrap().is_none(), "a process outside the slot was signalled");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn slots_survive_the_tracker_process_being_killed() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("surv");
    // A job that forks a new daemon once the tracker is gone (the test says when: a file).
    let go = tracker_tests::test_dir("surv").join("go");
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.1; done; ({ESCAPE} daemonize {m}); exec {ESCAPE} sleep {m}",
        go = go.display()
    );
    let mut run = inst
        .cli()
        .args(["run", "--slot", "surv", "--", "bash", "-c", &script])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Until the command runs, the tracker still holds it between fork and exec; the slot
    // itself appears only once `tracker run` has made it.
    assert!(wait_for(T, || {
        inst.ps_if_exists("surv").is_some_and(|ps| ps.iter().any(|p| p.comm == "bash"))
    }));
    // SIGKILL: no cleanup of any kind runs.
    run.kill().unwrap();
    run.wait().unwrap();
    std::fs::write(&go, "").unwrap();
    assert!(wait_for(T, || processes_named(&m).len() == 2));
    let ps: BTreeSet<u32> = inst.ps("surv").iter().map(|p| p.pid).collect();
    assert_eq!(ps, processes_named(&m).into_iter().collect::<BTreeSet<_>>());
    let status = inst.tracker().slot_status("surv").unwrap();
    assert_eq!(status.tasks_live, 2);
    inst.kill_clean("surv");
    assert!(processes_named(&m).is_empty());
}

#[test]
fn loading_again_upgrades_without_losing_slots_or_counting_twice() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("upg");
    inst.run_detached("upg", &[], "sleep", &m, &[]);
    let t = inst.tracker();
    let before = t.slot_status("upg").unwrap();
    let report = loader::load(&inst.paths, &LoadOptions::default()).unwrap();
    assert_eq!(report.action, loader::LoadAction::Upgraded);
    assert_eq!(report.generation, 2);
    assert_eq!(report.slots_kept, 1);
    // Still tracked; a fork after the upgrade is counted exactly once.
    let pid = processes_named(&m)[0];
    assert!(inst.ps("upg").iter().any(|p| p.pid == pid));
    inst.cli_ok(&["create", "upg2"]);
    let script = format!("{ESCAPE} daemonize {m}x; true");
    inst.cli_ok(&["run", "--detach", "--slot", "upg3", "--", "bash", "-c", &script]);
    assert!(wait_for(T, || processes_named(&format!("{m}x")).len() == 1));
    let s3 = t.slot_status("upg3").unwrap();
    // bash, the daemonize parent, its middle child and the daemon: 4 tasks, once each.
    assert_eq!(s3.counts.tasks_started, 4, "{s3:?}");
    let after = t.slot_status("upg").unwrap();
    assert_eq!(after.tasks_live, before.tasks_live);
    // Exactly one set of links is attached.
    let st = tracker::status::status(&inst.paths).unwrap();
    assert_eq!(st.generation, 2);
    assert!(st.programs.iter().all(|p| p.ready), "{:?}", st.programs);
    inst.kill_clean("upg");
    inst.kill_clean("upg3");
}

#[test]
fn release_and_unload_refuse_live_slots_and_then_leave_nothing() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("rel");
    inst.run_detached("rel", &[], "sleep", &m, &[]);
    let cg = inst.tracker().slot("rel").unwrap().cgroups;
    let out = inst.cli_output(&["release", "rel"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("still has 1 live task"));
    let out = inst.cli_output(&["unload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("live tasks"));
    inst.kill_clean("rel");
    // The record outlives its processes until it is released.
    let slots = inst.cli_ok(&["slots", "--json"]);
    assert!(slots.contains("\"rel\""), "{slots}");
    inst.cli_ok(&["release", "rel"]);
    for dir in cg.dirs() {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    inst.cli_ok(&["unload"]);
    assert!(!inst.paths.pin_dir().exists());
    // Unloading again is harmless.
    assert!(inst.cli_ok(&["unload"]).contains("was not loaded"));
}

#[test]
fn kill_reports_what_it_did() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let m = marker("rep");
    inst.run_detached("rep", &[], "threads", &m, &["2"]);
    assert!(wait_for(T, || inst.ps("rep").len() == 1));
    let out = inst.cli_ok(&["kill", "rep"]);
    assert!(out.contains("killed 1 process(es) (3 task(s))"), "{out}");
    let v = inst.kill_clean("rep");
    assert_eq!(v["killed"], 0);
    assert!(v["elapsed_ms"].as_f64().is_some());
}

#[test]
fn status_before_any_load_sees_the_kernels_cgroup_features() {
    // An instance that was never loaded: its cgroup directory does not exist, which must not
    // make cgroup.freeze and cgroup.kill look absent (the root cgroup has neither file).
    let name = format!("t-{}-never", std::process::id());
    let out = Command::new(tracker_tests::tracker_bin())
        .args(["status", "--json"])
        .env("TRACKER_INSTANCE", &name)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["loaded"], false);
    let feature = |n: &str| {
        st["features"].as_array().unwrap().iter().find(|f| f["name"] == n).cloned().unwrap()
    };
    if feature("cgroup2")["present"] != true {
        return tracker_tests::skip("no cgroup2 hierarchy");
    }
    // cgroup.freeze is 5.2+ (every kernel the tracker loads on has it), cgroup.kill 5.14+.
    assert_eq!(feature("cgroup.freeze")["present"], true, "{st}");
    let kill = tracker_tests::kernel_release() >= (5, 14);
    assert_eq!(feature("cgroup.kill")["present"], kill, "{st}");
    // The kernel's differences are shown whether or not anything is loaded.
    assert!(st["features"].to_string().contains("sched_process_exit group_dead"), "{st}");
}

/// An upgrade from a version that kept no count of exited tasks awaiting their free (stood in
/// for by removing the count's pin): a task that exited before it, and is freed after it, is
/// not in the new count, so the free program must look at every free from then on.
#[test]
fn an_upgrade_from_a_version_without_the_pending_free_count_misses_no_free() {
    let Some(inst) = Instance::start() else {
        return;
    };
    // A child that exits at once, and that its parent reaps only when told: until then the
    // child has exited and is not freed.
    let m = marker("zomb");
    let mut job = inst
        .cli()
        .args(["run", "--keep", "--slot", "zombie", "--", ESCAPE, "reap-on-input", &m])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let t = inst.tracker();
    let counts = || t.slot_status("zombie").map(|s| s.counts);
    assert!(
        wait_for(T, || counts().is_ok_and(|c| c.tasks_exited == 1 && c.tasks_finished == 0)),
        "{:?}",
        counts()
    );
    fs::remove_file(inst.paths.map_pin(tracker_common::map_name::PENDING_FREE)).unwrap();
    let report = loader::load(&inst.paths, &LoadOptions::default()).unwrap();
    assert_eq!(report.action, loader::LoadAction::Upgraded);
    let st = tracker::status::status(&inst.paths).unwrap();
    assert_eq!(st.pending_frees, None, "the count cannot be known after such an upgrade");
    // The parent reaps the child and exits: both are freed under the new programs.
    job.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(job.wait().unwrap().success());
    let done = || counts().is_ok_and(|c| c.tasks_exited == 2 && c.tasks_finished == 2);
    assert!(wait_for(T, done), "{:?}", counts());
}
