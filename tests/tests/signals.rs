//! Signals to a whole slot, and freeze/thaw, observed from outside: what they reach, and
//! what they leave alone.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeSet, fs, process::Command, thread, time::Duration};

use tracker_tests::{ESCAPE, Instance, cgroups_of, marker, processes_named, wait_for};

const T: Duration = Duration::from_secs(10);

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn state(pid: u32) -> char {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')').next().unwrap().trim_start().chars().next().unwrap()
}

#[test]
fn freeze_stops_every_task_of_the_slot_even_outside_its_cgroup_and_thaw_resumes() {
    let Some(inst) = Instance::start() else { return };
    let roots: BTreeSet<String> = {
        let m = inst.tracker().cgroups().mounts().clone();
        m.unified.iter().chain(m.v1.values()).map(|p| p.display().to_string()).collect()
    };
    let spinner = marker("frzspin");
    let leaver = marker("frzleave");
    let roots: Vec<&str> =
        roots.iter().map(String::as_str).filter(|r| !r.ends_with("cpuset")).collect();
    let script = format!(
        "{ESCAPE} spin {spinner} 120 & {ESCAPE} leave-cgroups {leaver} {} & wait",
        roots.join(" ")
    );
    inst.cli_ok(&["run", "--detach", "--slot", "frz", "--", "bash", "-c", &script]);
    assert!(wait_for(T, || processes_named(&spinner).len() == 1));
    assert!(wait_for(T, || processes_named(&leaver).len() == 1));
    let (spin, leave) = (processes_named(&spinner)[0], processes_named(&leaver)[0]);
    if !roots.is_empty() {
        assert!(wait_for(T, || !cgroups_of(leave).contains("slot-frz")), "{}", cgroups_of(leave));
    }

    let out = inst.cli_ok(&["freeze", "frz"]);
    assert!(out.contains("SIGSTOP to 1 process(es) outside the cgroup"), "{out}");
    assert!(inst.cli_ok(&["slots"]).contains("frozen"));
    let before = cpu_ticks(spin);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(cpu_ticks(spin), before, "the spinner ran while frozen");
    assert!(wait_for(T, || state(leave) == 'T'), "the process outside the cgroup runs on");

    let out = inst.cli_ok(&["thaw", "frz"]);
    assert!(out.contains("SIGCONT to 1 process(es)"), "{out}");
    assert!(wait_for(T, || cpu_ticks(spin) > before), "the spinner did not resume");
    assert!(wait_for(T, || state(leave) != 'T'), "the process outside is still stopped");
    assert!(!inst.cli_ok(&["slots"]).contains("frozen"));
    inst.kill_clean("frz");
}

#[test]
fn a_signal_reaches_every_process_of_the_slot_and_nothing_else() {
    let Some(inst) = Instance::start() else { return };
    let m = marker("sig");
    inst.run_detached("sig", &[], "daemonize", &m, &[]);
    assert!(wait_for(T, || processes_named(&m).len() == 1));
    // The same program, the same name, not in the slot.
    let mut stranger = Command::new(ESCAPE).args(["sleep", &m]).spawn().unwrap();
    assert!(wait_for(T, || processes_named(&m).len() == 2));

    let out = inst.cli_ok(&["signal", "sig", "TERM"]);
    assert!(out.contains("sent to 1 process(es)"), "{out}");
    assert!(wait_for(T, || processes_named(&m) == vec![stranger.id()]));
    assert!(stranger.try_wait().unwrap().is_none(), "the untagged process was signalled");
    stranger.kill().unwrap();
    stranger.wait().unwrap();

    for (args, code, says) in [
        (vec!["signal", "sig", "NOPE"], 2, "not a signal"),
        (vec!["signal", "sig", "0"], 2, "not a signal"),
        (vec!["signal", "no-such-slot", "TERM"], 3, "no slot named"),
        (vec!["freeze", "no-such-slot"], 3, "no slot named"),
    ] {
        let out = inst.cli_output(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says) && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
}
