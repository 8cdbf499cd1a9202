//! Tables for people, JSON for scripts.
use std::io::Write as _;

use anyhow::Result;
use serde::Serialize;
use tracker::{
    KillReport, LoadReport, Paths, ProcessInfo, RunOutcome, SlotStatus, SuspendReport,
    UnloadReport, Usage, loader::LoadAction, status::Status,
};
use tracker_common::SlotCounts;

pub fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Print rows as left-aligned columns; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let s: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| if i == last { c } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// "tracker", or "tracker (instance X)" for another instance than the default.
fn who(instance: &str) -> String {
    if instance == tracker::paths::DEFAULT_INSTANCE {
        "tracker".into()
    } else {
        format!("tracker (instance {instance})")
    }
}

pub fn warnings(w: &[String]) {
    for w in w {
        eprintln!("tracker: warning: {w}");
    }
}

pub fn load(report: &LoadReport, st: &Status) {
    let what = match report.action {
        LoadAction::Fresh => "loaded".to_owned(),
        LoadAction::Upgraded => format!("upgraded, {} slot(s) kept", report.slots_kept),
    };
    println!("{}: {what} (generation {})", who(&st.instance), report.generation);
    warnings(&report.warnings);
    status_body(st);
}

pub fn status(st: &Status, json: bool) -> Result<()> {
    if json {
        return print_json(st);
    }
    if st.loaded {
        println!("{}: loaded (generation {})", who(&st.instance), st.generation);
    } else {
        println!("{}: not loaded", who(&st.instance));
    }
    status_body(st);
    Ok(())
}

fn status_body(st: &Status) {
    println!("pinned under {} (root only)", st.pin_dir.display());
    if st.loaded {
        println!(
            "capacity: {} tasks (pid_max), {} slots; {} slot(s) in use; tag failures: {}; \
             pid_max raises refused: {}",
            st.max_tasks,
            st.max_slots.saturating_sub(1),
            st.slots,
            st.tag_failures,
            st.pid_max_refused
        );
        if let Some(n) = st.pending_frees {
            println!("exited tasks not yet freed (their final CPU time comes then): {n}");
        }
    }
    println!("programs:");
    let rows: Vec<Vec<String>> = st
        .programs
        .iter()
        .map(|p| {
            let state = match (p.ready, p.on_demand, p.fallback) {
                (true, false, None) => "attached".to_owned(),
                (true, false, Some((function, _))) => format!("attached as {function}"),
                (true, true, _) if p.attached_now => "attached (on demand)".to_owned(),
                (true, true, _) => "ready (attached on demand)".to_owned(),
                (false, ..) => "MISSING".to_owned(),
            };
            // Never silent: a skipped run of a tagging program is a task the kernel did not
            // show it (the README's "Kernels" says which programs may be skipped, and what
            // covers for them).
            let state = match p.skipped {
                Some(n) if n > 0 => format!("{state}; {n} runs skipped by the kernel"),
                _ => state,
            };
            let purpose = match p.fallback {
                Some((_, difference)) => format!("{}; {difference}", p.purpose),
                None => p.purpose.to_owned(),
            };
            vec![format!("  {}", p.name), p.hook.clone(), state, purpose]
        })
        .collect();
    table(&["  NAME", "HOOK", "STATE", "PURPOSE"], &rows);
    if let Some(parent) = &st.cgroup_parent {
        match &st.cgroup_delegated {
            Some(d) => println!(
                "slot cgroups under {} (in {}, delegated by systemd{})",
                parent.display(),
                d.display(),
                st.cgroup_scope
                    .as_ref()
                    .map(|u| format!(": the tracker's scope {u}"))
                    .unwrap_or_default()
            ),
            None => println!("slot cgroups under {}", parent.display()),
        }
    }
    println!("kernel features (cgroup layout: {}):", st.cgroup_layout);
    let rows: Vec<Vec<String>> = st
        .features
        .iter()
        .map(|f| {
            vec![
                format!("  {}", f.name),
                if f.present { "yes" } else { "no" }.into(),
                f.detail.clone(),
            ]
        })
        .collect();
    table(&["  FEATURE", "FOUND", "DETAIL"], &rows);
}

pub fn unload(paths: &Paths, r: &UnloadReport) {
    warnings(&r.warnings);
    if r.was_loaded {
        println!(
            "{}: unloaded; {} slot(s) forgotten, every pin removed",
            who(paths.instance()),
            r.slots_forgotten
        );
    } else {
        println!("{}: was not loaded", who(paths.instance()));
    }
}

pub fn slots(slots: &[SlotStatus], json: bool) -> Result<()> {
    if json {
        return print_json(slots);
    }
    let rows: Vec<Vec<String>> = slots
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.id.to_string(),
                s.tasks_live.to_string(),
                s.tasks_peak.to_string(),
                s.counts.tasks_started.to_string(),
                s.counts.execs.to_string(),
                format!("{:.2}s", s.cpu_seconds),
                bytes(s.memory_current_bytes),
                bytes(s.memory_peak_bytes),
                s.owner_uid.to_string(),
                if s.doomed {
                    "doomed"
                } else if s.suspended {
                    "frozen"
                } else {
                    ""
                }
                .into(),
            ]
        })
        .collect();
    table(
        &[
            "SLOT", "ID", "TASKS", "PEAK", "STARTED", "EXECS", "CPU", "MEM", "MEM PEAK", "OWNER",
            "STATE",
        ],
        &rows,
    );
    Ok(())
}

pub fn processes(procs: &[ProcessInfo], json: bool) -> Result<()> {
    if json {
        return print_json(procs);
    }
    let now = boottime_ns();
    let any_ns = procs.iter().any(|p| p.ns_pid.is_some());
    let rows: Vec<Vec<String>> = procs
        .iter()
        .map(|p| {
            let cmd =
                if p.cmdline.is_empty() { format!("[{}]", p.comm) } else { p.cmdline.join(" ") };
            let mut row = vec![
                p.pid.to_string(),
                p.ppid.to_string(),
                elapsed(now.saturating_sub(p.start_time_ns)),
                p.state.clone(),
                p.threads.to_string(),
                p.uid.to_string(),
                cmd,
            ];
            if any_ns {
                row.insert(1, p.ns_pid.map_or_else(|| "-".into(), |n| n.to_string()));
            }
            row
        })
        .collect();
    let mut head = vec!["PID", "PPID", "ELAPSED", "S", "THR", "UID", "COMMAND"];
    if any_ns {
        head.insert(1, "NSPID");
    }
    table(&head, &rows);
    Ok(())
}

pub fn kill(r: &KillReport, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    warnings(&r.warnings);
    println!(
        "slot {}: killed {} process(es) ({} task(s)) in {:.1} ms{}",
        r.slot,
        r.killed,
        r.tasks_killed,
        r.elapsed_ms,
        if r.froze { ", frozen first" } else { "" }
    );
    survivors(r);
    Ok(())
}

fn survivors(r: &KillReport) {
    for s in &r.survivors {
        println!(
            "survivor: pid {} (process {}) {} state {} in {}",
            s.pid,
            s.tgid,
            s.comm,
            s.state,
            if s.wchan.is_empty() { "?" } else { &s.wchan }
        );
        for frame in &s.stack {
            println!("    {frame}");
        }
    }
}

pub fn suspend(slot: &str, r: &SuspendReport, freeze: bool) {
    let (cg, sig) = if freeze { ("frozen", "SIGSTOP") } else { ("thawed", "SIGCONT") };
    let how = if r.cgroup { format!("cgroup {cg}") } else { "no freezer".to_owned() };
    println!("slot {slot}: {how}; {sig} to {} process(es) outside the cgroup", r.processes);
}

pub fn run_outcome(o: &RunOutcome) {
    let l = &o.leftovers;
    eprintln!(
        "tracker: slot {}: command exited with status {}; killed {} leftover process(es) in {:.1} ms",
        o.slot, o.exit_code, l.killed, l.elapsed_ms
    );
    let u = &o.usage;
    if o.killed_for_memory {
        eprintln!(
            "tracker: slot {}: KILLED FOR MEMORY: it went over its memory limit (peak {}); \
             the whole slot was killed",
            o.slot,
            bytes(u.memory_peak_bytes)
        );
    }
    eprintln!(
        "tracker: usage of the whole tree ({} processes, {} execs):",
        u.counts.processes_started, u.counts.execs
    );
    for line in usage_lines(u) {
        eprintln!("\t{line}");
    }
    warnings(&l.warnings);
    if !l.survivors.is_empty() {
        eprintln!("tracker: slot {} still has {} task(s); it is kept:", o.slot, l.survivors.len());
        survivors(l);
    }
}

pub fn event(e: &tracker::events::WatchEvent, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, e)?;
        writeln!(out)?;
    } else {
        use tracker::events::EventKind as K;
        let what = match e.kind {
            K::Fork => format!("fork {} (by {}, {})", e.pid, e.parent, e.comm),
            K::Exec => format!("exec {} {}", e.pid, e.comm),
            K::Exit => format!("exit {} {} status {:#x}", e.pid, e.comm, e.exit_code),
            K::LeftCgroup => {
                format!("left its cgroup: {} {} -> cgroup {}", e.pid, e.comm, e.cgroup_id)
            }
            K::Oom => format!("OOM killer chose {} {}", e.pid, e.comm),
            K::SlotEmpty => "empty".into(),
            K::Lost => format!("LOST {} event(s)", e.lost),
            K::KillDone => "kill done".into(),
        };
        writeln!(out, "{:>8} {:<16} {what}", e.seq, e.slot)?;
    }
    out.flush()?;
    Ok(())
}

pub fn usage(u: &Usage, json: bool) -> Result<()> {
    if json {
        return print_json(u);
    }
    println!("slot {}", u.slot);
    for line in usage_lines(u) {
        println!("  {line}");
    }
    Ok(())
}

/// The usage, one aspect per line, as `/usr/bin/time -v` would put it.
fn usage_lines(u: &Usage) -> Vec<String> {
    let mut lines = vec![
        format!("cpu       {:.3} s user, {:.3} s system", u.cpu_user_seconds, u.cpu_system_seconds),
        format!(
            "memory    {} now, {} peak of the slot, {} peak of one process",
            bytes(u.memory_current_bytes),
            bytes(u.memory_peak_bytes),
            bytes(u.max_process_rss_bytes)
        ),
        format!(
            "i/o       {} read, {} written (block); {} read(), {} write() (any filesystem)",
            bytes(u.read_bytes),
            bytes(u.write_bytes),
            bytes(u.rchar_bytes),
            bytes(u.wchar_bytes)
        ),
        format!(
            "tasks     {} live ({} processes), peak {}",
            u.tasks_live, u.processes_live, u.tasks_peak
        ),
        format!("faults    {} minor, {} major", u.minor_faults, u.major_faults),
        format!(
            "limits    {} fork(s) refused at tasks-max; {} process(es) killed for memory",
            u.forks_refused, u.oom_kills
        ),
    ];
    // Every count of tracker-common's list, by name.
    let counts = u.counts.values();
    lines.push("counted:".into());
    lines.extend(
        SlotCounts::FIELDS.iter().zip(counts).map(|(f, v)| format!("  {:<20} {v}", f.name)),
    );
    lines
}

/// `123 B`, `4.0 KiB`, `400.1 MiB`, `2.50 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[i]) }
}

fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `1:02:03`, `2:03`, `4.2s`.
fn elapsed(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    if secs < 60 {
        return format!("{:.1}s", ns as f64 / 1e9);
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 { format!("{h}:{m:02}:{s:02}") } else { format!("{m}:{s:02}") }
}
