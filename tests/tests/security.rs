//! A job running as an ordinary user cannot open, read or change the tracker's maps.
#![allow(clippy::unwrap_used)]

use std::{fs, os::unix::fs::PermissionsExt as _};

use tracker_common::map_name;
use tracker_tests::{ESCAPE, Instance, marker};

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
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().count(), args.len(), "{stdout}");
    for line in stdout.lines() {
        assert!(line.contains("denied"), "the job reached a map: {line}");
        assert!(!line.contains("OPENED"), "{line}");
    }
}
