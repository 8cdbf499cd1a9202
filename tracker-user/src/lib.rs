//! tracker: kernel-side process tracking, accounting and atomic kill for batch systems.
//!
//! Every descendant of a job is tagged with its slot in a BPF map at fork, in the kernel,
//! before it runs; the slot is killed by dooming it in the kernel, freezing its cgroup and
//! killing every tagged task. This library is the one API; the `tracker` CLI and daemon are
//! thin faces over [`Tracker`] and the [`loader`].
pub mod adopt;
mod bpf_sys;
pub mod btf;
pub mod cgroup;
mod cgroup_bind;
pub mod cgroup_events;
pub mod daemon;
pub mod error;
pub mod events;
pub mod isolation;
mod iter;
pub mod kill;
pub mod launch;
pub mod limits;
pub mod loader;
pub mod maps;
mod oom_guard;
pub mod paths;
mod pidfd;
pub mod policy;
pub mod procinfo;
pub mod programs;
pub mod registry;
pub mod safe_open;
mod seccomp;
pub mod signal;
pub mod status;
pub mod sys;
mod tracker;
pub mod usage;
pub mod user;

pub use adopt::AdoptReport;
pub use error::{Error, Result};
pub use isolation::Isolation;
pub use kill::{KillOptions, KillReport, Survivor};
pub use launch::{RunOptions, RunOutcome, shell_status};
pub use limits::Limits;
pub use loader::{LoadOptions, LoadReport, UnloadReport};
pub use paths::Paths;
pub use procinfo::ProcessInfo;
pub use signal::SuspendReport;
pub use tracker::{SlotSpec, SlotStatus, Tracker, generated_slot_name, validate_slot_name};
pub use usage::Usage;
