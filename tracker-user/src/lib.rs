//! tracker: kernel-side process tracking, accounting and atomic kill for batch systems.
//!
//! Every descendant of a job is tagged with its slot in a BPF map at fork, in the kernel,
//! before it runs; the slot is killed by dooming it in the kernel, freezing its cgroup and
//! killing every tagged task. This library is the one API; the `tracker` CLI and daemon are
//! thin faces over [`Tracker`] and the [`loader`].
pub mod access_rules;
pub mod accounts;
mod bpf_sys;
pub mod btf;
pub mod cgroup;
mod cgroup_bind;
pub mod cgroup_events;
pub mod daemon;
pub mod error;
pub mod events;
pub mod isolation;
pub mod limits;
pub mod loader;
pub mod maps;
mod memory_link;
mod on_demand;
pub mod paths;
mod pidfd;
pub mod preflight;
pub mod procinfo;
pub mod programs;
pub mod registry;
pub mod safe_open;
mod seccomp;
pub mod status;
mod task_iter;
pub mod tracker;

pub use error::{Error, Result};
pub use isolation::Isolation;
pub use limits::Limits;
pub use loader::{LoadOptions, LoadReport, UnloadReport};
pub use paths::Paths;
pub use procinfo::ProcessInfo;
pub use tracker::{
    AdoptReport, KillOptions, KillReport, RunOptions, RunOutcome, SlotSpec, SlotStatus, Survivor,
    SuspendReport, Tracker, Usage, generated_slot_name, shell_status, validate_slot_name,
};
