//! Running commands: quietly when they succeed, with the tail of their output when not.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask's parent directory).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Run `cmd` with its output captured; on failure, the error carries the last lines.
pub fn quiet(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot start {}", show(cmd)))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> =
            text.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("{} failed ({}):\n{}", show(cmd), out.status, tail.join("\n"));
    }
    Ok(out)
}

/// `apt-get update` then `apt-get install` of Debian packages, quietly.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        quiet(&mut c).map(|_| ())
    };
    apt(&["update", "-qq"])?;
    apt(&[&["install", "-y", "-qq"][..], packages].concat())
}

/// Whether `tool` is an executable on `PATH` (or in the sbin directories root has).
pub fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(tool).is_file())
}

/// Run `cmd` with its output shown as it comes.
pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("cannot start {}", show(cmd)))?;
    if !st.success() {
        bail!("{} failed ({st})", show(cmd));
    }
    Ok(())
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Build the `tracker` binary (and, through its build script, the kernel programs).
pub fn build_tracker(release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace()).args([
        "build",
        "--quiet",
        "--package",
        "tracker",
        "--bin",
        "tracker",
    ]);
    if release {
        cmd.arg("--release");
    }
    println!("xtask: building tracker ({})", if release { "release" } else { "debug" });
    quiet(&mut cmd)?;
    let bin = target_dir().join(if release { "release" } else { "debug" }).join("tracker");
    if !bin.exists() {
        bail!("the build did not produce {}", bin.display());
    }
    Ok(bin)
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace, where cargo runs
/// here), else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), |d| workspace().join(d))
}

/// Copy `bin` into `dir` atomically (a running tracker keeps its old binary).
pub fn install(bin: &Path, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = dir.join("tracker");
    let tmp = dir.join(".tracker.new");
    fs::copy(bin, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    Ok(dest)
}
