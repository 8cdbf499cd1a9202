//! Bad input gets one clear line and a non-zero exit, never a panic, and changes nothing.
#![allow(clippy::unwrap_used)]

use std::{os::unix::process::CommandExt as _, process::Output};

use tracker_tests::{ESCAPE, Instance, marker, processes_named, tracker_bin, wait_for};

/// Assert a failed command printed exactly one line, starting `tracker: `, containing `want`.
fn one_line_error(out: &Output, want: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("tracker: "), "{stderr}");
    assert!(stderr.contains(want), "{stderr:?} lacks {want:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_and_duplicate_slots() {
    let Some(inst) = Instance::start() else {
        return;
    };
    for args in
        [&["ps", "nope"][..], &["kill", "nope"], &["release", "nope"], &["adopt", "nope", "1"]]
    {
        one_line_error(&inst.cli_output(args), "no slot named \"nope\"");
    }
    inst.cli_ok(&["create", "dup"]);
    one_line_error(&inst.cli_output(&["create", "dup"]), "a slot named \"dup\" exists already");
    one_line_error(&inst.cli_output(&["run", "--slot", "dup", "--", "true"]), "exists already");
    one_line_error(&inst.cli_output(&["create", "../etc"]), "invalid slot name");
    // Nothing changed: still exactly the one slot.
    assert_eq!(inst.tracker().slots().unwrap().len(), 1);
}

#[test]
fn adopt_of_dead_missing_or_special_pids() {
    let Some(inst) = Instance::start() else {
        return;
    };
    inst.cli_ok(&["create", "a"]);
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    one_line_error(&inst.cli_output(&["adopt", "a", &dead.to_string()]), "no process with pid");
    one_line_error(&inst.cli_output(&["adopt", "a", "4194304"]), "no process with pid 4194304");
    one_line_error(&inst.cli_output(&["adopt", "a", "1"]), "init");
    one_line_error(&inst.cli_output(&["adopt", "a", "2"]), "kernel thread");
    one_line_error(&inst.cli_output(&["adopt", "a", "x"]), "invalid value");
    assert!(inst.ps("a").is_empty());
}

#[test]
fn a_command_that_cannot_start_leaves_no_slot() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let out = inst.cli_output(&["run", "--slot", "ghost", "--", "/nonexistent/cmd"]);
    one_line_error(&out, "/nonexistent/cmd");
    let out = inst.cli_output(&["run", "--detach", "--slot", "ghost", "--", "/nonexistent/cmd"]);
    one_line_error(&out, "/nonexistent/cmd");
    assert!(inst.tracker().slots().unwrap().is_empty());
}

#[test]
fn not_root() {
    let Some(inst) = Instance::start() else {
        return;
    };
    for args in [&["slots"][..], &["load"], &["unload"], &["kill", "x"]] {
        let out = inst.cli().args(args).uid(65534).gid(65534).output().unwrap();
        one_line_error(&out, "must run as root");
    }
}

#[test]
fn missing_bpffs_btf_or_load() {
    let dir = std::env::temp_dir();
    let out = std::process::Command::new(tracker_bin())
        .args(["--instance", "t-bpffs", "load"])
        .env("TRACKER_BPFFS", &dir)
        .output()
        .unwrap();
    if out.status.code().is_some() && String::from_utf8_lossy(&out.stderr).contains("root") {
        tracker_tests::skip("not root");
        return;
    }
    one_line_error(&out, &format!("bpffs is not mounted at {}", dir.display()));
    let out = std::process::Command::new(tracker_bin())
        .args(["--instance", "t-btf", "load"])
        .env("TRACKER_BTF", "/nonexistent/vmlinux")
        .output()
        .unwrap();
    one_line_error(&out, "this kernel has no BTF");
    assert!(!std::path::Path::new("/sys/fs/bpf/t-btf").exists());
    let out = std::process::Command::new(tracker_bin())
        .args(["--instance", "t-never-loaded", "slots"])
        .output()
        .unwrap();
    one_line_error(&out, "the tracker is not loaded");
    let out = std::process::Command::new(tracker_bin())
        .args(["--instance", "Bad/Name", "slots"])
        .output()
        .unwrap();
    one_line_error(&out, "invalid instance name");
}

#[test]
fn kill_of_an_empty_slot_is_harmless() {
    let Some(inst) = Instance::start() else {
        return;
    };
    inst.cli_ok(&["create", "empty"]);
    let v = inst.kill_clean("empty");
    assert_eq!(v["killed"], 0);
    let m = marker("after");
    // The slot can still be used after a kill.
    inst.cli_ok(&["run", "--detach", "--slot", "again", "--", ESCAPE, "sleep", &m]);
    assert!(wait_for(std::time::Duration::from_secs(5), || processes_named(&m).len() == 1));
    inst.kill_clean("again");
}

#[test]
fn a_bad_daemon_configuration_is_one_line_and_nothing_starts() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let dir = tracker_tests::test_dir("badcfg");
    let sock = dir.join("s.sock");
    for (text, want) in [
        (format!("[daemon]\nsokcet = \"{}\"\n", sock.display()), "unknown field `sokcet`"),
        (
            format!("[daemon]\nsocket = \"{}\"\ngroup = \"no-such-group-x\"\n", sock.display()),
            "no group",
        ),
        (
            format!("[daemon]\nsocket = \"{}\"\nmetrics_listen = \"nowhere\"\n", sock.display()),
            "not an address",
        ),
    ] {
        let cfg = dir.join("t.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = inst.cli().args(["daemon", "--config"]).arg(&cfg).output().unwrap();
        one_line_error(&out, want);
        assert!(!sock.exists(), "a socket was made");
    }
    one_line_error(
        &inst.cli().args(["daemon", "--config"]).arg(dir.join("missing.toml")).output().unwrap(),
        "missing.toml",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let Some(inst) = Instance::start() else {
        return;
    };
    // `status` prints dozens of lines; `head -1` closes the pipe after the first.
    let script = format!("'{}' status | head -1 >/dev/null", tracker_bin().display());
    let out = inst.cli_sh(&script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}
