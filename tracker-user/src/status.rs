//! What is loaded, where it is pinned, and which kernel features were found.
use std::{
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::programs::{
    ProgramInfo,
    links::{FdLink, PinnedLink},
    loaded_programs,
};
use serde::Serialize;

use crate::{
    bpf_sys, btf,
    cgroup::{Cgroups, Layout},
    error::Result,
    maps::Maps,
    paths::{BPF_STATS, LSM_LIST, Paths, SELF_CGROUP, TRACEFS},
    preflight,
    programs::{Attach, Kind, PROGRAMS},
    registry,
};

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub instance: String,
    pub pin_dir: PathBuf,
    pub loaded: bool,
    pub generation: u64,
    pub programs: Vec<ProgramStatus>,
    pub features: Vec<Feature>,
    pub cgroup_layout: Layout,
    /// The slots' cgroup2 parent directory (recorded at load; `<instance>` under the root for an
    /// instance loaded before it was recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<PathBuf>,
    /// The cgroup systemd delegated that the parent is in, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_delegated: Option<PathBuf>,
    /// The systemd scope the tracker made to hold its slots, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_scope: Option<String>,
    /// Tasks the tasks map can hold (the kernel's `pid_max` at load time).
    pub max_tasks: u32,
    pub max_slots: u32,
    pub slots: usize,
    pub tag_failures: u64,
    /// Tagged tasks that have exited and are not yet freed (their final CPU time is counted
    /// when they are): a count that stays up names zombies nobody reaps. `None` if unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_frees: Option<u64>,
    /// Writes of `kernel.pid_max` above `max_tasks` that the guard refused.
    pub pid_max_refused: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramStatus {
    pub name: &'static str,
    pub hook: String,
    /// For pinned links: attached. For on-demand programs: loaded and ready to attach.
    pub ready: bool,
    /// The fallback function loaded in its place on this kernel, if any, and what differs.
    pub fallback: Option<(&'static str, &'static str)>,
    pub on_demand: bool,
    /// For on-demand programs: attached now (its link is pinned while it is).
    pub attached_now: bool,
    pub prog_id: Option<u32>,
    /// Runs the kernel skipped (`recursion_misses`, 5.12+): it skips a program's run on a CPU
    /// where the same program is already running, which from 7.0 includes a task preempted
    /// inside it. `None` where the kernel does not count them or the program is not loaded.
    pub skipped: Option<u64>,
    /// From the kernel's BPF statistics (`kernel.bpf_stats_enabled=1`), else 0.
    pub run_count: u64,
    pub run_time_ns: u64,
    pub purpose: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub present: bool,
    pub detail: String,
}

/// What differs in a program's `_old` build.
const OLD_BUILD: &str = "the build for kernels before 5.13 (no bpf_get_current_task_btf or \
                         atomic exchange)";

pub fn status(paths: &Paths) -> Result<Status> {
    let maps = Maps::open(paths).ok();
    let loaded = maps.is_some();
    let cgroups = Cgroups::detect(paths)?;
    // One parse of the kernel's BTF for everything status asks of it.
    let btf = btf::KernelBtf::open(paths.btf());
    let kernel = btf
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|b| b.offsets().map(|o| o.features).map_err(|e| e.to_string()));
    let programs = programs(paths, kernel.as_ref().ok().copied());
    let (generation, max_tasks, max_slots, global) = match &maps {
        Some(m) => (
            m.active_generation().unwrap_or(0),
            m.tasks_capacity(),
            m.max_slots(),
            m.global().unwrap_or_default(),
        ),
        None => (0, 0, 0, Default::default()),
    };
    let slots = if loaded { registry::read(paths).map(|r| r.slots.len()).unwrap_or(0) } else { 0 };
    Ok(Status {
        instance: paths.instance().to_owned(),
        pin_dir: paths.pin_dir(),
        loaded,
        generation,
        programs,
        features: features(paths, &cgroups, btf.as_ref().ok(), &kernel),
        cgroup_layout: cgroups.layout(),
        cgroup_parent: cgroups.parent_dir(),
        cgroup_delegated: cgroups.mounts().unified.as_ref().and_then(|m| {
            cgroups.parent().delegated.as_ref().map(|d| crate::paths::cgroup_dir(m, d))
        }),
        cgroup_scope: cgroups.parent().scope.clone(),
        max_tasks,
        max_slots,
        slots,
        tag_failures: global.tag_failures,
        pending_frees: if loaded { Maps::pending_frees(paths).ok().flatten() } else { None },
        pid_max_refused: global.pid_max_refused,
    })
}

/// The program table: each program this kernel calls for (from its BTF `features`, `None`
/// when they could not be read: every program), with what the kernel says of it. Apart from
/// `status` for the metrics, which scrape it often and must not parse the kernel's BTF (some
/// megabytes) each time.
pub fn programs(paths: &Paths, kernel: Option<u32>) -> Vec<ProgramStatus> {
    PROGRAMS
        .iter()
        // A program this kernel does not call for is not listed, unless it is attached (the
        // tests' variables can ask for it on any kernel).
        .filter(|spec| {
            kernel.is_none_or(|f| spec.wanted(f))
                || paths.link_pin(spec.name).exists()
        })
        .map(|spec| {
            let info = match spec.attach {
                Attach::Pinned => PinnedLink::from_pin(paths.link_pin(spec.name))
                    .ok()
                    .and_then(|l| FdLink::from(l).info().ok())
                    .and_then(|li| program_by_id(li.program_id())),
                Attach::OnDemand => ProgramInfo::from_pin(paths.prog_pin(spec.name)).ok(),
            };
            ProgramStatus {
                name: spec.name,
                hook: match spec.kind {
                    Kind::BtfTracePoint(tp) => format!("tp_btf/{tp}"),
                    Kind::TaskIter => "iter/task".into(),
                    Kind::CgroupSkb { ingress: true } => "cgroup_skb/ingress".into(),
                    Kind::CgroupSkb { ingress: false } => "cgroup_skb/egress".into(),
                    Kind::CgroupSockAddr(h) => h.describe().into(),
                    Kind::CgroupDevice => "cgroup/dev".into(),
                    Kind::CgroupSysctl => "cgroup/sysctl (v2 root)".into(),
                },
                ready: info.is_some(),
                fallback: [
                    spec.fallback.map(|fb| (fb.function, fb.difference)),
                    spec.old.map(|f| (f, OLD_BUILD)),
                ]
                .into_iter()
                .flatten()
                .find(|(f, _)| info.as_ref().and_then(|i| i.name_as_str()) == Some(*f)),
                on_demand: spec.attach == Attach::OnDemand,
                attached_now: info.is_some()
                    && (spec.attach == Attach::Pinned || paths.link_pin(spec.name).exists()),
                prog_id: info.as_ref().map(ProgramInfo::id),
                skipped: info.as_ref().and_then(|i| {
                    let fd = i.fd().ok()?;
                    bpf_sys::recursion_misses(fd.as_fd()).ok().flatten()
                }),
                run_count: info.as_ref().map_or(0, ProgramInfo::run_count),
                run_time_ns: info.as_ref().map_or(0, |i| i.run_time().as_nanos() as u64),
                purpose: spec.purpose,
            }
        })
        .collect()
}

/// A non-root cgroup2 directory to look for per-cgroup files in: the instance's parent if
/// made, else this process's own cgroup, else any child of the root.
fn non_root_cgroup(mount: &Path, cgroups: &Cgroups) -> Option<PathBuf> {
    if let Some(parent) = cgroups.parent_dir().filter(|p| p.is_dir()) {
        return Some(parent);
    }
    let own = fs::read_to_string(SELF_CGROUP).ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim_start_matches('/').to_owned())
    });
    if let Some(own) = own.filter(|p| !p.is_empty())
        && mount.join(&own).is_dir()
    {
        return Some(mount.join(own));
    }
    fs::read_dir(mount).ok()?.flatten().map(|e| e.path()).find(|p| p.is_dir())
}

fn program_by_id(id: u32) -> Option<ProgramInfo> {
    loaded_programs().flatten().find(|p| p.id() == id)
}

fn features(
    paths: &Paths,
    cgroups: &Cgroups,
    btf: Option<&btf::KernelBtf>,
    kernel: &std::result::Result<u32, String>,
) -> Vec<Feature> {
    let mut f = vec![];
    let mut add = |name, present, detail: String| f.push(Feature { name, present, detail });
    add("btf", paths.btf().exists(), paths.btf().display().to_string());
    add(
        "bpffs",
        preflight::fs_magic_is(paths.bpffs_root(), preflight::BPF_FS_MAGIC),
        paths.bpffs_root().display().to_string(),
    );
    add(
        "tracefs",
        preflight::fs_magic_is(TRACEFS.as_ref(), preflight::TRACEFS_MAGIC),
        format!("{TRACEFS} (not needed by tp_btf programs)"),
    );
    let stats = fs::read_to_string(BPF_STATS).map(|s| s.trim() == "1").unwrap_or(false);
    add("bpf_stats", stats, "kernel.bpf_stats_enabled: per-program run counts and times".into());
    let mounts = cgroups.mounts();
    add(
        "cgroup2",
        mounts.unified.is_some(),
        mounts.unified.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
    );
    // The root cgroup has neither file: look in a non-root one, the instance's own if made.
    let probe = mounts.unified.as_deref().and_then(|m| non_root_cgroup(m, cgroups));
    // With none to look in (nothing made yet beside the root), the kernel's BTF says whether
    // it has the file's handler.
    let has = |file: &str, handler: &str| match &probe {
        Some(d) => d.join(file).exists(),
        None => btf.is_some_and(|b| b.has_function(handler)),
    };
    add(
        "cgroup.freeze",
        mounts.unified.is_some() && has("cgroup.freeze", "cgroup_freeze_write"),
        "freeze a slot in one write (5.2+)".into(),
    );
    add(
        "cgroup.kill",
        mounts.unified.is_some() && has("cgroup.kill", "cgroup_kill_write"),
        "kill a slot in one write (5.14+)".into(),
    );
    let peak = btf.is_some_and(btf::KernelBtf::has_memory_peak);
    add(
        "memory.peak",
        peak,
        if peak {
            "a slot's memory peak is its cgroup v2's memory.peak (5.19+)".into()
        } else {
            "instead: on cgroup v2 a slot's memory and peak come from rss_stat, attached while \
             such a slot exists, at every RSS change of every process (v1: \
             memory.max_usage_in_bytes)"
                .into()
        },
    );
    // How this kernel differs, as the programs were (or would be) chosen for it at load.
    match kernel {
        Ok(features) => {
            for (name, present, instead) in btf::describe_features(*features) {
                let detail = if present { String::new() } else { format!("instead: {instead}") };
                add(name, present, detail);
            }
        }
        Err(e) => add("kernel BTF offsets", false, e.clone()),
    }
    let v1: Vec<&str> = mounts.v1.keys().map(String::as_str).collect();
    add("cgroup v1 controllers", !v1.is_empty(), v1.join(" "));
    let lsm = fs::read_to_string(LSM_LIST);
    add(
        "bpf lsm",
        lsm.as_ref().is_ok_and(|s| s.split(',').any(|l| l.trim() == "bpf")),
        match lsm {
            Ok(s) => format!("active LSMs: {}", s.trim()),
            Err(_) => "unknown (securityfs not mounted); not used by this version".into(),
        },
    );
    f
}
