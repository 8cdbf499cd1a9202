//! Loading, upgrading and unloading the kernel programs and their pins.
//!
//! A load pins every map, every always-on link and every on-demand program under the
//! instance's bpffs directory, so tracking goes on while no tracker process runs. Loading again
//! is an upgrade: the pinned maps (and so every slot and tag) are reused, the new programs are
//! attached beside the old ones but stay idle until the shared generation number is switched to
//! theirs, and then the old links are dropped. No event is missed and none is counted twice.
use std::{
    fs,
    os::{
        fd::{AsFd as _, BorrowedFd},
        unix::fs::{DirBuilderExt as _, MetadataExt as _},
    },
    path::Path,
};

use aya::{
    Btf, EbpfLoader,
    maps::{Array, MapError},
    programs::{
        BtfTracePoint, CgroupDevice, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, CgroupSysctl,
        Iter, ProgramError,
        links::{CgroupAttachMode, FdLink},
    },
};
use serde::Serialize;
use tracker_common::{Config, KF_OLD_KERNEL, global_name, map_name};

use crate::{
    bpf_sys, btf,
    cgroup::{CgroupParent, Cgroups},
    error::{Error, IoContext, Result},
    maps::{Maps, SHAPES},
    memory_link,
    paths::{PID_MAX, Paths},
    preflight,
    programs::{Attach, Kind, PROGRAMS, ProgramSpec},
    registry::{self, StateLock},
};

/// The kernel programs, built by build.rs from tracker-ebpf; empty in a build made without
/// them (`AYA_BUILD_EBPF=false`, for checks and unit tests without the BPF toolchain).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracker"));

pub const DEFAULT_MAX_SLOTS: u32 = 1024;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Slots the per-slot maps have room for (ids 1..max_slots). Fixed when the maps are
    /// first created; an upgrade keeps the existing size.
    pub max_slots: u32,
    /// Entries of the tasks array, if more than kernel.pid_max (which is the default): room
    /// for a pid_max raised later, without the pid_max guard refusing it. Fixed when the
    /// array is first created.
    pub tasks_capacity: Option<u32>,
    /// The slots' cgroup2 parent, relative to the root (see cgroup/parent.rs). Chosen at the
    /// first load; an upgrade keeps it and refuses another.
    pub cgroup_parent: Option<std::path::PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { max_slots: DEFAULT_MAX_SLOTS, tasks_capacity: None, cgroup_parent: None }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadAction {
    /// Nothing was loaded; maps were created.
    Fresh,
    /// Programs were replaced; the pinned maps and every slot were kept.
    Upgraded,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub action: LoadAction,
    pub generation: u64,
    pub slots_kept: usize,
    pub warnings: Vec<String>,
}

pub fn load(paths: &Paths, opts: &LoadOptions) -> Result<LoadReport> {
    preflight::require_root()?;
    preflight::require_bpffs(paths.bpffs_root())?;
    // Our questions to the kernel's BTF, from one parse of it (aya makes its own).
    let our_btf = btf::KernelBtf::open(paths.btf())?;
    let offsets = our_btf.offsets()?;
    let memory_peak = our_btf.has_memory_peak();
    drop(our_btf);
    let kernel_btf = Btf::parse_file(paths.btf(), aya::Endianness::default())
        .map_err(|e| Error::Btf(e.to_string()))?;
    let _lock = StateLock::exclusive(paths)?;

    let mut existing = 0;
    for shape in SHAPES {
        existing += usize::from(shape.check_pin(paths)?.is_some());
    }
    let fresh = existing == 0;
    for dir in [paths.pin_dir(), paths.maps_dir(), paths.links_dir(), paths.progs_dir()] {
        make_private_dir(&dir)?;
    }
    let result = load_locked(paths, opts, &offsets, &kernel_btf, memory_peak, fresh);
    if result.is_err() && fresh {
        // Leave nothing half-made behind a failed first load.
        let _ = remove_pins(paths);
    }
    result
}

fn load_locked(
    paths: &Paths,
    opts: &LoadOptions,
    offsets: &tracker_common::KernelOffsets,
    kernel_btf: &Btf,
    memory_peak: bool,
    fresh: bool,
) -> Result<LoadReport> {
    let previous = if fresh { 0 } else { Maps::open(paths)?.active_generation()? };
    let generation = previous + 1;
    let pid_max = read_pid_max()?;
    let max_slots = opts.max_slots.max(2);
    // An upgrade keeps the pinned tasks array, and so its size.
    let capacity = if fresh {
        pid_max.max(opts.tasks_capacity.unwrap_or(0))
    } else {
        Maps::open(paths)?.tasks_capacity()
    };
    let capacity_global = u64::from(capacity);

    let old_kernel = offsets.features & KF_OLD_KERNEL != 0;
    if !fresh {
        check_same_builds(paths, old_kernel)?;
    }
    // The old builds' maps (see `ProgramSpec::old`): an entry per task between its exit and
    // its close, as many as the tasks array has or 65,536 (a task that finds it full is
    // counted finished at its exit, short of its last slice of CPU); a lock per process whose
    // memory a CPU is changing, a few per CPU at most.
    let (exited, rss_locks) = if old_kernel { (capacity.min(1 << 16), 4096) } else { (1, 1) };
    let map_pins: Vec<(&str, std::path::PathBuf)> =
        SHAPES.iter().map(|s| (s.name, paths.map_pin(s.name))).collect();
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(kernel_btf))
        .override_global(global_name::OFFSETS, offsets, true)
        .override_global(global_name::GENERATION, &generation, true)
        .override_global(global_name::TASKS_CAPACITY, &capacity_global, true)
        .map_max_entries(map_name::TASKS, capacity)
        .map_max_entries(map_name::EXIT_CPU, capacity)
        .map_max_entries(map_name::MM_RSS, capacity)
        .map_max_entries(map_name::CGROUP_SLOTS, max_slots)
        .map_max_entries(map_name::SLOTS, max_slots)
        .map_max_entries(map_name::SLOT_STATE, max_slots)
        .map_max_entries(map_name::COUNTERS, max_slots)
        .map_max_entries(map_name::EXITED, exited)
        .map_max_entries(map_name::RSS_LOCK, rss_locks);
    for (name, pin) in &map_pins {
        loader.map_pin_path(name, pin.as_path());
    }
    if EBPF_OBJECT.is_empty() {
        return Err(Error::NoKernelPrograms);
    }
    // Before the load pins it: whether the count of pending frees was kept from the start.
    let pending_counted = fresh || paths.map_pin(map_name::PENDING_FREE).exists();
    let mut ebpf =
        loader.load(EBPF_OBJECT).map_err(|e| Error::bpf("loading the eBPF object", e))?;
    if !pending_counted {
        // An upgrade from a version that did not count them: tasks it saw exit may still be
        // freed. Set before these programs become the active ones.
        let mut pending: aya::maps::Array<_, u64> = ebpf
            .map_mut(map_name::PENDING_FREE)
            .ok_or(Error::BadObject("has no pending-free count"))?
            .try_into()
            .map_err(|e| Error::bpf("opening the pending-free count", e))?;
        pending
            .set(0, tracker_common::PENDING_FREE_UNKNOWN, 0)
            .map_err(|e| Error::bpf("setting the pending-free count", e))?;
    }

    let mut warnings = vec![];
    let (cgroups, mut parent) = choose_parent(paths, opts, fresh, &mut warnings)?;
    // The cgroup programs attach to the instance's cgroup2 directory, made here.
    let cgroup_dir = match cgroups.ensure_parent() {
        Ok(Some((dir, notes))) => {
            warnings.extend(notes);
            Some(dir)
        }
        Ok(None) => None,
        // The delegated unit is stopped: loading now would leave the cgroup programs out.
        Err(e @ Error::DelegationGone(_)) => return Err(e),
        Err(e) => {
            warnings.push(format!("no cgroup parent directory: {e}"));
            None
        }
    };
    parent.attached_id = cgroup_dir.as_ref().and_then(|d| fs::metadata(d).ok()).map(|m| m.ino());
    // The pid_max guard attaches to the root of the cgroup v2 hierarchy, for every process.
    let cgroup_root = cgroups.mounts().unified.clone();
    let dirs = CgroupDirs { instance: cgroup_dir.as_deref(), root: cgroup_root.as_deref() };
    let mut staged = vec![];
    if old_kernel {
        warnings.push(
            "this kernel lacks bpf_get_current_task_btf or the atomic exchange (5.13+): the \
             programs' _old builds are loaded (see `tracker status`)"
                .into(),
        );
    }
    for spec in PROGRAMS {
        if !spec.wanted(offsets.features) {
            // Not called for on this kernel: a link an earlier load left goes.
            let _ = fs::remove_file(paths.link_pin(spec.name));
            continue;
        }
        let function = spec.function(old_kernel);
        let mut staging = stage_program(paths, &mut ebpf, spec, function, kernel_btf, &dirs);
        if let (Err(e), Some(fb)) = (&staging, spec.fallback) {
            let refused = e.to_string();
            staging = stage_program(paths, &mut ebpf, spec, fb.function, kernel_btf, &dirs);
            if staging.is_ok() {
                warnings.push(format!(
                    "{}: loaded as {} ({}): {}",
                    spec.name,
                    fb.function,
                    refused.split("; verifier").next().unwrap_or_default(),
                    fb.difference
                ));
            }
        }
        match staging {
            Ok(pin) => staged.push(pin),
            Err(e) if !spec.required => warnings.push(format!(
                "{} disabled ({}; it needs {}): {e}",
                spec.name,
                spec.purpose,
                spec.describe_needs()
            )),
            Err(e) => {
                for (staging, _) in &staged {
                    let _ = fs::remove_file(staging);
                }
                return Err(e);
            }
        }
    }

    // Switch: from here on the new programs count and the old ones return at once.
    let config_map =
        ebpf.map_mut(map_name::CONFIG).ok_or_else(|| Error::BadObject("has no config map"))?;
    let mut config: Array<_, Config> =
        Array::try_from(config_map).map_err(|e: MapError| Error::bpf("config map", e))?;
    // The config record is the loader's alone (the event reader has its own record), so
    // writing it whole loses nothing.
    config
        .set(0, Config { active_generation: generation }, 0)
        .map_err(|e| Error::bpf("activating the new programs", e))?;

    // Replacing a link's pin drops the old link, which detaches the old program.
    for (staging, pin) in &staged {
        fs::rename(staging, pin).ctx(|| format!("pinning {}", pin.display()))?;
    }
    if !fresh {
        drop_retired_links(paths);
    }
    if fresh {
        registry::reset_locked(paths)?;
    }
    parent.write(paths)?;
    // The rss_stat program, attached from the new generation's pin while a slot needs it.
    memory_link::sync(paths, &registry::read_locked(paths)?.slots)?;
    // The doom program, attached only while a kill runs: a kill that died left it on.
    if let Err(e) = crate::tracker::doom::detach_if_idle(paths) {
        warnings.push(format!("the doom program may stay attached: {e}"));
    }
    // Checked after the guard is attached: a raise before it is seen here, one after it is
    // refused.
    let pid_max = read_pid_max()?;
    if pid_max > capacity {
        warnings.push(format!(
            "kernel.pid_max is {pid_max}, above the {capacity} tids the tasks array can tag: \
             a task with a higher tid cannot be tagged (tag_failures counts it, run and adopt \
             refuse it); `tracker unload`, then load again, to size the array to pid_max"
        ));
    }
    let v2_memory = Cgroups::detect(paths).ok().is_some_and(|c| c.v2_has_controller("memory"));
    if v2_memory && !memory_peak {
        warnings.push(
            "this kernel's cgroup v2 has no memory.peak (5.19+): slots take their memory and \
             its peak from rss_stat, which runs at every RSS change of every process while such \
             a slot exists"
                .into(),
        );
    }
    let slots_kept = registry::read_locked(paths)?.slots.len();
    Ok(LoadReport {
        action: if fresh { LoadAction::Fresh } else { LoadAction::Upgraded },
        generation,
        slots_kept,
        warnings,
    })
}

/// An upgrade loads the same builds as the programs it replaces (see `ProgramSpec::old`): the
/// two close exited tasks in ways that do not mix. The pinned `EXITED` map says which ran (one
/// entry: the recent builds; none pinned: a version before the old builds existed).
fn check_same_builds(paths: &Paths, old_kernel: bool) -> Result<()> {
    let pin = paths.map_pin(map_name::EXITED);
    let was_old = match aya::maps::MapInfo::from_pin(&pin) {
        Ok(info) => info.max_entries() > 1,
        Err(_) if !pin.exists() => false,
        Err(e) => return Err(Error::bpf(format!("opening {}", pin.display()), e)),
    };
    if was_old == old_kernel {
        return Ok(());
    }
    let (loaded, now) = if was_old { ("old", "recent") } else { ("recent", "old") };
    Err(Error::ProgramBuildMismatch { loaded, now })
}

/// Detach the programs an earlier version attached that this one no longer has (its
/// `sched_switch` harvest, now at `sched_process_free`): their links stay pinned, and so
/// attached, through an upgrade otherwise. They belong to an inactive generation, so they only
/// cost their calls.
fn drop_retired_links(paths: &Paths) {
    let Ok(dir) = fs::read_dir(paths.links_dir()) else { return };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !PROGRAMS.iter().any(|p| p.name == name) && !name.ends_with("_new") {
            tracing::info!("detaching {name}, a program this version no longer has");
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The cgroup parent of the slots: chosen at a first load, the recorded one at an upgrade
/// (which refuses another).
fn choose_parent(
    paths: &Paths,
    opts: &LoadOptions,
    fresh: bool,
    warnings: &mut Vec<String>,
) -> Result<(Cgroups, CgroupParent)> {
    let cgroups = Cgroups::detect(paths)?;
    let asked = opts.cgroup_parent.as_deref();
    let parent = match (fresh, cgroups.mounts().unified.clone()) {
        (true, Some(mount)) => {
            let (parent, notes) = CgroupParent::choose(paths, &mount, asked)?;
            warnings.extend(notes);
            parent
        }
        (true, None) => CgroupParent::default_for(paths),
        (false, mount) => {
            let recorded = cgroups.parent().clone();
            if let (Some(asked), Some(mount)) = (asked, mount) {
                let (wanted, _) = CgroupParent::choose(paths, &mount, Some(asked))?;
                if wanted.rel != recorded.rel {
                    return Err(Error::CgroupParentFixed {
                        recorded: recorded.rel,
                        asked: wanted.rel,
                    });
                }
            }
            recorded
        }
    };
    Ok((cgroups.with_parent(parent.clone()), parent))
}

/// The cgroup v2 directories programs attach to.
struct CgroupDirs<'a> {
    /// The instance's own directory (the slots' parent).
    instance: Option<&'a Path>,
    /// The hierarchy's root.
    root: Option<&'a Path>,
}

/// Load one program, the function `function` of the object (`spec.name`, or its fallback's),
/// and pin it (or its link) at a staging path under `spec.name`. Returns (staging, final).
fn stage_program(
    paths: &Paths,
    ebpf: &mut aya::Ebpf,
    spec: &ProgramSpec,
    function: &'static str,
    kernel_btf: &Btf,
    dirs: &CgroupDirs<'_>,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cgroup_dir = dirs.instance;
    let failed = |e: ProgramError| Error::ProgramLoad { program: function, detail: describe(&e) };
    let prog = ebpf.program_mut(function).ok_or(Error::ProgramLoad {
        program: function,
        detail: "missing from the object".into(),
    })?;
    let pin = match spec.attach {
        Attach::Pinned => paths.link_pin(spec.name),
        Attach::OnDemand => paths.prog_pin(spec.name),
    };
    let staging = Paths::staging(&pin);
    let _ = fs::remove_file(&staging);
    let pin_failed =
        |e: aya::pin::PinError| Error::bpf(format!("pinning {}", staging.display()), e);
    match spec.kind {
        Kind::BtfTracePoint(tp) => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(failed)?;
            p.load(tp, kernel_btf).map_err(failed)?;
            match spec.attach {
                Attach::Pinned => {
                    let id = p.attach().map_err(failed)?;
                    let link: FdLink = p.take_link(id).map_err(failed)?.into();
                    link.pin(&staging).map_err(pin_failed)?;
                }
                Attach::OnDemand => p.pin(&staging).map_err(pin_failed)?,
            }
        }
        Kind::CgroupSkb { ingress } => {
            let cgroup = open_cgroup(spec, cgroup_dir)?;
            let p: &mut CgroupSkb = prog.try_into().map_err(failed)?;
            p.load().map_err(failed)?;
            let direction =
                if ingress { CgroupSkbAttachType::Ingress } else { CgroupSkbAttachType::Egress };
            // A bpf_link (5.7+): links attach beside each other without BPF_F_ALLOW_MULTI
            // (which link_create refuses), so the next generation can during an upgrade.
            let id = p.attach(&cgroup, direction, CgroupAttachMode::Single).map_err(failed)?;
            let link: FdLink = p
                .take_link(id)
                .map_err(failed)?
                .try_into()
                .map_err(|e| Error::bpf("cgroup link", e))?;
            link.pin(&staging).map_err(pin_failed)?;
        }
        Kind::CgroupSockAddr(_) => {
            let cgroup = open_cgroup(spec, cgroup_dir)?;
            let p: &mut CgroupSockAddr = prog.try_into().map_err(failed)?;
            p.load().map_err(failed)?;
            let id = p.attach(&cgroup, CgroupAttachMode::Single).map_err(failed)?;
            let link: FdLink = p
                .take_link(id)
                .map_err(failed)?
                .try_into()
                .map_err(|e| Error::bpf("cgroup link", e))?;
            link.pin(&staging).map_err(pin_failed)?;
        }
        Kind::CgroupDevice => {
            let cgroup = open_cgroup(spec, cgroup_dir)?;
            let p: &mut CgroupDevice = prog.try_into().map_err(failed)?;
            p.load().map_err(failed)?;
            let prog_fd = p.fd().map_err(failed)?;
            link_and_pin(spec, prog_fd.as_fd(), &cgroup, bpf_sys::BPF_CGROUP_DEVICE, &staging)?;
        }
        Kind::CgroupSysctl => {
            let root = open_cgroup(spec, dirs.root)?;
            let p: &mut CgroupSysctl = prog.try_into().map_err(failed)?;
            p.load().map_err(failed)?;
            let prog_fd = p.fd().map_err(failed)?;
            link_and_pin(spec, prog_fd.as_fd(), &root, bpf_sys::BPF_CGROUP_SYSCTL, &staging)?;
        }
        Kind::TaskIter => {
            let p: &mut Iter = prog.try_into().map_err(failed)?;
            p.load("task", kernel_btf).map_err(failed)?;
            let id = p.attach().map_err(failed)?;
            let link: FdLink = p
                .take_link(id)
                .map_err(failed)?
                .try_into()
                .map_err(|e| Error::bpf("iterator link", e))?;
            link.pin(&staging).map_err(pin_failed)?;
        }
    }
    Ok((staging, pin))
}

fn open_cgroup(spec: &ProgramSpec, dir: Option<&Path>) -> Result<fs::File> {
    let dir = dir.ok_or(Error::ProgramLoad {
        program: spec.name,
        detail: "no cgroup2 directory to attach to".into(),
    })?;
    fs::File::open(dir).ctx(|| format!("opening {}", dir.display()))
}

/// Attach program `prog` to `cgroup` through a link of our own making (aya hands out no link
/// for these program types to pin) and pin the link at `pin`.
fn link_and_pin(
    spec: &ProgramSpec,
    prog: BorrowedFd<'_>,
    cgroup: &fs::File,
    attach_type: u32,
    pin: &Path,
) -> Result<()> {
    let link = bpf_sys::cgroup_link(prog, cgroup.as_fd(), attach_type).map_err(|e| {
        Error::ProgramLoad { program: spec.name, detail: format!("link_create: {e}") }
    })?;
    bpf_sys::pin(link.as_fd(), pin).ctx(|| format!("pinning {}", pin.display()))
}

/// The verifier's log is long; keep its last lines, which say why.
fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{io_error}; verifier: {}", tail.join(" | "))
        }
        other => crate::error::chain(other),
    }
}

/// Make `dir` root's, mode 0700, or accept it only if it is that already: a directory that
/// someone else made first (bpffs may be world-writable) would let them unpin what we pin.
fn make_private_dir(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    }
    let meta = fs::symlink_metadata(dir).ctx(|| format!("reading {}", dir.display()))?;
    if meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o7777 == 0o700 {
        return Ok(());
    }
    let what = if meta.file_type().is_symlink() {
        "a symbolic link".to_owned()
    } else {
        format!("owned by uid {} with mode {:04o}", meta.uid(), meta.mode() & 0o7777)
    };
    Err(Error::io(
        format!("pin directory {}", dir.display()),
        std::io::Error::other(format!(
            "{what}, not a directory of root's with mode 0700: the tracker did not make it; \
             remove it (`rm -r {}`) and load again",
            dir.display()
        )),
    ))
}

fn read_pid_max() -> Result<u32> {
    let text = fs::read_to_string(PID_MAX).ctx(|| format!("reading {PID_MAX}"))?;
    text.trim().parse().map_err(|_| Error::io(PID_MAX, std::io::Error::other("not a number")))
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct UnloadReport {
    pub was_loaded: bool,
    pub slots_forgotten: usize,
    pub warnings: Vec<String>,
}

/// Detach every program and remove every pin, cgroup and state file of the instance.
/// Refused while a slot has live tasks, unless `force`.
pub fn unload(paths: &Paths, force: bool) -> Result<UnloadReport> {
    preflight::require_root()?;
    if !paths.pin_dir().exists() {
        return Ok(UnloadReport::default());
    }
    let _lock = StateLock::exclusive(paths)?;
    let reg = registry::read_locked(paths)?;
    let mut report =
        UnloadReport { was_loaded: true, slots_forgotten: reg.slots.len(), ..Default::default() };
    if let Ok(maps) = Maps::open(paths) {
        let live: Vec<&str> = reg
            .slots
            .iter()
            .filter(|s| maps.state(s.id).is_ok_and(|c| c.live_tasks > 0))
            .map(|s| s.name.as_str())
            .collect();
        if !live.is_empty() && !force {
            return Err(Error::SlotsLive(live.len()));
        }
    }
    let cgroups = Cgroups::detect(paths)?;
    for slot in &reg.slots {
        if let Err(e) = cgroups.remove(&slot.cgroups) {
            report.warnings.push(format!("slot {}: {e}", slot.name));
        }
    }
    cgroups.remove_parents();
    // The scope the tracker made for its slots goes with them (not while a slot's cgroup is
    // still there, which a forced unload leaves to its processes).
    if let Some(m) = &cgroups.mounts().unified
        && let Some(w) = cgroups.parent().release(m)
    {
        report.warnings.push(w);
    }
    remove_pins(paths)?;
    let _ = fs::remove_file(paths.registry_file());
    let _ = fs::remove_file(paths.cgroup_parent_file());
    // The slots' scratch directories (private /tmp) go with them.
    if let Err(e) = fs::remove_dir_all(paths.data_dir())
        && e.kind() != std::io::ErrorKind::NotFound
    {
        report.warnings.push(format!("removing {}: {e}", paths.data_dir().display()));
    }
    Ok(report)
}

fn remove_pins(paths: &Paths) -> Result<()> {
    // Links first, so that nothing runs while the maps go.
    for dir in [paths.links_dir(), paths.progs_dir(), paths.maps_dir()] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                fs::remove_file(e.path()).ctx(|| format!("removing {}", e.path().display()))?;
            }
        }
        let _ = fs::remove_dir(&dir);
    }
    fs::remove_dir(paths.pin_dir()).ctx(|| format!("removing {}", paths.pin_dir().display()))
}
