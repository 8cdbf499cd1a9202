//! What `/proc` says about a tagged task, for `ps` and kill reports. `/proc` is read only for
//! tasks the kernel says are tagged, and only when asked: never to find or follow processes.
use std::fs;

use serde::Serialize;
use tracker_common::TaskTag;

/// One process of a slot (a thread group), as `tracker ps` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    /// Nanoseconds since boot (`start_boottime`): with `pid`, names the process for ever.
    pub start_time_ns: u64,
    /// The `/proc` state letter: R, S, D, T, Z, ...
    pub state: String,
    pub comm: String,
    pub uid: u32,
    pub threads: u32,
    /// The pid inside the process's own PID namespace, where that is not the machine's
    /// (`--pid-ns`): what the job itself sees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    pub cmdline: Vec<String>,
}

/// The `/proc/<tid>/stat` start time (clock ticks since boot) that matches a tag's start.
pub fn start_ticks(start_ns: u64) -> u64 {
    let hz = procfs::ticks_per_second().max(1);
    start_ns / (1_000_000_000 / hz)
}

/// Read `/proc` for a tagged task, if it is still the task the tag names.
pub fn describe(tid: u32, tag: &TaskTag) -> Option<ProcessInfo> {
    read(tid, Some(tag.start_ns))
}

/// Read `/proc` for a process known by its pid alone (one found in a slot's cgroup).
pub fn describe_any(pid: u32) -> Option<ProcessInfo> {
    read(pid, None)
}

/// The `/proc` state letter of task `tid`, if it is still the task that started at
/// `start_ns`: one read of its `stat`.
pub fn state_of(tid: u32, start_ns: u64) -> Option<char> {
    let stat = procfs::process::Process::new(tid as i32).ok()?.stat().ok()?;
    (stat.starttime == start_ticks(start_ns)).then_some(stat.state)
}

fn read(tid: u32, start_ns: Option<u64>) -> Option<ProcessInfo> {
    let proc = procfs::process::Process::new(tid as i32).ok()?;
    let stat = proc.stat().ok()?;
    if start_ns.is_some_and(|s| stat.starttime != start_ticks(s)) {
        return None;
    }
    let ticks_ns = 1_000_000_000 / procfs::ticks_per_second().max(1);
    Some(ProcessInfo {
        pid: tid,
        ppid: stat.ppid.max(0) as u32,
        start_time_ns: start_ns.unwrap_or(stat.starttime * ticks_ns),
        state: stat.state.to_string(),
        comm: stat.comm,
        uid: proc.uid().unwrap_or(u32::MAX),
        threads: stat.num_threads.max(0) as u32,
        ns_pid: ns_pid(tid),
        cmdline: proc.cmdline().unwrap_or_default(),
    })
}

/// The innermost pid of `NSpid:` in `/proc/<tid>/status`, if the task is in a nested PID
/// namespace.
fn ns_pid(tid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let ids: Vec<&str> = line.split_whitespace().collect();
    if ids.len() < 2 { None } else { ids.last()?.parse().ok() }
}

/// The kernel stack of a task, for diagnosing one that will not die (D state on NFS...).
pub fn kernel_stack(tid: u32) -> Vec<String> {
    fs::read_to_string(format!("/proc/{tid}/stack"))
        .map(|s| s.lines().map(|l| l.trim().to_owned()).collect())
        .unwrap_or_default()
}

/// Where a task sleeps in the kernel, if it does.
pub fn wchan(tid: u32) -> String {
    fs::read_to_string(format!("/proc/{tid}/wchan")).unwrap_or_default()
}
