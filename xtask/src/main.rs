//! Project tasks, run as `cargo xtask <task>`:
//! - `build-and-load`: install what is missing, build, install `tracker` on PATH, load it;
//! - `test`: every check and test, unit and real-kernel (what CI runs);
//! - `check`: formatting, lints and unit tests as any user, without the BPF toolchain;
//! - `bench`: overhead and kill-time benchmarks against a no-tracker baseline;
//! - `package`: the .deb and .rpm packages sites install (and the Python client's wheel).
//! - `test-vm`: the real-kernel suites in a VM per kernel (Ubuntu's 5.15 and 6.8, Debian's 6.1,
//!   6.12, 6.18 and 7.x), pure cgroup v2.
mod bench;
mod check;
mod package;
mod prereqs;
mod python;
mod run;
mod slurm;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install prerequisites, build, install `tracker` on PATH and load (or upgrade) it
    BuildAndLoad {
        /// Where to install the binary
        #[arg(long, default_value = "/usr/local/bin")]
        bin_dir: std::path::PathBuf,
        /// Extra arguments for `tracker load` (e.g. --max-slots 4096)
        #[arg(trailing_var_arg = true)]
        load_args: Vec<String>,
    },
    /// Run every check and test, unit and real-kernel
    Test {
        /// Only run tests whose name contains this
        filter: Option<String>,
    },
    /// Formatting, lints and unit tests, as any user, without root or the BPF toolchain
    Check,
    /// Measure the tracker's overhead and kill time against a no-tracker baseline
    Bench {
        /// Repetitions of each interleaved round
        #[arg(long, default_value_t = 15)]
        rounds: u32,
    },
    /// Build the .deb and .rpm packages (target/tracker-package/dist) and the Python client's
    /// wheel
    Package,
    /// Run the real-kernel suites in a VM on each kernel (software emulation: slow), pure cgroup v2
    TestVm {
        /// Kernel series (5.10, 5.15, 6.1, 6.8, 6.12, 6.18; 7 for the newest 7.x; comma-separated), or `all`
        #[arg(long, default_value = "6.1")]
        kernel: String,
        /// Suites to run (tests/tests/<suite>.rs), comma-separated; default all but `package`
        #[arg(long, value_delimiter = ',')]
        suites: Vec<String>,
        /// Only tests whose name contains one of these (comma-separated)
        #[arg(long, value_delimiter = ',')]
        filter: Vec<String>,
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        #[arg(long, default_value = "3G")]
        memory: String,
        /// Minutes after which a guest is stopped and its run counted as failed: a guard
        /// against hangs; every suite takes about 50 min alone under emulation here, and more
        /// beside other VMs (a 60-minute limit stopped such a run that was passing)
        #[arg(long, default_value_t = 120)]
        timeout_minutes: u64,
        /// Boot systemd as PID 1 (the host's, with the guest's own units): the suites run
        /// beside it, as on a site's node
        #[arg(long)]
        systemd: bool,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::BuildAndLoad { bin_dir, load_args } => build_and_load(&bin_dir, &load_args),
        Task::Test { filter } => test::run(filter.as_deref()),
        Task::Check => check::run(),
        Task::Bench { rounds } => bench::run(rounds),
        Task::Package => package(),
        Task::TestVm { kernel, suites, filter, cpus, memory, timeout_minutes, systemd } => {
            vm::run(&vm::Options {
                kernel,
                suites,
                filters: filter,
                cpus,
                memory,
                timeout_minutes,
                systemd,
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_and_load(bin_dir: &std::path::Path, load_args: &[String]) -> anyhow::Result<()> {
    prereqs::require_root()?;
    prereqs::ensure_toolchain()?;
    prereqs::ensure_kernel_filesystems()?;
    let built = run::build_tracker(true)?;
    let installed = run::install(&built, bin_dir)?;
    println!("xtask: installed {}", installed.display());
    run::status(std::process::Command::new(&installed).arg("load").args(load_args))
}

fn package() -> anyhow::Result<()> {
    prereqs::ensure_toolchain()?;
    let packages = package::build()?;
    let wheel = python::build_client_wheel()?;
    for p in [&packages.deb, &packages.rpm, &wheel] {
        println!("{}", p.display());
    }
    Ok(())
}
