//! `cargo xtask bench`: see tests/src/bin/bench.rs for what is measured.
use anyhow::Result;

use crate::{prereqs, run};

pub fn run(rounds: u32) -> Result<()> {
    prereqs::require_root()?;
    prereqs::ensure_toolchain()?;
    prereqs::ensure_kernel_filesystems()?;
    let tracker = run::build_tracker(true)?;
    let mut build = std::process::Command::new(env!("CARGO"));
    build.current_dir(run::workspace()).args([
        "build",
        "--quiet",
        "--release",
        "--package",
        "tracker-tests",
        "--bin",
        "bench",
    ]);
    run::quiet(&mut build)?;
    let bench = run::workspace().join("target/release/bench");
    run::status(
        std::process::Command::new(bench).env("TRACKER_BIN", tracker).arg(rounds.to_string()),
    )
}
