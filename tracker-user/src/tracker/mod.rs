//! The library's one API: everything a `Tracker` can do is declared here, and each promise
//! lives in a module of its own below, which this file delegates to:
//!
//! | promise | module |
//! |---|---|
//! | a slot's life (create, read, change limits, release) | `slots` |
//! | account (usage of exited and live tasks) | `usage` |
//! | tag an existing process tree | `adopt` |
//! | start a command tagged, run it to the end | `launch` |
//! | kill (doom, freeze, kill, wait, report) | `kill`, `doom` (the doom program's link) |
//! | signal, suspend, resume | `signal` |
//! | whole-slot OOM kills for a long-running process | `oom_guard` |
//! | slot cgroups systemd removed, made again from the registry | `restore` |
//!
//! Kill and signal reach tasks through `tagged` (pidfds checked against the kernel tag); the
//! slot's tasks come from `live` (the usage iterator); every module works on an `Instance`
//! (paths, pinned maps, cgroups). Nothing below calls back up.
mod adopt;
pub(crate) mod doom;
mod instance;
mod kill;
mod launch;
mod live;
mod oom_guard;
mod restore;
mod signal;
mod slots;
mod tagged;
mod usage;

use std::{
    os::fd::OwnedFd,
    process::{Child, Command},
};

pub use adopt::AdoptReport;
pub use kill::{KillOptions, KillReport, Survivor};
pub use launch::{RunOptions, RunOutcome, shell_status};
pub use signal::{SuspendReport, check_signal, parse_signal};
pub use slots::{SlotSpec, SlotStatus, generated_slot_name, validate_slot_name};
use tracker_common::{GlobalCounters, SlotCounters, SlotState, TaskTag};
pub use usage::Usage;

use self::instance::Instance;
use crate::{
    cgroup::Cgroups, error::Result, limits::Limits, paths::Paths, procinfo::ProcessInfo,
    registry::SlotRecord,
};

/// A handle on a loaded tracker instance.
pub struct Tracker {
    inst: Instance,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").field("instance", &self.inst.paths.instance()).finish()
    }
}

impl Tracker {
    /// Open the pinned maps of a loaded instance (root only).
    pub fn open(paths: Paths) -> Result<Self> {
        Ok(Self { inst: Instance::open(paths)? })
    }

    pub fn paths(&self) -> &Paths {
        &self.inst.paths
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.inst.cgroups
    }

    // A slot's life.

    /// Create a slot. Returns its record and any warnings (a cgroup that could not be made).
    pub fn create_slot(&self, spec: &SlotSpec) -> Result<(SlotRecord, Vec<String>)> {
        slots::create(&self.inst, spec)
    }

    pub fn slot(&self, name: &str) -> Result<SlotRecord> {
        self.inst.slot(name)
    }

    pub fn slot_status(&self, name: &str) -> Result<SlotStatus> {
        slots::status(&self.inst, name)
    }

    /// Every slot, by name.
    pub fn slots(&self) -> Result<Vec<SlotStatus>> {
        slots::all(&self.inst)
    }

    /// Change the limits of a running slot (as `systemctl set-property` does). Only the
    /// limits given in `change` are changed. Returns the slot's limits now.
    pub fn set_limits(&self, name: &str, change: &Limits) -> Result<Limits> {
        slots::set_limits(&self.inst, name, change)
    }

    /// Forget an empty slot: its record, its cgroups and its kernel state.
    pub fn release(&self, name: &str) -> Result<()> {
        slots::release(&self.inst, name)
    }

    /// Make every slot cgroup that is gone (systemd removes a stopped unit's empty cgroups)
    /// again, with its limits, attaching the cgroup programs again first if their parent went
    /// too. Returns a line per problem.
    pub fn restore_slot_cgroups(&self) -> Vec<String> {
        restore::all(&self.inst)
    }

    /// Whether the slots' cgroup parent is no longer the directory the cgroup programs were
    /// attached to at the last load.
    pub fn parent_was_removed(&self) -> bool {
        restore::parent_was_removed(&self.inst)
    }

    // Tag.

    /// Tag process `pid` and all its current descendants into slot `name`, and move them into
    /// the slot's cgroups; into a bound slot, only tag them: they stay in the batch system's
    /// cgroups.
    pub fn adopt(&self, name: &str, pid: u32) -> Result<AdoptReport> {
        slots::mark_adopted(&self.inst, name)?;
        adopt::adopt(&self.inst, &self.inst.slot(name)?, pid)
    }

    /// The tagged tasks of a slot, as the kernel has them now.
    pub fn tags(&self, name: &str) -> Result<Vec<(u32, TaskTag)>> {
        slots::tags(&self.inst, name)
    }

    /// The kernel's tag at task `tid`, if it carries one now (whether it is that task's is for
    /// the caller to check against its start time).
    pub fn tag_of(&self, tid: u32) -> Result<Option<TaskTag>> {
        self.inst.maps().tag(tid)
    }

    /// The live processes of a slot (one row per thread group), or every thread.
    pub fn processes(&self, name: &str, threads: bool) -> Result<Vec<ProcessInfo>> {
        slots::processes(&self.inst, name, threads)
    }

    // Launch.

    /// Start `cmd` as the first task of slot `name`. `detach` puts it in a session of its own,
    /// for a slot that outlives this process (its stdio is the caller's choice). No isolation,
    /// but a command that keeps uid 0 runs under the root-job guard, as with `start`.
    pub fn spawn(&self, name: &str, cmd: &mut Command, detach: bool) -> Result<Child> {
        launch::spawn(&self.inst, name, cmd, detach)
    }

    /// Create slot `spec`, isolated as `iso` says, and start `cmd` as its first task. Bad
    /// input (a user, a root directory) fails before anything exists; a failure after that
    /// removes whatever was made.
    pub fn start(
        &self,
        spec: &SlotSpec,
        cmd: &mut Command,
        iso: &crate::Isolation,
        detach: bool,
    ) -> Result<(SlotRecord, Vec<String>, Child)> {
        launch::start(&self.inst, spec, cmd, iso, detach)
    }

    /// Create a slot, run `cmd` in it to the end, kill whatever is left of the slot, and
    /// release it (unless `opts.keep_slot`, or something survived the kill).
    pub fn run(&self, spec: &SlotSpec, cmd: &mut Command, opts: &RunOptions) -> Result<RunOutcome> {
        launch::run(&self.inst, spec, cmd, opts)
    }

    // Account.

    /// The usage of slot `name` now: exited and live tasks together.
    pub fn usage(&self, name: &str) -> Result<Usage> {
        usage::of(&self.inst, name)
    }

    /// The usage of every slot, with one pass over the kernel's tasks.
    pub fn usage_all(&self) -> Result<Vec<Usage>> {
        usage::all(&self.inst)
    }

    /// What the kernel counts for slot `name` now, raw (no clamping of a transiently negative
    /// memory figure): its shared state and its per-CPU counters summed. For health checks.
    pub fn kernel_counts(&self, name: &str) -> Result<(SlotState, SlotCounters)> {
        slots::kernel_counts(&self.inst, name)
    }

    /// The tracker's own machine-wide counters, summed over CPUs.
    pub fn global_counters(&self) -> Result<GlobalCounters> {
        self.inst.maps().global()
    }

    // Kill and signal.

    /// Empty slot `name` so that nothing survives, and say so (see `kill`).
    pub fn kill(&self, name: &str, opts: &KillOptions) -> Result<KillReport> {
        kill::kill(&self.inst, &self.inst.slot(name)?, opts)
    }

    /// Send `sig` to every process of slot `name`. Returns how many processes got it.
    pub fn signal(&self, name: &str, sig: i32) -> Result<u64> {
        signal::signal(&self.inst, name, sig)
    }

    /// Stop every task of slot `name` where it is: freeze its cgroup, SIGSTOP what is
    /// outside it.
    pub fn suspend(&self, name: &str) -> Result<SuspendReport> {
        signal::suspend(&self.inst, name)
    }

    /// Undo `suspend`: thaw the slot's cgroup, SIGCONT what is outside it.
    pub fn resume(&self, name: &str) -> Result<SuspendReport> {
        signal::resume(&self.inst, name)
    }

    // Limits.

    /// Until `stop` becomes readable: kill every slot with a memory limit, whole, when the
    /// OOM killer acts in it; `on_kill` hears of each such kill.
    pub fn guard_oom(&self, stop: &OwnedFd, on_kill: impl FnMut(&str, &KillReport)) {
        oom_guard::guard(&self.inst, stop, on_kill)
    }
}
