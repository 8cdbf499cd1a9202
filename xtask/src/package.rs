//! `cargo xtask package`: the .deb (cargo-deb) and the .rpm (cargo-generate-rpm) a site puts
//! in its repository. Their contents are declared in tracker-user/Cargo.toml; this builds what
//! they hold and that cargo does not: the release binary (kernel programs embedded), the Slurm
//! SPANK plugin, shell completions and man pages (written by the binary itself, from its CLI
//! definition), in `target/tracker-package/`.
//!
//! CI machines are fresh: the two cargo subcommands are installed from crates.io, and the
//! SPANK header and `rpm` (to inspect the .rpm) from Debian, where missing.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::run::{apt_install, quiet, workspace};

/// The cargo subcommands, at versions known to read our metadata.
const CARGO_DEB: (&str, &str) = ("cargo-deb", "3.8.0");
const CARGO_GENERATE_RPM: (&str, &str) = ("cargo-generate-rpm", "0.21.1");
const SPANK_HEADER: &str = "/usr/include/slurm/spank.h";
/// Where the packages look for the binary (see the plugin's and the epilog's defaults).
const INSTALLED_BIN: &str = "/usr/bin/tracker";

pub struct Packages {
    pub deb: PathBuf,
    pub rpm: PathBuf,
}

/// Build both packages; their paths.
pub fn build() -> Result<Packages> {
    ensure_cargo_subcommand(CARGO_DEB, "deb")?;
    ensure_cargo_subcommand(CARGO_GENERATE_RPM, "generate-rpm")?;
    ensure_file("libslurm-dev", SPANK_HEADER)?;
    let bin = crate::run::build_tracker(true)?;
    let stage = workspace().join("target/tracker-package");
    // Nothing stale (a man page of a command that is gone) may slip into a package.
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    fs::create_dir_all(&stage)?;
    stage_binary(&bin, &stage)?;
    stage_completions(&bin, &stage.join("completions"))?;
    stage_man_pages(&bin, &stage)?;
    build_spank_plugin(&stage.join("spank_tracker.so"))?;

    let dist = stage.join("dist");
    fs::create_dir_all(&dist)?;
    println!("xtask: packaging the .deb (cargo-deb)");
    quiet(cargo().args(["deb", "--package", "tracker", "--no-build", "--output"]).arg(&dist))?;
    println!("xtask: packaging the .rpm (cargo-generate-rpm)");
    quiet(cargo().args(["generate-rpm", "--package", "tracker-user", "--output"]).arg(&dist))?;
    let packages = Packages { deb: only_file(&dist, ".deb")?, rpm: only_file(&dist, ".rpm")? };
    for p in [&packages.deb, &packages.rpm] {
        let size = fs::metadata(p)?.len();
        println!("xtask: {} ({} KiB)", p.display(), size / 1024);
    }
    Ok(packages)
}

/// `rpm`, to read the .rpm's file list and scriptlets (the package test).
pub fn ensure_rpm_tool() -> Result<()> {
    ensure_file("rpm", "/usr/bin/rpm")
}

fn cargo() -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(workspace());
    c
}

fn ensure_cargo_subcommand((krate, version): (&str, &str), sub: &str) -> Result<()> {
    let found = cargo().args([sub, "--version"]).output();
    if let Ok(out) = &found
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains(version)
    {
        return Ok(());
    }
    println!("xtask: {krate} {version}: installing from crates.io (a few minutes)");
    quiet(cargo().args(["install", "--quiet", "--locked", krate, "--version", version]))
        .with_context(|| format!("cannot install {krate}: `cargo install --locked {krate}`"))?;
    Ok(())
}

/// The Debian package `package` if `file` is missing.
fn ensure_file(package: &str, file: &str) -> Result<()> {
    if Path::new(file).exists() {
        return Ok(());
    }
    println!("xtask: {file}: installing {package} with apt-get");
    apt_install(&[package])
        .with_context(|| format!("cannot install {package} (for {file}): install it by hand"))
}

/// The binary the .rpm holds, without its symbol table (cargo-deb strips its own copy).
fn stage_binary(bin: &Path, stage: &Path) -> Result<()> {
    quiet(Command::new("strip").arg("--strip-all").arg("-o").arg(stage.join("tracker")).arg(bin))
        .context("stripping the binary (binutils)")?;
    Ok(())
}

fn stage_completions(bin: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    for (shell, file) in [("bash", "tracker"), ("zsh", "_tracker"), ("fish", "tracker.fish")] {
        let out = quiet(Command::new(bin).args(["completions", shell]))?;
        if out.stdout.is_empty() {
            bail!("`tracker completions {shell}` printed nothing");
        }
        fs::write(dir.join(file), &out.stdout)?;
    }
    Ok(())
}

/// `tracker man` writes one page per command; packages carry them compressed.
fn stage_man_pages(bin: &Path, stage: &Path) -> Result<()> {
    let pages = stage.join("man");
    quiet(Command::new(bin).arg("man").arg(&pages))?;
    let mut n = 0;
    for e in fs::read_dir(&pages)? {
        let page = e?.path();
        // -n: no name or time stamp inside, so that the same page makes the same bytes.
        quiet(Command::new("gzip").args(["-9", "-n"]).arg(&page))?;
        n += 1;
    }
    if n < 2 {
        bail!("`tracker man` wrote {n} page(s) into {}", pages.display());
    }
    Ok(())
}

fn build_spank_plugin(out: &Path) -> Result<()> {
    let src = workspace().join("contrib/slurm/spank_tracker.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    quiet(
        Command::new(cc)
            .args(["-O2", "-Wall", "-Werror", "-shared", "-fPIC"])
            .arg(format!("-DDEFAULT_TRACKER=\"{INSTALLED_BIN}\""))
            .arg("-o")
            .arg(out)
            .arg(&src),
    )
    .context("building the SPANK plugin")?;
    Ok(())
}

fn only_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one {suffix} in {}, found {found:?}", dir.display()),
    }
}
