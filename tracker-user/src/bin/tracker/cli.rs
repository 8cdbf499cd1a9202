//! The command line, declared with clap.
use std::ffi::OsString;

use clap::{ArgAction, Parser, Subcommand};
use tracker::loader::DEFAULT_MAX_SLOTS;

#[derive(Debug, Parser)]
#[command(
    name = "tracker",
    version,
    about = "Track every process of a batch job in the kernel, account it, and kill all of it.",
    propagate_version = true
)]
pub struct Cli {
    /// Tracker instance: its own pins, state and cgroups [default: $TRACKER_INSTANCE, else tracker]
    #[arg(long, global = true, value_name = "NAME")]
    pub instance: Option<String>,

    /// More log output (-v info, -vv debug); TRACKER_LOG overrides
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the kernel programs and pin them (again: upgrade them, keeping every slot)
    Load {
        /// Slots the kernel maps make room for (fixed when the maps are first created)
        #[arg(long, default_value_t = DEFAULT_MAX_SLOTS)]
        max_slots: u32,
        /// The slots' cgroup2 parent, relative to the cgroup2 root (e.g.
        /// system.slice/slurmstepd.scope/tracker), fixed at the first load [default: under the
        /// delegated cgroup this runs in, else in the tracker's own systemd scope
        /// (system.slice/tracker.scope/tracker) where systemd runs the machine, else the
        /// instance's name under the root]
        #[arg(long, value_name = "REL")]
        cgroup_parent: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// What is loaded, where it is pinned, and which kernel features were found
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Detach every program and remove every pin, cgroup and state file
    Unload {
        /// Unload even while slots have live tasks (they stop being tracked)
        #[arg(long)]
        force: bool,
    },
    /// Create an empty slot, to adopt processes into
    Create {
        slot: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// The uid that owns the slot [default: the caller's]
        #[arg(long)]
        owner: Option<u32>,
        /// Succeed if the slot exists already (every step of a job creates the job's slot)
        #[arg(long)]
        exist_ok: bool,
        /// Bind the slot to this existing cgroup (the batch system's, e.g. slurm/uid_0/job_42
        /// under every hierarchy root, or an absolute path) instead of making its own: adopt
        /// then only tags, nothing is moved out of it, release leaves it
        #[arg(long, value_name = "PATH")]
        cgroup: Option<std::path::PathBuf>,
    },
    /// Run a command as the first task of a new slot
    Run {
        /// Name of the new slot [default: generated]
        #[arg(long)]
        slot: Option<String>,
        /// Print the slot name and return at once; the slot lives until `tracker kill`
        #[arg(long)]
        detach: bool,
        /// With --detach: append the command's stdout and stderr to FILE [default: /dev/null]
        #[arg(long, value_name = "FILE", requires = "detach")]
        output: Option<std::path::PathBuf>,
        /// Keep the slot after the command ends, for later queries (release it yourself)
        #[arg(long, conflicts_with = "detach")]
        keep: bool,
        /// Seconds to wait for leftovers to die before reporting survivors
        #[arg(long, default_value_t = 10.0)]
        kill_timeout: f64,
        /// Also write the whole tree's usage (as `tracker stat --json`) to FILE
        #[arg(long, value_name = "FILE", conflicts_with = "detach")]
        summary: Option<std::path::PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        isolation: IsolationArgs,
        /// Bind the new slot to this existing cgroup (as `create --cgroup`): the command runs
        /// where this process is, e.g. in the cgroup a batch system made for the job
        #[arg(long, value_name = "PATH")]
        cgroup: Option<std::path::PathBuf>,
        /// The command and its arguments
        #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Every slot with its live task count
    Slots {
        #[arg(long)]
        json: bool,
    },
    /// A slot's usage now: CPU, memory, I/O, network, tasks (live and exited together)
    Stat {
        slot: String,
        #[arg(long)]
        json: bool,
    },
    /// Every live process of a slot
    Ps {
        slot: String,
        /// One row per thread
        #[arg(long)]
        threads: bool,
        #[arg(long)]
        json: bool,
    },
    /// Put an existing process and all its descendants into a slot (a bound slot: tag only)
    Adopt { slot: String, pid: u32 },
    /// Freeze and kill everything in a slot; exits 0 only when the slot is empty
    Kill {
        slot: String,
        /// Seconds to wait for the slot to empty before reporting survivors
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        #[arg(long)]
        json: bool,
    },
    /// Send a signal to every process of a slot
    Signal {
        slot: String,
        /// A name (TERM, SIGUSR1) or a number (15)
        #[arg(value_parser = parse_signal)]
        signal: i32,
    },
    /// Stop every process of a slot where it is (freeze its cgroup, SIGSTOP what left it)
    Freeze { slot: String },
    /// Let a frozen slot run again
    Thaw { slot: String },
    /// Forget an empty slot
    Release { slot: String },
    /// Change the limits of a running slot (only those given)
    Set {
        slot: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Serve the gRPC API (Unix socket) and Prometheus metrics, until SIGTERM
    Daemon {
        /// The site configuration [default: $TRACKER_CONFIG, else /etc/tracker/tracker.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
    },
    /// Print the events of tagged tasks as they happen (fork, exec, exit, slot empty, ...)
    Watch {
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Docs(DocsCommand),
}

/// Commands about the command line itself: they need no tracker instance (and no root).
#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Print a completion script for SHELL (e.g. `tracker completions bash > /etc/bash_completion.d/tracker`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write a man page for tracker and one for each of its commands into DIR
    Man {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitArgs {
    /// Memory of the whole slot (e.g. 512M, 4G); beyond it the whole slot is killed
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_max: Option<u64>,
    /// At most N live tasks (threads included); a fork beyond fails with EAGAIN
    #[arg(long, value_name = "N")]
    pub tasks_max: Option<u64>,
    /// CPU share, 1-10000 (100 is everyone's default)
    #[arg(long, value_name = "N")]
    pub cpu_weight: Option<u64>,
    /// CPU cap, in percent of one CPU (150 = one and a half CPUs)
    #[arg(long, value_name = "PERCENT")]
    pub cpu_quota: Option<f64>,
    /// No outbound connection at all (EPERM in the job)
    #[arg(long, conflicts_with = "allow_connect")]
    pub deny_network: bool,
    /// Outbound connections only to CIDR[:PORT],... (e.g. 10.0.0.0/8:443,[::1]:22)
    #[arg(long, value_name = "LIST", value_parser = parse_allow)]
    pub allow_connect: Option<AllowList>,
    /// Devices the job may not open, MAJOR:MINOR,... (MINOR may be *; e.g. 195:* hides NVIDIA GPUs)
    #[arg(long, value_name = "LIST", value_parser = parse_devices)]
    pub deny_device: Option<DeviceList>,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct IsolationArgs {
    /// Give the job its own /tmp and /var/tmp (removed when the slot is released)
    #[arg(long)]
    pub private_tmp: bool,
    /// Run the job in its own PID namespace (it sees and signals only its own processes)
    #[arg(long)]
    pub pid_ns: bool,
    /// Run the job chrooted into DIR, the working directory bind-mounted inside
    #[arg(long, value_name = "DIR", conflicts_with = "root_name")]
    pub root: Option<std::path::PathBuf>,
    /// Run the job in the root directory NAME of the site configuration's [roots] table
    #[arg(long, value_name = "NAME")]
    pub root_name: Option<String>,
    /// Run the job as USER (name or uid), with no_new_privs and no capabilities
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Run a job that keeps uid 0 without the root-job guard (which keeps it from bpf, mount,
    /// ptrace, modules and bpffs; see the README's threat model)
    #[arg(long)]
    pub no_root_guard: bool,
}

impl IsolationArgs {
    pub fn to_isolation(&self) -> tracker::Result<tracker::Isolation> {
        let root = match &self.root_name {
            Some(name) => {
                Some(tracker::isolation::named_root(&tracker::Paths::config_file(), name)?)
            }
            None => self.root.clone(),
        };
        Ok(tracker::Isolation {
            private_tmp: self.private_tmp,
            pid_ns: self.pid_ns,
            root,
            user: self.user.clone(),
            no_root_guard: self.no_root_guard,
        })
    }
}

/// Lists parse as one value each (clap would take a bare `Vec` for repeated values).
#[derive(Debug, Clone)]
pub struct AllowList(Vec<tracker::limits::AllowRule>);

#[derive(Debug, Clone)]
pub struct DeviceList(Vec<tracker::limits::DeviceRule>);

fn parse_allow(s: &str) -> Result<AllowList, String> {
    tracker::limits::parse_allow_list(s).map(AllowList).map_err(|e| e.to_string())
}

fn parse_devices(s: &str) -> Result<DeviceList, String> {
    tracker::limits::parse_devices(s).map(DeviceList).map_err(|e| e.to_string())
}

fn parse_signal(s: &str) -> Result<i32, String> {
    tracker::tracker::parse_signal(s).map_err(|e| e.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    tracker::limits::parse_size(s).map_err(|e| e.to_string())
}

impl LimitArgs {
    /// The limits given, checked.
    pub fn to_limits(&self) -> tracker::Result<tracker::Limits> {
        tracker::limits::RawLimits {
            tasks_max: self.tasks_max,
            memory_max: self.memory_max,
            cpu_weight: self.cpu_weight,
            cpu_quota_percent: self.cpu_quota,
            network: if self.deny_network {
                Some(vec![])
            } else {
                self.allow_connect.clone().map(|l| l.0)
            },
            deny_devices: self.deny_device.clone().map(|d| d.0).unwrap_or_default(),
        }
        .try_into()
    }
}
