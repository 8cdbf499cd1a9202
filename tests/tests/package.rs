//! The packages sites install (`cargo xtask package`, built by `cargo xtask test`): the .deb
//! installed with dpkg on this machine, used from its installed files, and removed, leaving
//! no pin; the .rpm's file list and scriptlets read with rpm.
//!
//! The package's maintainer scripts act on the instance named by TRACKER_INSTANCE in dpkg's
//! environment: the test gives them an instance of its own (`t-<pid>-pkg`), so that a tracker
//! loaded on the machine (the default instance) is never touched.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use tracker::Paths;
use tracker_tests::{ESCAPE, marker, processes_named, skip, test_dir, tracker_bin, wait_for};

const BIN: &str = "/usr/bin/tracker";
const CONFIG: &str = "/etc/tracker/tracker.toml";
/// Every file the packages install (the zsh completion is in site-functions in the rpm; the
/// man pages are checked one per command below).
const DEB_FILES: &[&str] = &[
    BIN,
    CONFIG,
    "/usr/lib/systemd/system/tracker.service",
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
    let unit = fs::read_to_string("/usr/lib/systemd/system/tracker.service").unwrap();
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
    // Still installed (dpkg keeps the wish to remove it: "deinstall ok installed").
    assert!(dpkg_status().ends_with(" ok installed"), "{}", dpkg_status());
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

/// `rpm -q --scripts` output: each scriptlet's body by name ("postinstall", ...).
fn scriptlets(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        // "postinstall scriptlet:", or "... scriptlet (using /bin/sh):"
        let header = line.strip_suffix(':').and_then(|l| l.split_once(" scriptlet"));
        if let Some((name, _interpreter)) = header {
            current = Some(name.to_owned());
            map.insert(name.to_owned(), String::new());
        } else if let Some(body) = current.as_ref().and_then(|c| map.get_mut(c)) {
            body.push_str(line);
            body.push('\n');
        }
    }
    map
}

#[test]
fn package_rpm_holds_every_file_and_its_scriptlets_unload_on_erase() {
    let Some(rpm) = package("TRACKER_TEST_RPM") else { return };
    let out = Command::new("rpm").args(["-qlp"]).arg(&rpm).output().unwrap();
    assert!(out.status.success(), "rpm -qlp: {}", text(&out));
    let files: BTreeSet<String> =
        String::from_utf8(out.stdout).unwrap().lines().map(Into::into).collect();
    for f in RPM_FILES {
        assert!(files.contains(*f), "{f} not in the rpm: {files:?}");
    }
    // Exactly the man pages the binary under test writes: one per command, one for tracker.
    let dir = test_dir("man");
    let man = Command::new(tracker_bin()).arg("man").arg(&dir).output().unwrap();
    assert!(man.status.success(), "tracker man: {}", text(&man));
    let want: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| format!("/usr/share/man/man8/{}.gz", e.unwrap().file_name().to_string_lossy()))
        .collect();
    let have: BTreeSet<String> =
        files.iter().filter(|f| f.starts_with("/usr/share/man/")).cloned().collect();
    assert!(want.len() > 10, "{want:?}");
    assert_eq!(have, want);
    fs::remove_dir_all(&dir).unwrap();

    let config = Command::new("rpm").args(["-qcp"]).arg(&rpm).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&config.stdout).trim(), CONFIG);

    let out = Command::new("rpm").args(["-q", "--scripts", "-p"]).arg(&rpm).output().unwrap();
    assert!(out.status.success(), "rpm -q --scripts: {}", text(&out));
    let scripts = scriptlets(&String::from_utf8(out.stdout).unwrap());
    let names: Vec<&str> = scripts.keys().map(String::as_str).collect();
    assert_eq!(names, ["postinstall", "postuninstall", "preuninstall"], "{scripts:?}");
    let (post, preun, postun) =
        (&scripts["postinstall"], &scripts["preuninstall"], &scripts["postuninstall"]);
    assert!(post.contains("package-hook upgraded") && post.contains("preset tracker.service"));
    // On erase only ($1 is 0), not on an upgrade: stop and disable, then unload (or fail).
    assert!(preun.contains("if [ \"$1\" -eq 0 ]; then"), "{preun}");
    assert!(preun.contains("disable --now tracker.service"), "{preun}");
    assert!(preun.contains("package-hook removing || exit 1"), "{preun}");
    assert!(postun.contains("try-restart tracker.service"), "{postun}");
    for (name, body) in &scripts {
        let st = Command::new("sh").args(["-n", "-c", body]).status().unwrap();
        assert!(st.success(), "the {name} scriptlet is not valid sh:\n{body}");
    }
}
