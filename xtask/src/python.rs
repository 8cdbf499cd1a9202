//! What the daemon's client tests (tests/tests/daemon.rs) need: a Python virtual environment
//! with the gRPC packages of tests/python/requirements.txt, from PyPI. Made once, and again
//! when the requirements change; one line says what was found or done.
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

fn make_venv() -> Result<(PathBuf, &'static str)> {
    let root = workspace();
    let requirements = root.join("tests/python/requirements.txt");
    let wanted = fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = PathBuf::from(VENV);
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
