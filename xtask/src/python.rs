//! What the Python tests need, in Python virtual environments made once, and again when
//! their pinned requirements change (one line says what was found or done):
//! - the daemon's client tests (tests/tests/daemon.rs): the gRPC packages of
//!   tests/python/requirements.txt;
//! - the client package, clients/python (`tracker-client`): its build and test requirements
//!   (clients/python/requirements-test.txt), in an environment of its own, and its wheel,
//!   built from the source with the stubs generated from the .proto
//!   (tests/tests/python_client.rs installs and tests it).
//!
//! The tests run the client as other users too (to see them refused), so the environment
//! must be usable by anyone: it is made from the system's Python (`/usr/bin/python3`, not a
//! pyenv under root's 0700 home) in a world-readable directory outside the checkout (which
//! may itself be under a private directory).
use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::run::{quiet, workspace};

const SYSTEM_PYTHON: &str = "/usr/bin/python3";
const VENV: &str = "/var/tmp/tracker-tests/python";
const CLIENT_VENV: &str = "/var/tmp/tracker-tests/python-client";
const CLIENT_SRC: &str = "clients/python";

/// The environment's Python, for the tests (`TRACKER_TEST_PYTHON`), or None (after saying
/// why: the client tests then skip, and fail under CI).
pub fn ensure_venv() -> Option<PathBuf> {
    match make_venv() {
        Ok((python, did)) => {
            println!("xtask: Python gRPC client (for the daemon tests): {did}");
            Some(python)
        }
        Err(e) => {
            println!(
                "xtask: Python gRPC client (for the daemon tests): cannot install ({}); \
                 those tests will skip (fail under CI)",
                e.to_string().lines().next().unwrap_or_default()
            );
            None
        }
    }
}

/// The client package's environment and its freshly built wheel, for the tests
/// (`TRACKER_TEST_CLIENT_PYTHON`, `TRACKER_TEST_CLIENT_WHEEL`), or None after saying why.
pub fn ensure_client() -> Option<(PathBuf, PathBuf)> {
    match build_client_wheel() {
        Ok(wheel) => Some((PathBuf::from(CLIENT_VENV).join("bin/python3"), wheel)),
        Err(e) => {
            println!(
                "xtask: Python client package: cannot build it ({}); its tests will skip \
                 (fail under CI)",
                e.to_string().lines().next().unwrap_or_default()
            );
            None
        }
    }
}

/// Build the `tracker-client` wheel into target/python-client; its path.
pub fn build_client_wheel() -> Result<PathBuf> {
    let (python, did) =
        make_venv_from(CLIENT_VENV, &format!("{CLIENT_SRC}/requirements-test.txt"))?;
    println!("xtask: Python client package's environment: {did}");
    let src = workspace().join(CLIENT_SRC);
    let dist = workspace().join("target/python-client");
    // setuptools builds in the source tree: nothing of an earlier build may end up inside.
    for stale in [src.join("build"), src.join("src/tracker_client.egg-info"), dist.clone()] {
        if stale.exists() {
            fs::remove_dir_all(&stale).with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    println!("xtask: building the tracker-client wheel (stubs from proto/)");
    // Without build isolation: the pinned grpcio-tools and setuptools of the environment
    // generate the stubs, offline once installed.
    quiet(
        Command::new(&python)
            .args(["-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps"])
            .args(["--no-build-isolation", "--wheel-dir"])
            .arg(&dist)
            .arg(&src),
    )?;
    let _ = fs::remove_dir_all(src.join("build"));
    let _ = fs::remove_dir_all(src.join("src/tracker_client.egg-info"));
    let wheel = fs::read_dir(&dist)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip wheel wrote no wheel into {}", dist.display()))?;
    Ok(wheel)
}

fn make_venv() -> Result<(PathBuf, &'static str)> {
    make_venv_from(VENV, "tests/python/requirements.txt")
}

/// The virtual environment at `venv` with the pinned `requirements` (a path in the
/// workspace) installed: its Python, and what was done.
fn make_venv_from(venv: &str, requirements: &str) -> Result<(PathBuf, &'static str)> {
    let root = workspace();
    let requirements = root.join(requirements);
    let wanted = fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = PathBuf::from(venv);
    let python = venv.join("bin/python3");
    let stamp = venv.join("requirements.installed");
    if python.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok((python, "found"));
    }
    if let Some(parent) = venv.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    // The system Python lacks its venv module until Debian's python3-venv is installed.
    if quiet(Command::new(SYSTEM_PYTHON).args(["-c", "import ensurepip, venv"])).is_err() {
        crate::run::apt_install(&["python3-venv"])?;
    }
    quiet(Command::new(SYSTEM_PYTHON).args(["-m", "venv", "--clear"]).arg(&venv))?;
    quiet(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
    )?;
    fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok((python, "installed from PyPI"))
}
