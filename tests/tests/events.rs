//! The event stream: what the kernel saw of a slot, in order, numbered, with nothing lost
//! silently.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tracker::events::{EventKind, WatchEvent, Watcher};
use tracker_tests::{ESCAPE, Instance, marker, processes_named, wait_for};

/// Collect events until `done` holds for the list, or 20 s pass.
fn collect(w: &mut Watcher, mut done: impl FnMut(&[WatchEvent]) -> bool) -> Vec<WatchEvent> {
    let mut all = vec![];
    let deadline = Instant::now() + tracker_tests::scaled(Duration::from_secs(20));
    while !done(&all) && Instant::now() < deadline {
        all.extend(w.wait(Some(Duration::from_millis(100))).unwrap());
    }
    all
}

#[test]
fn a_jobs_life_is_reported_in_order_and_ends_with_slot_empty() {
    let Some(inst) = Instance::start() else { return };
    let mut w = Watcher::open(&inst.paths).unwrap();
    // One reader at a time.
    assert!(matches!(Watcher::open(&inst.paths), Err(tracker::Error::EventsBusy)));
    let m = marker("ev");
    let script = format!("{ESCAPE} daemonize {m}; exit 3");
    inst.cli_ok(&["run", "--detach", "--slot", "ev", "--", "bash", "-c", &script]);
    assert!(wait_for(Duration::from_secs(10), || processes_named(&m).len() == 1));
    let daemon = processes_named(&m)[0];
    inst.kill_clean("ev");
    let events = collect(&mut w, |e| e.iter().any(|e| e.kind == EventKind::SlotEmpty));
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert!(events.iter().all(|e| e.slot == "ev"), "{events:?}");
    // Numbered without gaps, and no loss.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "{events:?}");
    }
    assert!(!kinds.contains(&EventKind::Lost), "{kinds:?}");
    assert!(kinds.contains(&EventKind::Exec));
    // The daemon's birth (fork) and death (exit by SIGKILL) are both there.
    assert!(events.iter().any(|e| e.kind == EventKind::Fork && e.pid == daemon), "{events:?}");
    let death = events.iter().find(|e| e.kind == EventKind::Exit && e.pid == daemon).unwrap();
    assert_eq!(death.exit_code & 0x7f, 9, "{death:?}");
    assert_eq!(kinds.last(), Some(&EventKind::SlotEmpty), "{kinds:?}");
}

#[test]
fn a_task_leaving_its_slots_cgroup_is_reported() {
    let Some(inst) = Instance::start() else { return };
    let Some(v2) = inst.tracker().cgroups().mounts().unified.clone() else {
        tracker_tests::skip("no cgroup2 hierarchy");
        return;
    };
    let mut w = Watcher::open(&inst.paths).unwrap();
    let m = marker("evl");
    inst.run_detached("leave", &[], "leave-cgroups", &m, &[v2.to_str().unwrap()]);
    let events = collect(&mut w, |e| e.iter().any(|e| e.kind == EventKind::LeftCgroup));
    let left = events.iter().find(|e| e.kind == EventKind::LeftCgroup).unwrap();
    assert_eq!(left.slot, "leave");
    assert_eq!(Some(left.pid), processes_named(&m).first().copied(), "{events:?}");
    inst.kill_clean("leave");
}
