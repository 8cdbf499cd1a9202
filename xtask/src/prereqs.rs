//! Check, and install where missing, what building and loading the tracker needs:
//! LLVM 22 (Debian), bpf-linker built against it, the nightly toolchain's `rust-src`, and the
//! kernel's tracefs and bpffs mounts. Each step says what it found or did in one line; a step
//! that cannot be done is one line saying what to do.
use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::run::quiet;

const LLVM_MAJOR: &str = "22";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn require_root() -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root: loading BPF programs and making cgroups need it");
    }
    Ok(())
}

pub fn ensure_toolchain() -> Result<()> {
    ensure_llvm()?;
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()
}

fn say(what: &str) {
    println!("xtask: {what}");
}

fn ensure_llvm() -> Result<()> {
    if Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        say(&format!("LLVM {LLVM_MAJOR}: found in {LLVM_PREFIX}"));
        return Ok(());
    }
    say(&format!("LLVM {LLVM_MAJOR}: installing {} with apt-get", LLVM_PACKAGES.join(" ")));
    crate::run::apt_install(LLVM_PACKAGES).context(format!(
        "cannot install LLVM {LLVM_MAJOR}: install {} by hand (Debian/Ubuntu apt repositories)",
        LLVM_PACKAGES.join(" ")
    ))
}

/// bpf-linker reads the LLVM bitcode rustc writes, so nightly's LLVM must be the one
/// bpf-linker is built against.
fn ensure_nightly() -> Result<()> {
    let out = quiet(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .context("the nightly toolchain is missing: `rustup toolchain install nightly`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let llvm =
        text.lines().find_map(|l| l.strip_prefix("LLVM version: ")).unwrap_or("unknown").to_owned();
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!(
            "nightly rustc uses LLVM {llvm}, but bpf-linker is built for LLVM {LLVM_MAJOR}: \
             install a nightly whose `rustc -vV` says LLVM {LLVM_MAJOR}"
        );
    }
    say(&format!("nightly toolchain: LLVM {llvm}"));
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let out = quiet(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) {
        say("nightly rust-src: installed");
        return Ok(());
    }
    say("nightly rust-src: installing");
    quiet(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .map(|_| ())
        .context("cannot add rust-src: `rustup component add rust-src --toolchain nightly`")
}

fn ensure_bpf_linker() -> Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output()
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        say(&format!("bpf-linker {BPF_LINKER_VERSION}: installed"));
        return Ok(());
    }
    say(&format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against LLVM {LLVM_MAJOR} (about a minute)"
    ));
    let mut c = Command::new(env!("CARGO"));
    c.args(["install", "--quiet", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")])
        // Without these it finds Debian's default llvm-config (LLVM 14) and cannot link.
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env(format!("LLVM_SYS_{LLVM_MAJOR}1_PREFIX"), LLVM_PREFIX);
    quiet(&mut c).map(|_| ()).context("cannot build bpf-linker")?;
    if Command::new("bpf-linker").arg("--version").output().is_err() {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// Mount tracefs and bpffs where they are not mounted; bpffs root-only (mode 0700: by
/// default its root is 1777, where anyone may make the directory the tracker pins in).
/// The tools the kernel tests run besides the tracker, with the Debian package of each.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("gcc", "gcc"),
    ("nm", "binutils"),
    ("prlimit", "util-linux"),
    ("setpriv", "util-linux"),
    ("ss", "iproute2"),
];

/// Install what the kernel tests need and a minimal image may lack.
pub fn ensure_test_tools() -> Result<()> {
    let mut missing: Vec<&str> =
        TEST_TOOLS.iter().filter(|(t, _)| !crate::run::on_path(t)).map(|(_, p)| *p).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!("the tests need {}: installing with apt-get", missing.join(" ")));
    crate::run::apt_install(&missing)
        .context(format!("cannot install {}: install them by hand", missing.join(" ")))
}

pub fn ensure_kernel_filesystems() -> Result<()> {
    for (fstype, dir) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        if is_mounted(fstype, dir)? {
            say(&format!("{fstype}: mounted at {dir}"));
            if fstype == "bpf" {
                warn_if_open(dir);
            }
            continue;
        }
        say(&format!("{fstype}: mounting at {dir}"));
        mount_fs(fstype, dir)?;
    }
    Ok(())
}

fn mount_fs(fstype: &str, dir: &str) -> Result<()> {
    let mut c = Command::new("mount");
    c.args(["-t", fstype]);
    if fstype == "bpf" {
        c.args(["-o", "mode=0700"]);
    }
    quiet(c.args([fstype, dir])).map(|_| ()).with_context(|| {
        format!("cannot mount {fstype} at {dir}: `mount -t {fstype} {fstype} {dir}`")
    })
}

/// A bpffs someone else mounted may be open to all: say so (the loader still refuses any pin
/// directory it did not make), but leave the machine's mounts alone.
fn warn_if_open(dir: &str) {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(m) = fs::metadata(dir)
        && m.mode() & 0o022 != 0
    {
        say(&format!(
            "bpf: {dir} has mode {:04o}: anyone may make directories there; \
             `mount -o remount,mode=0700 {dir}` closes it",
            m.mode() & 0o7777
        ));
    }
}

fn is_mounted(fstype: &str, dir: &str) -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(1) == Some(&dir) && f.get(2) == Some(&fstype)
    }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn bpffs_is_mounted_root_only() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: cannot mount bpffs to check its mode");
            return;
        }
        let dir = std::env::temp_dir().join(format!("xtask-bpffs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap();
        mount_fs("bpf", d).unwrap();
        let mode = fs::metadata(&dir).unwrap().mode() & 0o7777;
        let _ = Command::new("umount").arg(d).status();
        let _ = fs::remove_dir(&dir);
        // bpffs keeps the sticky bit whatever the mode: 1700.
        assert_eq!(mode & 0o777, 0o700, "bpffs mounted with mode {mode:04o}");
    }
}
