//! The packages sites install (`cargo xtask package`, built by `cargo xtask test`): the .deb
//! installed with dpkg on this machine, used from its installed files, and removed, leaving
//! no pin; the .rpm's file list and scriptlets read with rpm.
//!
//! The package's maintainer scripts act on the instance named by TRACKER_INSTANCE in dpkg's
//! environment: the test gives them an instance of its own (`t-<pid>-pkg`), so that a tracker
//! loaded on the machine (the default instance) is never touched.
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use tracker::Paths;
use tracker_tests::{ESCAPE, marker, processes_named, skip, wait_for};

const BIN: &str = "/usr/bin/tracker";
const CONFIG: &str = "/etc/tracker/tracker.toml";
/// Every file the packages install (the rpm's unit is under /usr/lib, the zsh completion in
/// site-functions; the deb's man pages are checked one per command below).
const DEB_FILES: &[&str] = &[
    BIN,
    CONFIG,
    "/lib/systemd/system/tracker.service",
    "/usr/libexec/tracker/package-hook",
    "/usr/libexec/tracker/slurm-epilog",
    "/usr/lib/tracker/spank_tracker.so",
    "/usr/share/bash-completion/completions/tracker",
    "/usr/share/zsh/vendor-completions/_tracker",
    "/usr/share/fish/vendor_completions.d/tracker.fish",
    "/usr/share/man/man8/tracker.8.gz",
    "/usr/share/man/man8/tracker-run.8.gz",
    "/usr/share/doc/tracker/examples/plugstack.conf",
];
const RPM_FILES: &[&str] = &[
    BIN,
    CONFIG,
    "/usr/lib/systemd/system/tracker.service",
    "/usr/libexec/tracker/package-hook",
    "/usr/libexec/tracker/slurm-epilog",
    "/usr/lib/tracker/spank_tracker.so",
    "/usr/share/bash-completion/completions/tracker",
    "/usr/share/zsh/site-functions/_tracker",
    "/usr/share/fish/vendor_completions.d/tracker.fish",
    "/usr/share/man/man8/tracker.8.gz",
    "/usr/share/man/man8/tracker-daemon.8.gz",
];

fn package(var: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from);
    if p.is_none() {
        skip(&format!("no package to test: `cargo xtask test` builds it ({var})"));
    }
    p
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The package as dpkg knows it, e.g. "install ok installed", or "" if unknown.
fn dpkg_status() -> String {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", "tracker"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg with the test's instance; waits while another dpkg or apt holds dpkg's lock.
fn dpkg(instance: &str, args: &[&str]) -> Output {
    let mut out = None;
    let done = wait_for(Duration::from_secs(300), || {
        let o = Command::new("dpkg")
            .args(args)
            .env("TRACKER_INSTANCE", instance)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap();
        let locked = !o.status.success() && text(&o).contains("lock");
        out = Some(o);
        !locked
    });
    assert!(done, "dpkg's lock stayed held for 5 minutes");
    out.unwrap()
}

/// The installed tracker on the test's instance.
fn installed(instance: &str, args: &[&str]) -> Output {
    Command::new(BIN).args(["--instance", instance]).args(args).output().unwrap()
}

/// Whatever the test leaves, purged (its own instance's pins with it, by the package's prerm).
struct Installed<'a> {
    instance: &'a str,
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        if !dpkg_status().is_empty() {
            let _ = installed(self.instance, &["unload", "--force"]);
            let _ = dpkg(self.instance, &["--purge", "tracker"]);
        }
    }
}

#[test]
fn package_deb_installs_runs_a_contained_job_and_removes_without_a_pin() {
    let Some(deb) = package("TRACKER_TEST_DEB") else { return };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip("not root: dpkg -i needs it");
        return;
    }
    assert!(
        dpkg_status().is_empty() || dpkg_status().contains("not-installed"),
        "a tracker package is on this machine already ({}): this test installs and removes \
         its own; `dpkg --purge tracker` first",
        dpkg_status()
    );
    assert!(
        !Path::new(BIN).exists(),
        "{BIN} exists and is no package's: the test would overwrite it"
    );
    let instance = format!("t-{}-pkg", std::process::id());
    let pins = Paths::new(&instance).unwrap().pin_dir();
    let default_pins = Paths::new("tracker").unwrap().pin_dir();
    let default_loaded = default_pins.exists();

    let guard = Installed { instance: &instance };
    let out = dpkg(&instance, &["--install", deb.to_str().unwrap()]);
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    assert_eq!(dpkg_status(), "install ok installed");
    for f in DEB_FILES {
        assert!(Path::new(f).exists(), "{f} is not installed");
    }
    let listed = Command::new("dpkg").args(["-L", "tracker"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    // One man page per command, from the binary's own CLI definition.
    let help = String::from_utf8(Command::new(BIN).arg("--help").output().unwrap().stdout).unwrap();
    for cmd in ["load", "run", "kill", "daemon", "completions", "man"] {
        assert!(help.contains(&format!("  {cmd} ")), "no {cmd} in --help: {help}");
        let page = format!("/usr/share/man/man8/tracker-{cmd}.8.gz");
        assert!(listed.contains(&page), "{page} not in the package");
        let roff = Command::new("gzip").args(["-dc", &page]).output().unwrap();
        assert!(String::from_utf8_lossy(&roff.stdout).contains(&format!(".TH tracker-{cmd} 8")));
    }
    let conffiles =
        Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "tracker"]).output().unwrap();
    assert!(String::from_utf8_lossy(&conffiles.stdout).contains(CONFIG), "{CONFIG} not a conffile");
    let unit = fs::read_to_string("/lib/systemd/system/tracker.service").unwrap();
    assert!(unit.contains(&format!("ExecStart={BIN} daemon")), "{unit}");
    // The plugin exports SPANK's hooks and runs the packaged binary by default.
    let so = "/usr/lib/tracker/spank_tracker.so";
    let syms = Command::new("nm").args(["-D", "--defined-only", so]).output().unwrap();
    for hook in ["slurm_spank_init", "slurm_spank_task_init_privileged", "plugin_name"] {
        assert!(String::from_utf8_lossy(&syms.stdout).contains(hook), "{so} lacks {hook}");
    }
    assert!(String::from_utf8_lossy(&fs::read(so).unwrap()).contains(BIN));
    let sh = Command::new("sh").args(["-n", "/usr/libexec/tracker/slurm-epilog"]).status();
    assert!(sh.unwrap().success());

    // The installed binary loads its embedded programs: no toolchain involved.
    let out = installed(&instance, &["load"]);
    assert!(out.status.success(), "tracker load: {}", text(&out));
    assert!(pins.is_dir());

    // A job that double-forks a daemon into a new session: in the slot, and killed whole.
    let m = marker("pkg");
    let job = format!("{ESCAPE} daemonize {m}; exec {ESCAPE} sleep {m}");
    let out = installed(&instance, &["run", "--detach", "--slot", "pkg", "--", "sh", "-c", &job]);
    assert!(out.status.success(), "tracker run: {}", text(&out));
    assert!(wait_for(Duration::from_secs(30), || processes_named(&m).len() == 2));
    let ps = String::from_utf8(installed(&instance, &["ps", "pkg"]).stdout).unwrap();
    assert_eq!(ps.lines().filter(|l| l.contains(&m)).count(), 2, "{ps}");

    // Removal is refused while the slot has live tasks: nothing would track them after.
    let out = dpkg(&instance, &["--remove", "tracker"]);
    assert!(!out.status.success(), "removed with a live slot: {}", text(&out));
    assert!(text(&out).contains("slots still have live tasks"), "{}", text(&out));
    assert_eq!(dpkg_status(), "install ok installed");
    assert!(pins.is_dir() && processes_named(&m).len() == 2);

    let out = installed(&instance, &["kill", "pkg"]);
    assert!(out.status.success(), "tracker kill: {}", text(&out));
    assert_eq!(processes_named(&m), Vec::<u32>::new(), "survivors of the kill");
    assert!(installed(&instance, &["release", "pkg"]).status.success());

    let out = dpkg(&instance, &["--remove", "tracker"]);
    assert!(out.status.success(), "dpkg -r: {}", text(&out));
    assert_eq!(dpkg_status(), "deinstall ok config-files");
    assert!(!Path::new(BIN).exists(), "{BIN} left behind");
    assert!(!pins.exists(), "pins left behind: {}", pins.display());
    assert!(Path::new(CONFIG).exists(), "the site's configuration went with a mere remove");
    assert_eq!(default_pins.exists(), default_loaded, "the default instance was touched");

    let out = dpkg(&instance, &["--purge", "tracker"]);
    assert!(out.status.success(), "dpkg -P: {}", text(&out));
    assert!(!Path::new(CONFIG).exists(), "{CONFIG} left after purge");
    assert!(dpkg_status().is_empty() || dpkg_status().contains("not-installed"));
    drop(guard);
}

#[test]
fn package_rpm_holds_every_file_and_its_scriptlets_unload_on_erase() {
    let Some(rpm) = package("TRACKER_TEST_RPM") else { return };
    let out = Command::new("rpm").args(["-qlp"]).arg(&rpm).output().unwrap();
    assert!(out.status.success(), "rpm -qlp: {}", text(&out));
    let files = String::from_utf8(out.stdout).unwrap();
    for f in RPM_FILES {
        assert!(files.lines().any(|l| l == *f), "{f} not in the rpm:\n{files}");
    }
    let pages = files.lines().filter(|l| l.starts_with("/usr/share/man/man8/tracker")).count();
    let help = String::from_utf8(
        Command::new(std::env::var("TRACKER_BIN").unwrap_or_else(|_| "tracker".into()))
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let commands = help
        .split("Commands:")
        .nth(1)
        .unwrap_or_default()
        .split("Options:")
        .next()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with("help "))
        .count();
    assert!(commands > 10, "{help}");
    assert_eq!(pages, commands + 1, "one man page per command and one for tracker:\n{files}");

    let config = Command::new("rpm").args(["-qcp"]).arg(&rpm).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&config.stdout).trim(), CONFIG);

    let out = Command::new("rpm").args(["-q", "--scripts", "-p"]).arg(&rpm).output().unwrap();
    assert!(out.status.success(), "rpm -q --scripts: {}", text(&out));
    let scripts = String::from_utf8(out.stdout).unwrap();
    let section = |name: &str| -> String {
        let start = scripts.find(name).unwrap_or_else(|| panic!("no {name}:\n{scripts}"));
        let body = &scripts[start..];
        let body = body.split_once('\n').map(|b| b.1).unwrap_or_default();
        body.split("scriptlet (using")
            .next()
            .unwrap_or_default()
            .rsplitn(2, '\n')
            .last()
            .unwrap_or_default()
            .to_owned()
    };
    let post = section("postinstall scriptlet");
    let preun = section("preuninstall scriptlet");
    let postun = section("postuninstall scriptlet");
    assert!(
        post.contains("package-hook upgraded") && post.contains("preset tracker.service"),
        "{post}"
    );
    assert!(preun.contains("package-hook removing") && preun.contains("disable --now"), "{preun}");
    assert!(preun.contains("[ \"$1\" -eq 0 ]"), "erase only, not on upgrade: {preun}");
    assert!(postun.contains("try-restart tracker.service"), "{postun}");
    // Each is valid sh, and (without systemd, as here) works with the argument rpm gives.
    for (name, body) in [("post", &post), ("preun", &preun), ("postun", &postun)] {
        let st = Command::new("sh").args(["-n", "-c", body]).status().unwrap();
        assert!(st.success(), "{name} is not valid sh:\n{body}");
    }
}
