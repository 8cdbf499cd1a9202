//! `cargo xtask bench`: see tests/src/bin/bench.rs for what is measured.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

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
    // Both beside the release tracker, wherever CARGO_TARGET_DIR puts it.
    let release = run::target_dir().join("release");
    let worker = build_worker(&release)?;
    let bench = release.join("bench");
    run::status(
        std::process::Command::new(bench)
            .env("TRACKER_BIN", tracker)
            .env("BENCH_WORKER", worker)
            .arg(rounds.to_string()),
    )
}

/// The timed worker, a static C program (tests/bench/worker.c): a fork of it copies little,
/// so the ratios are against the cost of a fork, not of a large process's page tables. The C
/// compiler is the one Rust links with; without a static libc it links dynamically, and says so.
fn build_worker(release: &Path) -> Result<PathBuf> {
    let ws = run::workspace();
    let src = ws.join("tests/bench/worker.c");
    let out = release.join("bench-worker");
    let cc = |extra: &[&str]| {
        std::process::Command::new("cc")
            .args(["-O2", "-Wall"])
            .args(extra)
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .output()
            .with_context(|| "running cc (the C compiler Rust links with)")
    };
    if cc(&["-static"])?.status.success() {
        return Ok(out);
    }
    let dynamic = cc(&[])?;
    if !dynamic.status.success() {
        bail!("cc could not build {}: {}", src.display(), String::from_utf8_lossy(&dynamic.stderr));
    }
    println!("xtask: no static libc (libc6-dev's libc.a): the bench worker is linked dynamically");
    Ok(out)
}
