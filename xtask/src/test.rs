//! `cargo xtask test`: formatting, lints, unit tests and real-kernel tests, as CI runs them.
//!
//! Under `CI=true` the kernel tests run strict: a core test that would skip fails instead.
use std::{fs, path::Path, process::Command};

use anyhow::Result;

use crate::{prereqs, run};

/// Test instances are named `t-<pid of the test process>-<n>` (see tests/src/lib.rs).
const TEST_INSTANCE_PREFIX: &str = "t-";

pub fn run(filter: Option<&str>) -> Result<()> {
    prereqs::require_root()?;
    prereqs::ensure_toolchain()?;
    prereqs::ensure_kernel_filesystems()?;
    prereqs::ensure_test_tools()?;
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
    if wanted(filter, PYTHON_CLIENT_TESTS)
        && let Some((python, wheel)) = crate::python::ensure_client()
    {
        test.env("TRACKER_TEST_CLIENT_PYTHON", python).env("TRACKER_TEST_CLIENT_WHEEL", wheel);
    }
    if wanted(filter, PACKAGE_TESTS) {
        package_tests(&mut test);
    }
    if strict {
        test.env("TRACKER_TEST_STRICT", "1");
        println!("xtask: CI: kernel tests may not skip");
    }
    if let Some(f) = filter {
        test.arg(f);
    }
    run::status(&mut test)?;
    // The programs' `_old` builds (kernels before 5.13, see tracker-user's programs.rs) load
    // and run here too: the suites that tag, account, follow and kill tasks, once more on them.
    println!("xtask: the tagging suites again, on the programs' builds for kernels before 5.13");
    run::status(&mut again(&bin, strict, filter, "TRACKER_OLD_KERNEL_PROGRAMS"))?;
    // A 7.0+ kernel may skip a run of the exit program; its backstop at a task's final
    // context switch closes what it leaves. Here the exit program leaves every tagged task to
    // it, so the backstop does the whole of the exit accounting that these suites check.
    println!("xtask: the tagging suites again, every exit left to the exit backstop (trk_dead)");
    run::status(&mut again(&bin, strict, filter, "TRACKER_TEST_SKIP_RUNS"))
}

/// The tagging suites once more, with `variable` set to 1.
fn again(bin: &Path, strict: bool, filter: Option<&str>, variable: &str) -> Command {
    let mut c = cargo();
    c.args(["test", "--no-fail-fast", "--package", "tracker-tests"])
        .env("TRACKER_BIN", bin)
        .env(variable, "1");
    for suite in TAGGING_SUITES {
        c.args(["--test", suite]);
    }
    if strict {
        c.env("TRACKER_TEST_STRICT", "1");
    }
    if let Some(f) = filter {
        c.arg(f);
    }
    c
}

/// The suites run again on the old builds, and with every exit left to the backstop.
const TAGGING_SUITES: &[&str] =
    &["accounting", "bound", "containment", "escapes", "events", "lifecycle", "signals"];

/// The tests that need the packages (tests/tests/package.rs), a release build and minutes
/// of CPU, and those that need the client's wheel (tests/tests/python_client.rs): built only
/// when a test that uses them is to run.
const PACKAGE_TESTS: &[&str] = &[
    "package_deb_installs_runs_a_contained_job_and_removes_without_a_pin",
    "package_rpm_holds_every_file_and_its_scriptlets_unload_on_erase",
];
const PYTHON_CLIENT_TESTS: &[&str] =
    &["python_client_package_passes_its_tests_against_a_real_daemon"];

/// Whether `cargo test FILTER` runs any of `tests` (it runs those whose name contains it).
fn wanted(filter: Option<&str>, tests: &[&str]) -> bool {
    filter.is_none_or(|f| tests.iter().any(|t| t.contains(f)))
}

fn package_tests(test: &mut Command) {
    let built = crate::package::build().and_then(|p| {
        crate::package::ensure_rpm_tool()?;
        Ok(p)
    });
    match built {
        Ok(p) => {
            test.env("TRACKER_TEST_DEB", p.deb).env("TRACKER_TEST_RPM", p.rpm);
        }
        Err(e) => println!(
            "xtask: packages: cannot build them ({}); the package tests will skip (fail under CI)",
            format!("{e:#}").lines().next().unwrap_or_default()
        ),
    }
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
