//! `cargo xtask test`: formatting, lints, unit tests and real-kernel tests, as CI runs them.
//!
//! Under `CI=true` the kernel tests run strict: a core test that would skip fails instead.
use std::{fs, process::Command};

use anyhow::Result;

use crate::{prereqs, run};

/// Test instances are named `t-<pid of the test process>-<n>` (see tests/src/lib.rs).
const TEST_INSTANCE_PREFIX: &str = "t-";

pub fn run(filter: Option<&str>) -> Result<()> {
    prereqs::require_root()?;
    prereqs::ensure_toolchain()?;
    prereqs::ensure_kernel_filesystems()?;
    let strict = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");

    println!("xtask: checking formatting");
    run::quiet(cargo().args(["fmt", "--all", "--", "--check"]))?;
    println!("xtask: clippy");
    run::quiet(cargo().args(["clippy", "--quiet", "--all-targets", "--", "-D", "warnings"]))?;

    let bin = run::build_tracker(false)?;
    remove_stale_instances(&bin);

    crate::slurm::ensure_packages();
    let mut test = cargo();
    test.args(["test", "--no-fail-fast"]).env("TRACKER_BIN", &bin);
    if let Some(python) = crate::python::ensure_venv() {
        test.env("TRACKER_TEST_PYTHON", python);
    }
    if strict {
        test.env("TRACKER_TEST_STRICT", "1");
        println!("xtask: CI: kernel tests may not skip");
    }
    if let Some(f) = filter {
        test.arg(f);
    }
    run::status(&mut test)
}

fn cargo() -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(run::workspace());
    c
}

/// Unload test instances left by a test process that was killed before it could clean up.
fn remove_stale_instances(bin: &std::path::Path) {
    let Ok(entries) = fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TEST_INSTANCE_PREFIX) else {
            continue;
        };
        let owner = rest.split('-').next().unwrap_or_default();
        if owner.is_empty() || fs::metadata(format!("/proc/{owner}")).is_ok() {
            continue;
        }
        println!("xtask: removing stale test instance {name}");
        let _ = Command::new(bin).args(["--instance", &name, "unload", "--force"]).output();
    }
}
