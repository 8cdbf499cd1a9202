//! The library's errors. Each message is one line that says what went wrong and, where there is
//! one, what to do about it.
use std::{io, path::PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("must run as root: the tracker's maps and cgroups are root-only")]
    NotRoot,

    #[error(
        "the tracker is not loaded ({} is missing): run `cargo xtask build-and-load` or `tracker load`",
        .0.display()
    )]
    NotLoaded(PathBuf),

    #[error("bpffs is not mounted at {}: run `mount -t bpf bpf {}`", .0.display(), .0.display())]
    BpffsUnavailable(PathBuf),

    #[error(
        "this kernel has no BTF ({} is missing): the tracker needs CONFIG_DEBUG_INFO_BTF=y",
        .0.display()
    )]
    NoBtf(PathBuf),

    #[error("kernel BTF: {0}")]
    Btf(String),

    #[error(
        "this tracker was built without its kernel programs (AYA_BUILD_EBPF=false, as `cargo \
         xtask check` builds it): build it with `cargo xtask build-and-load`"
    )]
    NoKernelPrograms,

    #[error("the eBPF object {0}: this build of the tracker is broken")]
    BadObject(&'static str),

    #[error("slot id {0} still has tagged tasks; refusing to reuse it")]
    SlotIdInUse(u32),

    #[error("the kernel refused program {program}: {detail}")]
    ProgramLoad { program: &'static str, detail: String },

    // aya's error stays typed (callers can match it); printed with its causes, once.
    #[error("{what}: {}", chain(.cause.as_ref()))]
    Bpf { what: String, cause: Box<BpfError> },

    #[error(
        "pinned map {} does not match this tracker ({detail}): it was made by another version; \
         `tracker unload --force` then `tracker load` starts afresh (slots are forgotten)",
        .path.display()
    )]
    IncompatiblePin { path: PathBuf, detail: String },

    #[error(
        "the loaded programs are the build for {loaded} kernels and this kernel now gets the \
         build for {now} ones ({}); the two do not mix: `tracker unload`, then load again",
        crate::btf::OLD_KERNEL_PROGRAMS_ENV
    )]
    ProgramBuildMismatch { loaded: &'static str, now: &'static str },

    #[error("no slot named {0:?} (see `tracker slots`)")]
    UnknownSlot(String),

    #[error("a slot named {0:?} exists already")]
    SlotExists(String),

    #[error("invalid slot name {name:?}: {why}")]
    InvalidSlotName { name: String, why: &'static str },

    #[error(
        "all {0} slots are in use: release some (`tracker release`) or load with a larger --max-slots"
    )]
    SlotsFull(u32),

    #[error("slot {name:?} still has {tasks} live task(s): kill it first (`tracker kill {name}`)")]
    SlotBusy { name: String, tasks: u64 },

    #[error("{0} slot(s) still have live tasks: kill them first, or unload with --force")]
    SlotsLive(usize),

    #[error("no process with pid {0}")]
    NoSuchProcess(u32),

    #[error("pid {pid} is already in slot {slot:?}")]
    AlreadyInSlot { pid: u32, slot: String },

    #[error("pid {pid} could not be tagged, so it is not tracked: {why}")]
    NotTagged { pid: u32, why: String },

    #[error("refusing to adopt pid {pid}: {why}")]
    RefusedAdopt { pid: u32, why: &'static str },

    #[error("cannot bind a slot to cgroup {path}: {why}")]
    BadCgroup { path: String, why: String },

    #[error(
        "cgroup {} overlaps slot {slot:?}'s cgroup {}: a cgroup and its subtree belong to one \
         slot at most",
        .path.display(),
        .theirs.display()
    )]
    CgroupTaken { path: PathBuf, slot: String, theirs: PathBuf },

    #[error(
        "slot {0:?} lives in a cgroup the batch system made: its limits are the batch system's, \
         set them there"
    )]
    BoundLimits(String),

    #[error("invalid signal: {0}")]
    InvalidSignal(String),

    #[error("invalid limit: {0}")]
    InvalidLimit(String),

    #[error("{limit} cannot be enforced here: {missing}")]
    LimitUnavailable { limit: &'static str, missing: &'static str },

    #[error("no user {0:?} on this machine (see `getent passwd`)")]
    UnknownUser(String),

    #[error("no group {0:?} on this machine (see `getent group`)")]
    UnknownGroup(String),

    #[error("configuration {}: {detail}", .path.display())]
    Config { path: PathBuf, detail: String },

    #[error("daemon: {0}")]
    Daemon(String),

    #[error("cannot isolate the job: {0}")]
    Isolation(String),

    #[error("another process (the daemon?) is reading the event stream: use its Watch API")]
    EventsBusy,

    #[error("invalid instance name {0:?}: use 1-32 of a-z, 0-9 and '-'")]
    InvalidInstance(String),

    #[error("invalid cgroup parent {:?}: {why}", .parent.display().to_string())]
    InvalidCgroupParent { parent: PathBuf, why: &'static str },

    #[error(
        "the instance's cgroup parent is {} (chosen at its first load), not {}: \
         `tracker unload` first to move its slots",
        .recorded.display(), .asked.display()
    )]
    CgroupParentFixed { recorded: PathBuf, asked: PathBuf },

    #[error(
        "the delegated cgroup {} is gone (systemd removes a delegated unit's cgroups when the \
         unit stops): start the unit again (`systemctl start tracker`), then retry",
        .0.display()
    )]
    DelegationGone(PathBuf),

    #[error(
        "cannot start the tracker's systemd scope {unit}: {detail}; or give `--cgroup-parent` \
         (tracker.toml: cgroup_parent) a cgroup systemd delegated"
    )]
    Scope { unit: String, detail: String },

    #[error("slot registry {}: {detail}", .path.display())]
    Registry { path: PathBuf, detail: String },

    // The cause is part of the message, not a `source`, so it is printed once.
    #[error("{context}: {cause}")]
    Io { context: String, cause: io::Error },
}

impl Error {
    /// An I/O error with what we were doing when it happened.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), cause: source }
    }

    /// An error of aya's, and what we were doing when it happened.
    pub fn bpf(what: impl Into<String>, err: impl Into<BpfError>) -> Self {
        Self::Bpf { what: what.into(), cause: Box::new(err.into()) }
    }
}

/// The errors of aya's that reach us, kept as aya made them.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(transparent)]
    Ebpf(#[from] aya::EbpfError),
    #[error(transparent)]
    Map(#[from] aya::maps::MapError),
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    #[error(transparent)]
    Pin(#[from] aya::pin::PinError),
    #[error(transparent)]
    Link(#[from] aya::programs::links::LinkError),
}

/// An error and its causes on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        let part = e.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        src = e.source();
    }
    s
}

/// Attach context to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
