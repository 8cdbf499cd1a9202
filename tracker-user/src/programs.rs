//! The declarative table of the tracker's kernel programs: what each is, how it is attached,
//! and what it needs from the kernel. The loader walks this table; a program that is not
//! `required` and fails to load costs its feature (with a warning), not the whole tracker.
use tracker_common::KF_PREEMPTIBLE_TP;

/// What a program needs from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// BTF-typed tracepoints (`tp_btf`, 5.5+). Named in the warning of a program that could
    /// not load (`ProgramSpec::describe_needs`).
    TpBtf,
    /// BPF task iterators (5.8+).
    TaskIter,
    /// `bpf_send_signal` (5.3+).
    SendSignal,
    /// A cgroup2 hierarchy to attach to, and `bpf_link` for cgroups (5.7+).
    Cgroup2,
}

impl Need {
    pub fn describe(self) -> &'static str {
        match self {
            Need::TpBtf => "tp_btf",
            Need::TaskIter => "iter/task",
            Need::SendSignal => "bpf_send_signal",
            Need::Cgroup2 => "cgroup2",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `tp_btf` program on this tracepoint.
    BtfTracePoint(&'static str),
    /// A task iterator.
    TaskIter,
    /// A `cgroup_skb` program on the instance's cgroup v2 directory (ingress or egress).
    CgroupSkb { ingress: bool },
    /// A `cgroup_sock_addr` program on the instance's cgroup v2 directory.
    CgroupSockAddr(SockAddrHook),
    /// A `cgroup_device` program on the instance's cgroup v2 directory.
    CgroupDevice,
    /// A `cgroup_sysctl` program on the root of the cgroup v2 hierarchy (every process).
    CgroupSysctl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockAddrHook {
    Connect4,
    Connect6,
    Sendmsg4,
    Sendmsg6,
}

impl SockAddrHook {
    pub fn describe(self) -> &'static str {
        match self {
            SockAddrHook::Connect4 => "cgroup/connect4",
            SockAddrHook::Connect6 => "cgroup/connect6",
            SockAddrHook::Sendmsg4 => "cgroup/sendmsg4",
            SockAddrHook::Sendmsg6 => "cgroup/sendmsg6",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// Attached at load; the link is pinned under `links/`, so it stays attached while no
    /// tracker process runs.
    Pinned,
    /// Only the program is pinned (under `progs/`); whoever needs it attaches it for as long as
    /// it needs it.
    OnDemand,
}

/// A second program for the same hook, loaded when the kernel refuses the first.
#[derive(Clone, Copy, Debug)]
pub struct Fallback {
    /// Its function name in tracker-ebpf (at most 15 bytes: the kernel keeps that much of a
    /// program's name, which is how `tracker status` tells which one runs).
    pub function: &'static str,
    /// What differs, for the load's note and `tracker status`.
    pub difference: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    /// The function name in tracker-ebpf, which is also the pin's file name.
    pub name: &'static str,
    pub kind: Kind,
    pub attach: Attach,
    pub required: bool,
    pub needs: &'static [Need],
    pub purpose: &'static str,
    pub fallback: Option<Fallback>,
    /// The function loaded instead on kernels before 5.13 (`KF_OLD_KERNEL`), which lack
    /// `bpf_get_current_task_btf` or the 5.12 atomics: its own build of the same code (see
    /// tracker-ebpf's `slot`). Chosen for every such program together, never one by one: the
    /// two builds close exited tasks in ways that do not mix. At most 15 bytes, as
    /// `Fallback::function`.
    pub old: Option<&'static str>,
    /// `KF_*` bits the kernel must have for the program to be loaded at all (0: always): a
    /// program this kernel does not call for, not a feature it lacks.
    pub only_with: u32,
}

impl ProgramSpec {
    /// Whether this kernel (its `KF_*` features) calls for the program.
    pub fn wanted(&self, features: u32) -> bool {
        features & self.only_with == self.only_with
    }

    /// The function to load: its own, or on an old kernel its `old` build.
    pub fn function(&self, old_kernel: bool) -> &'static str {
        match self.old {
            Some(f) if old_kernel => f,
            _ => self.name,
        }
    }
}

impl ProgramSpec {
    /// What the program needs from the kernel, for the line that says it was disabled.
    pub fn describe_needs(&self) -> String {
        let needs: Vec<&str> = self.needs.iter().map(|n| n.describe()).collect();
        needs.join(", ")
    }
}

pub const FORK: &str = "trk_fork";
pub const EXIT: &str = "trk_exit";
pub const EXEC: &str = "trk_exec";
pub const DEAD: &str = "trk_dead";
pub const ADOPT: &str = "trk_adopt";
pub const DOOM: &str = "trk_doom";
pub const FREE: &str = "trk_free";
pub const RSS: &str = "trk_rss";
pub const USAGE: &str = "trk_usage";
pub const NET_INGRESS: &str = "trk_net_ingress";
pub const NET_EGRESS: &str = "trk_net_egress";
pub const CGROUP_MOVE: &str = "trk_cgroup_move";
pub const DEVICE: &str = "trk_device";
pub const OOM: &str = "trk_oom";
pub const PID_MAX_GUARD: &str = "trk_pid_max";

pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        name: FORK,
        // Not `task_newtask` or `sched_process_fork`: a 7.0+ kernel may skip a run of a program
        // there (see tracker-ebpf's `fork`), and `create_io_thread` (io-wq, SQPOLL) does not
        // fire `sched_process_fork`.
        kind: Kind::BtfTracePoint("sched_wakeup_new"),
        attach: Attach::Pinned,
        required: true,
        needs: &[Need::TpBtf, Need::SendSignal],
        purpose: "tags every task a tagged task creates (threads, io_uring workers) before it runs",
        fallback: None,
        old: Some("trk_fork_old"),
        only_with: 0,
    },
    ProgramSpec {
        name: EXIT,
        kind: Kind::BtfTracePoint("sched_process_exit"),
        attach: Attach::Pinned,
        required: true,
        needs: &[Need::TpBtf],
        purpose: "untags and accounts exiting tasks",
        fallback: None,
        old: Some("trk_exit_old"),
        only_with: 0,
    },
    ProgramSpec {
        name: DEAD,
        kind: Kind::BtfTracePoint("sched_switch"),
        attach: Attach::Pinned,
        required: true,
        needs: &[Need::TpBtf],
        purpose: "closes and accounts a task whose exit the kernel skipped, at its final context \
                  switch (kernels that run tracepoint programs preemptibly, 7.0+)",
        fallback: None,
        // Its kernels all have the recent builds' helpers and atomics.
        old: None,
        only_with: KF_PREEMPTIBLE_TP,
    },
    ProgramSpec {
        name: EXEC,
        kind: Kind::BtfTracePoint("sched_process_exec"),
        attach: Attach::Pinned,
        required: true,
        needs: &[Need::TpBtf, Need::SendSignal],
        purpose: "counts execs, follows a thread that execs",
        fallback: None,
        old: Some("trk_exec_old"),
        only_with: 0,
    },
    ProgramSpec {
        name: ADOPT,
        kind: Kind::TaskIter,
        attach: Attach::Pinned,
        required: true,
        needs: &[Need::TaskIter],
        purpose: "tags an existing process tree (adopt, run)",
        fallback: None,
        old: Some("trk_adopt_old"),
        only_with: 0,
    },
    ProgramSpec {
        name: FREE,
        kind: Kind::BtfTracePoint("sched_process_free"),
        attach: Attach::Pinned,
        required: true,
        needs: &[Need::TpBtf],
        purpose: "harvests an exited task's final CPU time when the kernel frees it",
        fallback: None,
        old: Some("trk_free_old"),
        only_with: 0,
    },
    ProgramSpec {
        name: RSS,
        kind: Kind::BtfTracePoint("rss_stat"),
        // Attached only while a slot takes its memory from it (memory_link.rs): it runs at
        // every RSS change of every process of the machine.
        attach: Attach::OnDemand,
        // Without it a slot with no memory cgroup of its own would read 0: a kernel that
        // refuses it refuses the load, rather than the numbers being silently wrong.
        required: true,
        needs: &[Need::TpBtf],
        purpose: "keeps the resident memory and its peak of slots that have no memory cgroup of \
                  their own (bound slots, no memory controller, cgroup v2 before 5.19), at every \
                  change; attached only while such a slot exists",
        fallback: None,
        old: Some("trk_rss_old"),
        only_with: 0,
    },
    ProgramSpec {
        name: USAGE,
        kind: Kind::TaskIter,
        attach: Attach::Pinned,
        required: true,
        needs: &[Need::TaskIter],
        purpose: "reads what the live tagged tasks hold now (stat)",
        fallback: None,
        old: None,
        only_with: 0,
    },
    ProgramSpec {
        name: NET_INGRESS,
        kind: Kind::CgroupSkb { ingress: true },
        attach: Attach::Pinned,
        required: false,
        needs: &[Need::Cgroup2],
        purpose: "counts the packets the slots' sockets receive",
        fallback: None,
        old: None,
        only_with: 0,
    },
    ProgramSpec {
        name: NET_EGRESS,
        kind: Kind::CgroupSkb { ingress: false },
        attach: Attach::Pinned,
        required: false,
        needs: &[Need::Cgroup2],
        purpose: "counts the packets the slots' sockets send",
        fallback: None,
        old: None,
        only_with: 0,
    },
    ProgramSpec {
        name: CGROUP_MOVE,
        kind: Kind::BtfTracePoint("cgroup_attach_task"),
        attach: Attach::Pinned,
        required: false,
        needs: &[Need::TpBtf],
        purpose: "reports a tagged task moved out of its slot's cgroup (watch)",
        fallback: None,
        old: None,
        only_with: 0,
    },
    ProgramSpec {
        name: OOM,
        kind: Kind::BtfTracePoint("mark_victim"),
        attach: Attach::Pinned,
        required: false,
        needs: &[Need::TpBtf],
        purpose: "reports a tagged task chosen by the OOM killer (watch)",
        fallback: None,
        old: None,
        only_with: 0,
    },
    sock_addr("trk_connect4", SockAddrHook::Connect4),
    sock_addr("trk_connect6", SockAddrHook::Connect6),
    sock_addr("trk_sendmsg4", SockAddrHook::Sendmsg4),
    sock_addr("trk_sendmsg6", SockAddrHook::Sendmsg6),
    ProgramSpec {
        name: DEVICE,
        kind: Kind::CgroupDevice,
        attach: Attach::Pinned,
        required: false,
        needs: &[Need::Cgroup2],
        purpose: "refuses a slot the devices on its deny-list (--deny-device)",
        fallback: Some(Fallback {
            function: "trk_device_cg",
            difference: "this kernel's device programs may not read the current pid (5.15), so the \
                         deny-list follows the cgroup a task is in, not its tag",
        }),
        old: None,
        only_with: 0,
    },
    ProgramSpec {
        name: PID_MAX_GUARD,
        kind: Kind::CgroupSysctl,
        attach: Attach::Pinned,
        // Without it a raised pid_max leaves tasks untaggable: the load warns, `tag_failures`
        // counts them and run/adopt refuse a first task that could not be tagged.
        required: false,
        needs: &[Need::Cgroup2],
        purpose: "refuses a kernel.pid_max above what the tasks array can tag",
        fallback: None,
        old: None,
        only_with: 0,
    },
    ProgramSpec {
        name: DOOM,
        kind: Kind::BtfTracePoint("sys_enter"),
        attach: Attach::OnDemand,
        required: true,
        needs: &[Need::TpBtf, Need::SendSignal],
        purpose: "kills a doomed slot's tasks at their next syscall, during a kill",
        fallback: None,
        old: Some("trk_doom_old"),
        only_with: 0,
    },
];

const fn sock_addr(name: &'static str, hook: SockAddrHook) -> ProgramSpec {
    ProgramSpec {
        name,
        kind: Kind::CgroupSockAddr(hook),
        attach: Attach::Pinned,
        required: false,
        needs: &[Need::Cgroup2],
        purpose: "holds a slot's connections to its allow-list (--deny-network, --allow-connect)",
        fallback: None,
        old: None,
        only_with: 0,
    }
}

pub fn spec(name: &str) -> Option<&'static ProgramSpec> {
    PROGRAMS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_fit_what_the_kernel_keeps() {
        for p in PROGRAMS {
            for f in [Some(p.name), p.old, p.fallback.map(|f| f.function)].into_iter().flatten() {
                assert!(f.len() <= 15, "{f} is longer than the 15 bytes the kernel keeps");
            }
        }
    }

    #[test]
    fn every_program_that_closes_or_tags_tasks_has_its_old_kernel_build() {
        for name in [FORK, EXIT, EXEC, ADOPT, FREE, RSS, DOOM] {
            let p = spec(name).unwrap();
            assert_eq!(p.function(true), format!("{name}_old"));
            assert_eq!(p.function(false), name);
        }
    }

    #[test]
    fn a_program_that_may_be_disabled_says_what_it_needs() {
        for p in PROGRAMS.iter().filter(|p| !p.required) {
            assert!(!p.describe_needs().is_empty(), "{} lists no needs", p.name);
        }
    }
}
