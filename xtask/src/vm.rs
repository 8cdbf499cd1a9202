//! `cargo xtask test-vm`: the real-kernel suites inside a VM, per kernel, on pure cgroup v2.
//!
//! Everything it needs it installs itself, as a fresh CI machine has none of it: QEMU (from
//! bookworm-backports on Debian 12, whose QEMU utilities are that version already), virtme-ng
//! (PyPI, in a virtual environment), Debian's own kernel packages (downloaded and unpacked,
//! never installed: a private apt configuration, so the machine's sources stay as they were).
//! The guest boots with the host's root read-only over 9p (`vng`) under software emulation:
//! this machine's `/dev/kvm` is a nested PVM that hangs stock kernels. The test binaries are
//! built here by cargo and run inside the guest; one line per kernel says how it went.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::run::{on_path, quiet, workspace};

/// Cache of everything downloaded or made (kernels, the venv, the disk images, the logs).
const ROOT: &str = "/var/tmp/tracker-vm";
/// The kernels `--kernel all` runs, oldest first: Debian 11's (the oldest; the programs'
/// `_old` builds), Ubuntu 22.04's (beside RHEL 9's 5.14), Debian 12's, Ubuntu 24.04's,
/// Debian 13's (RHEL 10's base), and Debian's backports of the newest lines (`7`: the newest
/// 7.x there).
pub const KERNELS: &[&str] = &["5.10", "5.15", "6.1", "6.8", "6.12", "6.18", "7"];
const UBUNTU_ARCHIVE: &str = "http://archive.ubuntu.com/ubuntu";
const UBUNTU_KEYRING: &str = "/usr/share/keyrings/ubuntu-archive-keyring.gpg";

/// Where a kernel series' packages come from: the distribution that ships it to sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Distro {
    Debian,
    Ubuntu,
}

fn distro_of(series: &str) -> Distro {
    match series {
        "5.15" | "6.8" => Distro::Ubuntu,
        _ => Distro::Debian,
    }
}
/// virtme-ng, pinned: its command line and guest layout are what the guest script expects.
const VIRTME_NG: &str = "virtme-ng==1.42";
const DEBIAN_ARCHIVE: &str = "http://deb.debian.org/debian";
const DEBIAN_SECURITY: &str = "http://deb.debian.org/debian-security";
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

#[derive(Clone, Debug)]
pub struct Options {
    /// Kernel series (`6.1`), or `all`.
    pub kernel: String,
    /// Suites (tests/tests/<suite>.rs) to run; empty: all.
    pub suites: Vec<String>,
    /// Only tests whose name contains one of these.
    pub filters: Vec<String>,
    pub cpus: u32,
    pub memory: String,
    /// Minutes after which a guest that has not finished is stopped (a hang is a failure).
    pub timeout_minutes: u64,
    /// Boot systemd as PID 1.
    pub systemd: bool,
}

/// What one kernel's run came to.
struct Outcome {
    kernel: String,
    passed: u32,
    failed: u32,
    skipped: u32,
    /// Set when the run did not get as far as the tests (boot, setup) or a suite crashed.
    problem: Option<String>,
    minutes: f64,
    /// What failed, as the suites' logs say it: each failed test and its panic message.
    failures: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    crate::prereqs::require_root()?;
    // On a fresh machine test-vm may be the first command: the build needs bpf-linker too.
    crate::prereqs::ensure_toolchain()?;
    // The guest runs the tests from the host's root.
    crate::prereqs::ensure_test_tools()?;
    let kernels: Vec<String> = if opts.kernel == "all" {
        KERNELS.iter().map(|k| (*k).to_owned()).collect()
    } else {
        opts.kernel.split(',').map(str::to_owned).collect()
    };
    ensure_host_packages(opts.systemd)?;
    let vng = ensure_vng()?;
    let wants = |suite: &str| opts.suites.is_empty() || opts.suites.iter().any(|s| s == suite);
    // The daemon suite drives the API from Python's gRPC client too.
    if wants("daemon") {
        crate::python::ensure_venv();
    }
    // The guest's root is the host's: Slurm's daemons, tools and headers come from the host.
    if wants("slurm") {
        crate::slurm::ensure_packages();
    }
    // The client package's tests install its wheel, built here, into a directory of their own.
    let client = if wants("python_client") { crate::python::ensure_client() } else { None };
    let tests = build_tests(&opts.suites)?;
    let tracker = crate::run::build_tracker(false)?;
    let mut outcomes = vec![];
    for series in &kernels {
        let kernel = ensure_kernel(series)?;
        println!("xtask: booting {} ({} suite(s))", kernel.release, tests.len());
        outcomes.push(run_guest(&vng, &kernel, &tests, &tracker, client.as_ref(), opts)?);
    }
    println!("xtask: test-vm results:");
    for o in &outcomes {
        println!(
            "  {}: {} passed, {} failed, {} skipped ({:.1} min){}",
            o.kernel,
            o.passed,
            o.failed,
            o.skipped,
            o.minutes,
            o.problem.as_ref().map(|p| format!(": {p}")).unwrap_or_default()
        );
        for f in &o.failures {
            println!("    {f}");
        }
    }
    let bad: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failed > 0 || o.problem.is_some())
        .map(|o| o.kernel.as_str())
        .collect();
    if !bad.is_empty() {
        bail!("failures on {} (logs under {ROOT}/out/<kernel>/)", bad.join(", "));
    }
    Ok(())
}

/// QEMU, depmod (virtme-ng regenerates the modules' index), busybox (its initramfs),
/// mkfs.ext4 (the guest's disk) and Python's venv module.
fn ensure_host_packages(systemd: bool) -> Result<()> {
    let mut missing = vec![];
    // A systemd guest runs the suites from a serial console's getty, which waits for its
    // device unit, which only udev makes (container images leave udev out).
    if systemd && !Path::new("/usr/lib/systemd/systemd-udevd").exists() {
        missing.push("udev");
    }
    for (tool, package) in [
        ("depmod", "kmod"),
        ("busybox", "busybox-static"),
        ("mkfs.ext4", "e2fsprogs"),
        ("timeout", "coreutils"),
        // The guest's network interface (see `guest_script`): Slurm needs an address.
        ("ip", "iproute2"),
    ] {
        if !on_path(tool) {
            missing.push(package);
        }
    }
    if !venv_works() {
        missing.push("python3-venv");
    }
    if !Path::new(UBUNTU_KEYRING).exists() {
        // Ubuntu's archive key, to check the kernels taken from Ubuntu (bookworm has it in
        // backports only).
        install_from_backports("ubuntu-keyring")?;
    }
    if !missing.is_empty() {
        println!("xtask: installing {}", missing.join(" "));
        crate::run::apt_install(&missing)?;
    }
    if on_path("qemu-system-x86_64") {
        return Ok(());
    }
    // Bookworm's own QEMU conflicts with the backported qemu-utils this image has.
    install_from_backports("qemu-system-x86")
}

/// Install `package`, from bookworm-backports on Debian 12, from the release itself elsewhere.
fn install_from_backports(package: &str) -> Result<()> {
    if os_codename().as_deref() != Some("bookworm") {
        println!("xtask: installing {package}");
        return crate::run::apt_install(&[package]);
    }
    ensure_backports_source()?;
    println!("xtask: installing {package} from bookworm-backports");
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive").args([
        "install",
        "-y",
        "-qq",
        "-t",
        "bookworm-backports",
        package,
    ]);
    quiet(&mut c).map(|_| ())
}

fn venv_works() -> bool {
    Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn os_codename() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).map(|v| v.trim().to_owned())
}

/// Add bookworm-backports to the machine's apt sources if no source names it, then update.
fn ensure_backports_source() -> Result<()> {
    let mut texts = vec![fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        texts.extend(dir.flatten().filter_map(|e| fs::read_to_string(e.path()).ok()));
    }
    if !texts
        .iter()
        .any(|t| t.lines().any(|l| !l.starts_with('#') && l.contains("bookworm-backports")))
    {
        let file = "/etc/apt/sources.list.d/bookworm-backports.sources";
        println!("xtask: adding {file}");
        fs::write(
            file,
            format!(
                "Types: deb\nURIs: {DEBIAN_ARCHIVE}\nSuites: bookworm-backports\nComponents: main\n\
                 Signed-By: {DEBIAN_KEYRING}\n"
            ),
        )
        .with_context(|| format!("writing {file}"))?;
    }
    let mut c = Command::new("apt-get");
    c.args(["update", "-qq"]);
    quiet(&mut c).map(|_| ())
}

/// virtme-ng in a virtual environment of its own; returns the `vng` script.
fn ensure_vng() -> Result<PathBuf> {
    let venv = Path::new(ROOT).join("venv");
    let vng = venv.join("bin/vng");
    let stamp = venv.join(".tracker-requirement");
    if vng.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == VIRTME_NG) {
        return Ok(vng);
    }
    println!("xtask: installing {VIRTME_NG} into {}", venv.display());
    fs::create_dir_all(ROOT).with_context(|| format!("creating {ROOT}"))?;
    quiet(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    quiet(Command::new(venv.join("bin/pip")).args(["install", "--quiet", VIRTME_NG]))?;
    fs::write(&stamp, VIRTME_NG).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(vng)
}

/// An unpacked Debian kernel.
struct Kernel {
    /// `6.1.0-57-amd64`
    release: String,
    /// Where the package was unpacked (`boot/`, `lib/modules/`).
    dir: PathBuf,
}

impl Kernel {
    /// `boot/vmlinuz-<release>`, or where the newest Debian packages put it (beside the
    /// modules).
    fn image(&self) -> PathBuf {
        let boot = self.dir.join("boot").join(format!("vmlinuz-{}", self.release));
        let beside = self.dir.join("lib/modules").join(&self.release).join("vmlinuz");
        if !boot.exists() && beside.exists() { beside } else { boot }
    }
}

/// The newest kernel of `series` (`6.1`) from the distribution that ships it, downloaded and
/// unpacked once.
fn ensure_kernel(series: &str) -> Result<Kernel> {
    let apt = PrivateApt::new()?;
    let image = apt.newest_kernel(series)?;
    let release = kernel_release(&image).to_owned();
    // Ubuntu puts the modules in a package of their own; Debian's image holds them, except
    // in its newest packages, where the image depends on a binary and a modules package.
    let packages = match distro_of(series) {
        Distro::Debian => {
            let mut p = vec![image.clone()];
            p.extend(apt.split_parts(&image, &release)?);
            p
        }
        Distro::Ubuntu => vec![image.clone(), format!("linux-modules-{release}")],
    };
    let dir = Path::new(ROOT).join("kernels").join(&release);
    let kernel = Kernel { release: release.clone(), dir: dir.clone() };
    if kernel.image().exists()
        && dir.join("lib/modules").join(&release).join("modules.dep").exists()
    {
        return Ok(kernel);
    }
    let debs = Path::new(ROOT).join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for package in &packages {
        println!("xtask: fetching {package}");
        quiet(apt.command("apt-get").current_dir(&debs).args(["download", "-q", package]))?;
        let deb = fs::read_dir(&debs)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download left no {package} package"))?;
        quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    }
    // Newer packages put the modules under usr/lib; virtme-ng and depmod look in lib.
    let usr_modules = dir.join("usr/lib/modules");
    if usr_modules.is_dir() && !dir.join("lib/modules").exists() {
        fs::create_dir_all(dir.join("lib"))?;
        fs::rename(&usr_modules, dir.join("lib/modules"))?;
    }
    quiet(Command::new("depmod").arg("-b").arg(&dir).arg(&release))?;
    if !kernel.image().exists() {
        bail!("{image} holds no {}", kernel.image().display());
    }
    Ok(kernel)
}

/// apt with sources of its own (Debian 11 and 12 with their security and backports suites),
/// its own lists and cache under ROOT: the machine's apt configuration is not touched.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new() -> Result<Self> {
        let dir = Path::new(ROOT).join("apt");
        for sub in ["etc", "lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let sources: String = [
            (DEBIAN_ARCHIVE, "bookworm"),
            (DEBIAN_ARCHIVE, "bookworm-backports"),
            (DEBIAN_SECURITY, "bookworm-security"),
            (DEBIAN_ARCHIVE, "bullseye"),
            (DEBIAN_SECURITY, "bullseye-security"),
            // 6.18 and 7.x: Debian 13's backports.
            (DEBIAN_ARCHIVE, "trixie-backports"),
        ]
        .iter()
        .map(|(uri, suite)| format!("deb [signed-by={DEBIAN_KEYRING}] {uri} {suite} main\n"))
        .chain(["jammy-updates", "jammy-security", "noble-updates", "noble-security"].iter().map(
            |suite| format!("deb [signed-by={UBUNTU_KEYRING}] {UBUNTU_ARCHIVE} {suite} main\n"),
        ))
        .collect();
        let list = dir.join("etc/sources.list");
        let apt = Self { dir };
        let fresh = fs::metadata(apt.dir.join("lists"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e.as_secs() < 24 * 3600));
        let same = fs::read_to_string(&list).is_ok_and(|s| s == sources);
        let has_lists = fs::read_dir(apt.dir.join("lists")).is_ok_and(|d| {
            d.flatten().any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        });
        if !(same && fresh && has_lists) {
            fs::write(&list, &sources).with_context(|| format!("writing {}", list.display()))?;
            println!("xtask: reading Debian's kernel package lists");
            quiet(apt.command("apt-get").args(["update", "-qq"]))?;
        }
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let d = self.dir.display();
        let mut c = Command::new(program);
        c.args([
            "-o".into(),
            format!("Dir::Etc::SourceList={d}/etc/sources.list"),
            "-o".into(),
            "Dir::Etc::SourceParts=/dev/null".into(),
            "-o".into(),
            format!("Dir::State::Lists={d}/lists"),
            "-o".into(),
            format!("Dir::Cache={d}/cache"),
            "-o".into(),
            "Dir::State::status=/dev/null".into(),
        ]);
        c
    }

    /// The packages a split Debian kernel image depends on for its kernel and modules
    /// (`linux-binary-<release>`, `linux-modules-<release>`); none for one that holds both.
    fn split_parts(&self, image: &str, release: &str) -> Result<Vec<String>> {
        let out = quiet(self.command("apt-cache").args(["show", "--no-all-versions", image]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(split_parts_of(&text, release))
    }

    /// Debian: `linux-image-<series>.<n>-<abi>-amd64` (Debian 11/12's naming) or
    /// `linux-image-<series>.<n>+deb<m>-amd64` (the newer one); Ubuntu:
    /// `linux-image-unsigned-<series>.0-<abi>-generic`. The highest version.
    fn newest_kernel(&self, series: &str) -> Result<String> {
        let prefix = match distro_of(series) {
            Distro::Debian => "linux-image-",
            Distro::Ubuntu => "linux-image-unsigned-",
        };
        let out = quiet(self.command("apt-cache").args([
            "search",
            "--names-only",
            &format!("^{prefix}{}\\.", series.replace('.', "\\.")),
        ]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let best = text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| is_kernel_package(name, series))
            .max_by_key(|name| version_key(name));
        best.map(str::to_owned).with_context(|| {
            format!("no kernel package for Linux {series} (known: {})", KERNELS.join(", "))
        })
    }
}

/// Of `apt-cache show`'s output for a kernel image, the split parts it depends on.
fn split_parts_of(show: &str, release: &str) -> Vec<String> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends:")).unwrap_or_default();
    ["linux-binary-", "linux-modules-"]
        .iter()
        .map(|prefix| format!("{prefix}{release}"))
        .filter(|part| {
            depends.split(',').any(|d| d.split_whitespace().next() == Some(part.as_str()))
        })
        .collect()
}

/// The kernel release a package holds (`6.1.0-57-amd64`, `5.15.0-163-generic`).
fn kernel_release(package: &str) -> &str {
    package
        .strip_prefix("linux-image-unsigned-")
        .or_else(|| package.strip_prefix("linux-image-"))
        .unwrap_or(package)
}

/// Whether `name` is the generic amd64 image of `series` (not cloud, rt, dbg, lowlatency or a
/// backport to an older release).
fn is_kernel_package(name: &str, series: &str) -> bool {
    let (prefix, suffix) = match distro_of(series) {
        Distro::Debian => ("linux-image-", "-amd64"),
        Distro::Ubuntu => ("linux-image-unsigned-", "-generic"),
    };
    let Some(rest) = name
        .strip_prefix(prefix)
        .and_then(|n| n.strip_suffix(suffix))
        .and_then(|n| n.strip_prefix(series))
        .and_then(|n| n.strip_prefix('.'))
    else {
        return false;
    };
    let (minor, abi) = match rest.split_once(['-', '+']) {
        Some(parts) => parts,
        None => return false,
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // A major version alone (`7`) takes any of its lines: `7.3.4+deb13`.
    let minor_ok = if series.contains('.') {
        digits(minor)
    } else {
        minor.split_once('.').is_some_and(|(a, b)| digits(a) && digits(b))
    };
    minor_ok && (digits(abi) || abi.strip_prefix("deb").is_some_and(digits))
}

fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

/// Suites an unqualified run leaves out (see `build_tests`).
const NOT_IN_GUEST: &[&str] = &["package"];

/// A test binary of tests/tests.
struct TestBinary {
    suite: String,
    exe: PathBuf,
}

/// Build the integration test binaries here (the guest only runs them).
fn build_tests(suites: &[String]) -> Result<Vec<TestBinary>> {
    println!("xtask: building the test binaries");
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(workspace()).args([
        "test",
        "--package",
        "tracker-tests",
        "--no-run",
        "--message-format=json",
    ]);
    for s in suites {
        c.args(["--test", s]);
    }
    let out = quiet(&mut c)?;
    let mut found = vec![];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_test =
            msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        if msg["reason"] != "compiler-artifact" || !is_test {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.push(TestBinary { suite: name.to_owned(), exe: exe.into() });
        }
    }
    if suites.is_empty() {
        // Its tests install the packages into the machine's root, which is the guest's too
        // and read-only there; nothing in them differs by kernel.
        found.retain(|t| !NOT_IN_GUEST.contains(&t.suite.as_str()));
    }
    found.sort_by(|a, b| a.suite.cmp(&b.suite));
    if found.is_empty() {
        bail!("cargo built no test binary for suites {suites:?}");
    }
    Ok(found)
}

/// The shell script the guest runs: the machine a pure cgroup v2 site has (systemd's default
/// controllers, bpffs, tracefs), a real disk for temporary files, then each suite.
fn guest_script(
    tests: &[TestBinary],
    tracker: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    opts: &Options,
    out: &Path,
    modules: &Path,
) -> String {
    let strict = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("TRACKER_TEST_STRICT").is_ok_and(|v| v == "1");
    let filter: Vec<String> = opts.filters.iter().map(|f| shell_quote(f)).collect();
    let filter = filter.join(" ");
    let mut s = format!(
        r#"#!/bin/sh
# Written by `cargo xtask test-vm`; runs inside the guest.
OUT={out}
fail() {{ echo "$*" > "$OUT/setup-failed"; echo "setup failed: $*"; exit 1; }}
exec > "$OUT/guest.log" 2>&1
echo "kernel $(uname -r)"
[ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ] || fail "/sys/fs/cgroup is not cgroup2"
if [ {systemd} = 1 ]; then
    # systemd owns the cgroup tree and enables controllers where its units need them.
    [ "$(cat /proc/1/comm)" = systemd ] || fail "systemd is not PID 1 (it is $(cat /proc/1/comm))"
    export TRACKER_TEST_SYSTEMD=1
else
    # Pure cgroup v2 with the controllers systemd enables at the root.
    for c in cpu io memory pids; do
        echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || fail "cannot enable the $c controller"
    done
fi
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || fail "cannot mount bpffs"
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing \
    || fail "cannot mount tracefs"
# Temporary files on a real ext4 disk: block I/O is counted, tmpfs has none.
# Under systemd, vng's rw overlay on /lib hides the kernel's modules it linked there.
[ -e "/lib/modules/$(uname -r)" ] || {{ mkdir -p /lib/modules; ln -s {modules}/"$(uname -r)" /lib/modules/; }} 2>/dev/null
modprobe virtio_blk 2>/dev/null
for i in $(seq 100); do
    disk=$(ls /dev/vd? 2>/dev/null | head -n1)
    [ -n "$disk" ] && break
    sleep 0.1
done
[ -n "$disk" ] || fail "no disk (/dev/vd?)"
mkdir -p /run/tracker-vm-disk
mount -t ext4 "$disk" /run/tracker-vm-disk || fail "cannot mount $disk"
mkdir -p /run/tracker-vm-disk/tmp && chmod 1777 /run/tracker-vm-disk/tmp
export TMPDIR=/run/tracker-vm-disk/tmp
# Slurm's daemons open their ports with getaddrinfo(AI_ADDRCONFIG), which answers nothing on
# a machine whose only interface is loopback (vng's guest has no NIC): slurmdbd dies with
# "Address family not supported". A cluster node has an address; give the guest one.
if ! ip -4 -o addr show scope global | grep -q inet; then
    modprobe dummy && ip link add trk0 type dummy && ip addr add 192.0.2.1/24 dev trk0 \
        && ip link set trk0 up || fail "cannot add a network interface (dummy)"
fi
# Slurm resolves the node's own name over IPv4.
grep -q "^127\.0\.0\.1[[:space:]].*\b$(hostname)\b" /etc/hosts \
    || echo "127.0.0.1 $(hostname)" >> /etc/hosts || fail "cannot add the hostname to /etc/hosts"
export TRACKER_BIN={tracker}
export TRACKER_TEST_STRICT={strict}
# Software emulation is ~30x slower: the tests' deadlines (never their assertions) stretch.
export TRACKER_TEST_TIME_SCALE=30
unset TRACKER_LOG
cd {tests_dir}
# Whether this kernel loads the tracker at all, in one line, before the suites say it 60 ways.
"$TRACKER_BIN" --instance vm-probe load > "$OUT/load.log" 2>&1 && echo ok >> "$OUT/load.log"
"$TRACKER_BIN" --instance vm-probe status >> "$OUT/load.log" 2>&1
"$TRACKER_BIN" --instance vm-probe unload --force > /dev/null 2>&1
# What runs (kernel threads aside), every 5 minutes (guest time): all there is to read when a
# suite seems to hang.
(while sleep 300; do
  {{ cat /proc/uptime; ps -eo pid,ppid,stat,etime,time,wchan:24,args | awk '$2 != 2'; }} \
    > "$OUT/ps.tmp" 2>&1
  mv "$OUT/ps.tmp" "$OUT/ps.log"
done) < /dev/null > /dev/null 2>&1 &
SNAPSHOTS=$!
"#,
        out = shell_quote(&out.display().to_string()),
        tracker = shell_quote(&tracker.display().to_string()),
        strict = u8::from(strict),
        systemd = u8::from(opts.systemd),
        modules = shell_quote(&modules.display().to_string()),
        tests_dir = shell_quote(&workspace().join("tests").display().to_string()),
    );
    if let Some(python) = python_venv() {
        s +=
            &format!("export TRACKER_TEST_PYTHON={}\n", shell_quote(&python.display().to_string()));
    }
    if let Some((python, wheel)) = client {
        s += &format!(
            "export TRACKER_TEST_CLIENT_PYTHON={}\nexport TRACKER_TEST_CLIENT_WHEEL={}\n",
            shell_quote(&python.display().to_string()),
            shell_quote(&wheel.display().to_string())
        );
    }
    for t in tests {
        s += &format!(
            "echo \"suite {suite}\"\n{exe} {filter} > \"$OUT/{suite}.log\" 2>&1\necho \"$?\" > \"$OUT/{suite}.status\"\n",
            suite = t.suite,
            exe = shell_quote(&t.exe.display().to_string()),
        );
    }
    s += "kill $SNAPSHOTS\necho done > \"$OUT/done\"\n";
    s
}

fn python_venv() -> Option<PathBuf> {
    let p = Path::new("/var/tmp/tracker-tests/python/bin/python3");
    p.exists().then(|| p.to_path_buf())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What booting the host's systemd as the guest's PID 1 takes.
fn systemd_args(cmd: &mut Command) -> Result<()> {
    // vng's systemd boot links the kernel's modules under /lib/modules, which must exist on
    // the host root the guest sees (a container image may have none).
    let modules = Path::new("/usr/lib/modules");
    if !modules.exists() {
        println!("xtask: making {} (vng's systemd boot needs it)", modules.display());
        fs::create_dir_all(modules)?;
    }
    // --verbose: the boot shows in console.log, which is all there is to read when it stalls.
    cmd.args(["--systemd", "--verbose"]);
    // The suites run from the serial getty, which waits for /dev/ttyS0's device unit: on a
    // loaded machine the emulated boot took longer than systemd's default 90 s for it.
    cmd.args(["--append", "systemd.default_device_timeout_sec=900"]);
    // Units that only slow a software-emulated boot down (and wait for a network there is not).
    for unit in SYSTEMD_MASKED {
        cmd.arg("--append").arg(format!("systemd.mask={unit}"));
    }
    Ok(())
}

/// The root the guest boots: the host's own, except where a file in it would make the guest's
/// systemd take itself for a container (a container image's `/.dockerenv`): then systemd and
/// its generators read their settings from PID 1's argv instead of the kernel's command line
/// and start no serial console, where vng runs the suites. No environment says otherwise to
/// systemd's generators (an empty `container=` reads as "some container" there), so the guest
/// gets the host's root through an overlay that hides the file (a whiteout on a tmpfs), with
/// this tool's directory bound in so that what the guest writes lands on the host.
struct GuestRoot {
    root: PathBuf,
    mounts: Vec<PathBuf>,
}

/// Host files that tell systemd it runs in a container.
const CONTAINER_MARKERS: &[&str] = &[".dockerenv"];

impl GuestRoot {
    fn host() -> Self {
        Self { root: PathBuf::from("/"), mounts: vec![] }
    }

    fn for_systemd() -> Result<Self> {
        let markers: Vec<&str> =
            CONTAINER_MARKERS.iter().copied().filter(|m| Path::new("/").join(m).exists()).collect();
        if markers.is_empty() {
            return Ok(Self::host());
        }
        let base = Path::new(ROOT).join("sysroot");
        let (rw, merged) = (base.join("rw"), base.join("merged"));
        fs::create_dir_all(&rw)?;
        fs::create_dir_all(&merged)?;
        let mut me = Self { root: merged.clone(), mounts: vec![] };
        me.mount(Command::new("mount").args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs"]), &rw)?;
        let (upper, work) = (rw.join("upper"), rw.join("work"));
        fs::create_dir_all(&upper)?;
        fs::create_dir_all(&work)?;
        for m in markers {
            // A whiteout: a 0/0 character device hides the lower file.
            quiet(Command::new("mknod").arg(upper.join(m)).args(["c", "0", "0"]))?;
        }
        let opts = format!("lowerdir=/,upperdir={},workdir={}", upper.display(), work.display());
        me.mount(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]), &merged)?;
        let inner = me.path(Path::new(ROOT));
        me.mount(Command::new("mount").arg("--bind").arg(ROOT), &inner)?;
        Ok(me)
    }

    fn mount(&mut self, cmd: &mut Command, target: &Path) -> Result<()> {
        quiet(cmd.arg(target))?;
        self.mounts.push(target.to_path_buf());
        Ok(())
    }

    /// Where the host's `path` is in the guest's root, on the host.
    fn path(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

impl Drop for GuestRoot {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// Units the systemd guest does without.
const SYSTEMD_MASKED: &[&str] = &[
    "systemd-timesyncd.service",
    "systemd-networkd-wait-online.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
];

/// Boot `kernel` and run the suites; the counts come from each suite's own summary line.
fn run_guest(
    vng: &Path,
    kernel: &Kernel,
    tests: &[TestBinary],
    tracker: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    opts: &Options,
) -> Result<Outcome> {
    let name =
        if opts.systemd { format!("{}-systemd", kernel.release) } else { kernel.release.clone() };
    let out = Path::new(ROOT).join("out").join(&name);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let run_dir = Path::new(ROOT).join("run");
    fs::create_dir_all(&run_dir)?;
    let script = run_dir.join(format!("guest-{name}.sh"));
    let modules = kernel.dir.join("lib/modules");
    fs::write(&script, guest_script(tests, tracker, client, opts, &out, &modules))
        .with_context(|| format!("writing {}", script.display()))?;
    let disk = run_dir.join(format!("disk-{name}.img"));
    let _ = fs::remove_file(&disk);
    quiet(Command::new("truncate").args(["-s", "2G"]).arg(&disk))?;
    quiet(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk))?;

    let venv_bin = vng.parent().map(Path::to_path_buf).unwrap_or_default();
    let path = format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default());
    let guest = if opts.systemd { GuestRoot::for_systemd()? } else { GuestRoot::host() };
    let mut cmd = Command::new("timeout");
    cmd.env("PATH", path)
        .arg("--kill-after=30")
        .arg(format!("{}m", opts.timeout_minutes))
        .arg(vng)
        .arg("--run")
        .arg(kernel.image())
        .args(["--disable-kvm", "--cpus", &opts.cpus.to_string(), "--memory", &opts.memory])
        // /var/tmp is an empty tmpfs in the guest: what it needs from there is passed in.
        .arg(format!("--rodir={}", guest.path(&run_dir).display()))
        .arg(format!("--rodir={}", guest.path(&kernel.dir).display()))
        .arg(format!("--rwdir={}", guest.path(&out).display()))
        .arg(format!("--disk={}", disk.display()))
        .arg("--exec")
        .arg(format!("sh {}", shell_quote(&script.display().to_string())))
        .current_dir(guest.path(&workspace()));
    if guest.root != Path::new("/") {
        cmd.arg("--root").arg(&guest.root);
    }
    if opts.systemd {
        systemd_args(&mut cmd)?;
    }
    // Python environments live under /var/tmp, which the guest sees empty.
    let pythons = python_venv().into_iter().chain(client.map(|(python, _)| python.clone()));
    for venv in pythons.filter_map(|p| p.ancestors().nth(2).map(Path::to_path_buf)) {
        cmd.arg(format!("--rodir={}", guest.path(&venv).display()));
    }
    let started = Instant::now();
    let console = cmd.output().with_context(|| format!("cannot start {}", vng.display()))?;
    drop(guest);
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    fs::write(out.join("console.log"), [&console.stdout[..], &console.stderr[..]].concat())?;
    let mut o = Outcome {
        kernel: name,
        passed: 0,
        failed: 0,
        skipped: 0,
        problem: None,
        minutes,
        failures: vec![],
    };
    if let Ok(why) = fs::read_to_string(out.join("setup-failed")) {
        o.problem = Some(format!("guest setup: {}", why.trim()));
        return Ok(o);
    }
    let load = fs::read_to_string(out.join("load.log")).unwrap_or_default();
    if !load.lines().any(|l| l == "ok") {
        let why = load.lines().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        o.problem = Some(format!("tracker load failed: {why}"));
    }
    let mut crashed = vec![];
    for t in tests {
        let log = fs::read_to_string(out.join(format!("{}.log", t.suite))).unwrap_or_default();
        let counts = libtest_counts(&log);
        o.skipped += log.lines().filter(|l| l.starts_with("SKIP:")).count() as u32;
        o.failures.extend(failure_lines(&t.suite, &log));
        match counts {
            Some((passed, failed)) => {
                o.passed += passed;
                o.failed += failed;
            }
            None => crashed.push(t.suite.as_str()),
        }
    }
    if o.problem.is_some() {
        // The load's own line says more than the suites' failures it causes.
    } else if !out.join("done").exists() {
        o.problem = Some(format!(
            "the guest did not finish (timeout {} min, or it crashed: see console.log, and \
             ps.log for what ran last)",
            opts.timeout_minutes
        ));
    } else if !crashed.is_empty() {
        o.problem = Some(format!("no test summary from {}", crashed.join(", ")));
    }
    Ok(o)
}

/// Each failed test of a suite's log, and the first line of each panic message: enough for
/// a CI log to say what failed without the guest's files.
fn failure_lines(suite: &str, log: &str) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = vec![];
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("test ") && l.ends_with("... FAILED") {
            out.push(format!("{suite}: {l}"));
        } else if l.contains("panicked at") {
            let message = lines.get(i + 1).copied().unwrap_or_default();
            out.push(format!("{suite}: {l} {message}"));
        }
    }
    out
}

/// (passed, failed) summed over a test binary's `test result:` lines.
fn libtest_counts(log: &str) -> Option<(u32, u32)> {
    let mut total = None;
    for line in log.lines().filter(|l| l.starts_with("test result:")) {
        let num = |word: &str| {
            line.split(';')
                .find(|p| p.trim_end().ends_with(word))
                .and_then(|p| p.split_whitespace().rev().nth(1))
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        };
        let (p, f) = total.unwrap_or((0, 0));
        total = Some((p + num("passed"), f + num("failed")));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_packages_are_told_from_their_variants() {
        assert!(is_kernel_package("linux-image-6.1.0-57-amd64", "6.1"));
        assert!(is_kernel_package("linux-image-6.12.117+deb12-amd64", "6.12"));
        assert!(is_kernel_package("linux-image-5.10.0-46-amd64", "5.10"));
        assert!(!is_kernel_package("linux-image-6.12.117+deb12-amd64", "6.1"));
        assert!(!is_kernel_package("linux-image-6.1.0-57-cloud-amd64", "6.1"));
        assert!(!is_kernel_package("linux-image-6.1.0-57-rt-amd64", "6.1"));
        assert!(!is_kernel_package("linux-image-6.1.0-0.deb11.52-amd64", "6.1"));
        assert!(!is_kernel_package("linux-image-6.12.90+deb12.1-amd64", "6.12"));
        assert!(!is_kernel_package("linux-image-6.1.0-57-amd64-dbg", "6.1"));
        assert!(is_kernel_package("linux-image-unsigned-5.15.0-163-generic", "5.15"));
        assert!(is_kernel_package("linux-image-unsigned-6.8.0-90-generic", "6.8"));
        assert!(!is_kernel_package("linux-image-unsigned-5.15.0-163-lowlatency", "5.15"));
        assert!(!is_kernel_package("linux-image-5.15.0-163-generic", "5.15"));
        assert_eq!(kernel_release("linux-image-unsigned-5.15.0-163-generic"), "5.15.0-163-generic");
        assert_eq!(kernel_release("linux-image-6.1.0-57-amd64"), "6.1.0-57-amd64");
        let newest = ["linux-image-6.1.0-9-amd64", "linux-image-6.1.0-57-amd64"]
            .into_iter()
            .max_by_key(|n| version_key(n));
        assert_eq!(newest, Some("linux-image-6.1.0-57-amd64"));
    }

    #[test]
    fn a_major_version_takes_its_newest_line_and_split_images_name_their_parts() {
        assert!(is_kernel_package("linux-image-6.18.15+deb13-amd64", "6.18"));
        assert!(!is_kernel_package("linux-image-6.18.15+deb13-amd64", "6.1"));
        assert!(is_kernel_package("linux-image-7.3.4+deb13-amd64", "7"));
        assert!(!is_kernel_package("linux-image-6.18.15+deb13-amd64", "7"));
        assert!(!is_kernel_package("linux-image-7.3.4+deb13-rt-amd64", "7"));
        let newest = ["linux-image-7.2.12+deb13-amd64", "linux-image-7.3.4+deb13-amd64"]
            .into_iter()
            .max_by_key(|n| version_key(n));
        assert_eq!(newest, Some("linux-image-7.3.4+deb13-amd64"));
        let show = "Package: linux-image-7.3.4+deb13-amd64\nDepends: dracut | initramfs-tools \
                    (>= 0.120+deb8u2), linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), \
                    linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), \
                    linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)\n";
        assert_eq!(
            split_parts_of(show, "7.3.4+deb13-amd64"),
            ["linux-binary-7.3.4+deb13-amd64", "linux-modules-7.3.4+deb13-amd64"]
        );
        let whole = "Depends: kmod, linux-base (>= 4.3~), initramfs-tools\n";
        assert!(split_parts_of(whole, "6.1.0-57-amd64").is_empty());
    }

    #[test]
    fn libtest_summaries_are_summed() {
        let log = "running 3 tests\ntest result: FAILED. 2 passed; 1 failed; 0 ignored; 0 \
                   measured; 0 filtered out; finished in 3.1s\n\
                   test result: ok. 4 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(libtest_counts(log), Some((6, 1)));
        assert_eq!(libtest_counts("thread main panicked"), None);
    }

    #[test]
    fn failures_are_named_with_their_message() {
        let log = "test a ... ok\ntest b ... FAILED\n\n---- b stdout ----\n\nthread 'b' \
                   panicked at tests/x.rs:3:5:\nslot not empty\n";
        assert_eq!(
            failure_lines("s", log),
            ["s: test b ... FAILED", "s: thread 'b' panicked at tests/x.rs:3:5: slot not empty"]
        );
        assert!(failure_lines("s", "test a ... ok\n").is_empty());
    }
}
