//! A job running as an ordinary user cannot open, read or change the tracker's maps; one
//! running as root cannot untrack itself (the root-job guard); paths root opens or creates for
//! a job follow no link the job planted; the pin directory is root's alone.
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tracker_common::map_name;
use tracker_tests::{ATTACKER, ESCAPE, Instance, marker, test_dir, tracker_bin, wait_for};

const NOBODY: u32 = 65534;
const T: Duration = Duration::from_secs(20);

/// The kernel ids of the maps pinned under `dir`.
fn map_ids(dir: &std::path::Path) -> Vec<u32> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| aya::maps::MapData::from_pin(e.path()).unwrap().info().unwrap().id())
        .collect()
}

#[test]
fn pins_are_root_only() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let mode = fs::metadata(inst.paths.pin_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "pin directory mode {mode:o}");
    for d in [inst.paths.maps_dir(), inst.paths.links_dir(), inst.paths.progs_dir()] {
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700,
            "{}",
            d.display()
        );
    }
}

#[test]
fn an_unprivileged_job_cannot_reach_the_maps() {
    let Some(inst) = Instance::start() else {
        return;
    };
    let mut args: Vec<String> = [map_name::TASKS, map_name::SLOTS, map_name::COUNTERS]
        .iter()
        .map(|n| inst.paths.map_pin(n).display().to_string())
        .collect();
    args.extend(map_ids(&inst.paths.maps_dir()).iter().map(u32::to_string));
    // The job drops to uid 65534 inside its slot, then tries every way in: by pin path, and
    // by map id (which needs CAP_SYS_ADMIN).
    let m = marker("sec");
    let mut cmd = vec!["run", "--slot", "sec", "--", ESCAPE, "try-maps", &m, "65534"];
    cmd.extend(args.iter().map(String::as_str));
    let out = inst.cli_output(&cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: stdout {stdout:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), args.len(), "{stdout}");
    for line in stdout.lines() {
        assert!(line.contains("denied"), "the job reached a map: {line}");
        assert!(!line.contains("OPENED"), "{line}");
    }
}

/// Run `cmd` as uid/gid 65534 and return its stdout (asserting success).
fn as_nobody(cmd: &mut Command) -> String {
    let out = cmd.uid(NOBODY).gid(NOBODY).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory only root may enter, holding a file only root may read: what a planted link
/// points at.
fn victim() -> (PathBuf, PathBuf) {
    let dir = test_dir("victim");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let file = dir.join("secret");
    fs::write(&file, "precious\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    (dir, file)
}

/// A directory of nobody's, as a job's scratch directory is its user's.
fn nobodys_dir(tag: &str) -> PathBuf {
    let dir = test_dir(tag);
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

/// A failed command: one line on stderr, containing `says`.
fn refused_in_one_line(out: &std::process::Output, says: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(err.contains(says), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
}

#[test]
fn output_and_summary_never_follow_a_planted_link() {
    let Some(inst) = Instance::start() else { return };
    let (victim_dir, secret) = victim();
    let dir = nobodys_dir("plant");
    let link = |name: &str, to: &Path| {
        as_nobody(Command::new("ln").arg("-s").arg(to).arg(dir.join(name)));
        dir.join(name).display().to_string()
    };
    let out_link = link("job.out", &secret);
    let sum_link = link("summary.json", &secret);
    let dir_link = link("sub", &victim_dir);
    let nested = format!("{dir_link}/job.out");
    let runs: [&[&str]; 3] = [
        &[
            "run",
            "--detach",
            "--user",
            "nobody",
            "--output",
            &out_link,
            "--",
            "sh",
            "-c",
            "echo pwned",
        ],
        &["run", "--user", "nobody", "--summary", &sum_link, "--", "true"],
        &[
            "run",
            "--detach",
            "--user",
            "nobody",
            "--output",
            &nested,
            "--",
            "sh",
            "-c",
            "echo pwned",
        ],
    ];
    for args in runs {
        refused_in_one_line(&inst.cli_output(args), "symbolic link");
    }
    assert_eq!(fs::read_to_string(&secret).unwrap(), "precious\n", "the victim was written");
    assert!(!victim_dir.join("job.out").exists(), "a file was made in the victim directory");
    // The same options with plain paths work.
    let real = dir.join("real.out").display().to_string();
    let summary = dir.join("real.json").display().to_string();
    inst.cli_ok(&[
        "run", "--detach", "--user", "nobody", "--output", &real, "--", "sh", "-c", "echo hi",
    ]);
    assert!(wait_for(T, || fs::read_to_string(&real).unwrap_or_default() == "hi\n"));
    inst.cli_ok(&["run", "--user", "nobody", "--summary", &summary, "--", "true"]);
    let usage: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&summary).unwrap()).unwrap();
    assert!(usage["tasks_started"].as_u64().unwrap() >= 1, "{usage}");
}

#[test]
fn a_root_directory_with_planted_links_is_refused() {
    let Some(inst) = Instance::start() else { return };
    let (victim_dir, _) = victim();
    // The job's user owns the root directory it is given, and links its tmp to the victim.
    let root = nobodys_dir("jail");
    as_nobody(Command::new("mkdir").arg("-p").arg(root.join("var/tmp")).arg(root.join("proc")));
    as_nobody(Command::new("ln").arg("-s").arg(&victim_dir).arg(root.join("tmp")));
    // The working directory's ancestors are made inside the root: its top directory (/tmp,
    // or where TMPDIR points, e.g. test-vm's /run/tracker-vm-disk) is a link to the victim there.
    let work = test_dir("work");
    let top = work.components().nth(1).map(|c| c.as_os_str().to_owned()).unwrap();
    if !root.join(&top).exists() {
        as_nobody(Command::new("ln").arg("-s").arg(&victim_dir).arg(root.join(&top)));
    }
    let r = root.display().to_string();
    for extra in [&[][..], &["--private-tmp"], &["--pid-ns"]] {
        let mut args = vec!["run", "--root", &r];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "true"]);
        let out = inst.cli().args(&args).current_dir(&work).output().unwrap();
        refused_in_one_line(&out, "symbolic link");
        assert_eq!(fs::read_dir(&victim_dir).unwrap().count(), 1, "{extra:?}: made in the victim");
    }
    // The root itself swapped for a link is refused the same way.
    let swapped = test_dir("swapped").join("root");
    std::os::unix::fs::symlink(&victim_dir, &swapped).unwrap();
    let out = inst
        .cli()
        .args(["run", "--private-tmp", "--root"])
        .arg(&swapped)
        .args(["--", "true"])
        .current_dir(&work)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(fs::read_dir(&victim_dir).unwrap().count(), 1, "made in the victim");
}

#[test]
fn a_pin_directory_someone_else_made_is_refused() {
    let Some(_inst) = Instance::start() else { return };
    let bpffs = Path::new("/sys/fs/bpf");
    let name = format!("t-{}-squat", std::process::id());
    let dir = bpffs.join(&name);
    let load = || {
        Command::new(tracker_bin()).args(["--instance", name.as_str(), "load"]).output().unwrap()
    };
    // A user made the instance's directory first (bpffs is often mode 1777).
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    refused_in_one_line(&load(), "owned by uid 65534");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "something was pinned in it");
    // Root's, but open to others; or root's with a subdirectory of someone else's.
    std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    refused_in_one_line(&load(), "mode 0755");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(dir.join("links")).unwrap();
    std::os::unix::fs::chown(dir.join("links"), Some(NOBODY), Some(NOBODY)).unwrap();
    refused_in_one_line(&load(), "links");
    assert_eq!(fs::read_dir(dir.join("links")).unwrap().count(), 0);
    fs::remove_dir(dir.join("links")).unwrap();
    let _ = fs::remove_dir_all(dir.join("maps"));
    fs::remove_dir(&dir).unwrap();
}

/// What the attacker's probes said, by name.
fn probes(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn a_root_job_cannot_untrack_itself_or_others() {
    let Some(inst) = Instance::start() else { return };
    let pin = inst.paths.link_pin(
        &fs::read_dir(inst.paths.links_dir())
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .file_name()
            .to_string_lossy(),
    );
    let pins_before = fs::read_dir(inst.paths.links_dir()).unwrap().count();
    // A root process outside every slot, as the daemon or init is.
    let mut outside = Command::new("sleep").arg("300").spawn().unwrap();
    let outside_pid = outside.id().to_string();
    let p = pin.display().to_string();
    let out = inst.cli_ok(&[
        "run",
        "--slot",
        "rootjob",
        "--",
        ATTACKER,
        "root-escapes",
        &p,
        &p,
        &outside_pid,
    ]);
    let got = probes(&out);
    eprintln!("{out}");
    for (probe, want) in [
        ("obj_get", "denied EPERM"),
        ("prog_load", "denied EPERM"),
        ("mount_bpffs", "denied EPERM"),
        ("fsopen_bpffs", "denied EPERM"),
        ("open_tree", "denied EPERM"),
        ("x32_mount", "denied EPERM"),
        ("finit_module", "denied EPERM"),
        ("delete_module", "denied EPERM"),
        ("kexec_file_load", "denied EPERM"),
        ("ptrace_outside", "denied EPERM"),
        // No bpffs in its mount namespace, and no way into another process's.
        ("unlink_pin", "denied ENOENT"),
        ("proc_root_outside", "denied EACCES"),
    ] {
        assert_eq!(got.get(probe).map(String::as_str), Some(want), "{probe}: {out}");
    }
    // i386's bpf is denied too, unless the kernel runs no i386 code at all.
    let i386 = got.get("i386_bpf").unwrap();
    assert!(i386 == "denied EPERM" || i386.starts_with("no-ia32"), "i386_bpf: {i386}");
    assert_eq!(fs::read_dir(inst.paths.links_dir()).unwrap().count(), pins_before);
    assert!(pin.exists(), "the pin is gone");

    // Opting out gives the job root's full power back (here: the pin opens, BPF loads).
    let out = inst.cli_ok(&[
        "run",
        "--no-root-guard",
        "--",
        ATTACKER,
        "root-escapes",
        &p,
        "/nonexistent",
        &outside_pid,
    ]);
    let got = probes(&out);
    assert_eq!(got.get("obj_get").map(String::as_str), Some("ok"), "{out}");
    assert_eq!(got.get("prog_load").map(String::as_str), Some("ok"), "{out}");
    assert_eq!(got.get("proc_root_outside").map(String::as_str), Some("ok"), "{out}");

    // An ordinary job runs with no filter at all; a root job with one.
    let seccomp = |args: &[&str]| {
        let mut a = vec!["run"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--", "grep", "^Seccomp:", "/proc/self/status"]);
        inst.cli_ok(&a).split_whitespace().nth(1).unwrap().to_owned()
    };
    assert_eq!(seccomp(&["--user", "nobody"]), "0");
    assert_eq!(seccomp(&[]), "2");
    assert_eq!(seccomp(&["--no-root-guard"]), "0");
    // The library's spawn guards a root command the same way.
    inst.cli_ok(&["create", "lib"]);
    let mut cmd = Command::new("grep");
    cmd.args(["^Seccomp:", "/proc/self/status"]).stdout(std::process::Stdio::piped());
    let out = inst.tracker().spawn("lib", &mut cmd, false).unwrap().wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1), Some("2"));
    let _ = outside.kill();
    let _ = outside.wait();
}
