//! The Python client package (clients/python, `tracker-client`): its wheel, as `cargo xtask
//! test` built it, installed in a directory of its own, and its pytest suite run against a
//! real daemon of a test instance.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command};

use tracker_tests::{Instance, daemon::Daemon, skip};

#[test]
fn python_client_package_passes_its_tests_against_a_real_daemon() {
    let Some(inst) = Instance::start() else { return };
    let (Some(python), Some(wheel)) = (
        std::env::var_os("TRACKER_TEST_CLIENT_PYTHON"),
        std::env::var_os("TRACKER_TEST_CLIENT_WHEEL"),
    ) else {
        skip(
            "no tracker-client wheel: `cargo xtask test` builds it \
             (TRACKER_TEST_CLIENT_PYTHON, TRACKER_TEST_CLIENT_WHEEL)",
        );
        return;
    };
    // A small per-client queue, so that the loss-accounting test can overflow it.
    let d = Daemon::start(&inst, "watch_buffer_events = 64");
    let site = d.dir.join("site");
    let install = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"])
        .args(["--no-index", "--target"])
        .arg(&site)
        .arg(&wheel)
        .output()
        .unwrap();
    assert!(install.status.success(), "{}", String::from_utf8_lossy(&install.stderr));

    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python/tests");
    let out = Command::new(&python)
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-v", "-rs"])
        .arg(&tests)
        // Only the installed wheel: never the source tree, whose stubs are not generated.
        .current_dir(&d.dir)
        .env("PYTHONPATH", &site)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TRACKER_TEST_SOCKET", &d.socket)
        .env("TRACKER_TEST_SLOT_PREFIX", format!("py{}", std::process::id()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pytest failed: {}", d.log());
    let summary = text.lines().last().unwrap_or_default();
    assert!(summary.contains(" passed") && !summary.contains("skipped"), "{summary}");
    // The tests used the wheel's package, not another copy.
    let origin = Command::new(&python)
        .args(["-c", "import tracker_client; print(tracker_client.__file__)"])
        .current_dir(&d.dir)
        .env("PYTHONPATH", &site)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&origin.stdout).starts_with(site.to_str().unwrap()));
}
