//! Slots bound to a cgroup the batch system made (`tracker create --cgroup`): adopt tags and
//! moves nothing; kill, freeze and the OOM guard work on that cgroup and on every tagged task
//! that left it; release leaves the cgroup; bad paths are one line and create nothing.
//!
//! The "batch system" here is the test: it makes `<name>/job/step_0` in every mounted
//! hierarchy the way Slurm's cgroup/v1 plugin makes `slurm/uid_U/job_J/step_S` (one directory
//! per controller), and puts its job there before the tracker hears of it.
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    os::unix::fs::symlink,
    path::PathBuf,
    process::{Child, Command, Output},
    time::Duration,
};

use tracker::daemon::proto;
use tracker_tests::{
    ESCAPE, Instance, cgroups_of, daemon::Daemon, marker, processes_named, test_dir, wait_exit,
    wait_for,
};

const T: Duration = Duration::from_secs(20);

/// A job cgroup someone else made, in every mounted hierarchy the tracker uses (cpuset would
/// need its cpus and mems set first); removed on drop.
struct BatchCgroup {
    /// Relative to the hierarchy roots: `<name>/job`.
    rel: String,
    roots: Vec<PathBuf>,
}

impl BatchCgroup {
    fn new(inst: &Instance, tag: &str) -> Self {
        let m = inst.tracker().cgroups().mounts().clone();
        let roots: Vec<PathBuf> = m
            .unified
            .iter()
            .chain(m.v1.iter().filter(|(c, _)| *c != "cpuset" && *c != "devices").map(|(_, p)| p))
            .cloned()
            .collect();
        let mut roots = roots;
        roots.sort();
        roots.dedup();
        let rel = format!("batch-{tag}-{}/job", std::process::id());
        for r in &roots {
            fs::create_dir_all(r.join(&rel).join("step_0")).unwrap();
        }
        Self { rel, roots }
    }

    fn dirs(&self, sub: &str) -> Vec<PathBuf> {
        self.roots.iter().map(|r| r.join(&self.rel).join(sub)).collect()
    }

    /// `sh -c SCRIPT` started inside the job's step cgroup, in every hierarchy.
    fn spawn(&self, script: &str) -> Child {
        let procs: Vec<String> = self
            .dirs("step_0")
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        let full =
            format!("for f in {}; do echo $$ > $f || exit 9; done; {script}", procs.join(" "));
        Command::new("sh").args(["-c", &full]).spawn().unwrap()
    }

    fn in_step(&self, pid: u32) -> bool {
        let want = format!("/{}/step_0", self.rel);
        let cg = cgroups_of(pid);
        !cg.is_empty() && cg.lines().all(|l| !self.tracked_line(l) || l.ends_with(&want))
    }

    /// A /proc/PID/cgroup line of a hierarchy this cgroup is in.
    fn tracked_line(&self, line: &str) -> bool {
        let ctrl = line.split(':').nth(1).unwrap_or_default();
        self.roots.iter().any(|r| {
            let name = r.file_name().unwrap().to_string_lossy();
            (ctrl.is_empty() && line.starts_with("0::")) || ctrl.split(',').any(|c| c == name)
        })
    }
}

impl Drop for BatchCgroup {
    fn drop(&mut self) {
        // After a failure the test's own job may still be in it: an empty cgroup only can go.
        let procs = || -> Vec<i32> {
            self.dirs("step_0")
                .iter()
                .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
                .flat_map(|t| t.lines().filter_map(|l| l.parse().ok()).collect::<Vec<i32>>())
                .collect()
        };
        for pid in procs() {
            // SAFETY: kill has no memory effects; the pid is in the test's own batch cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        wait_for(T, || procs().is_empty());
        let top = self.rel.split('/').next().unwrap().to_owned();
        for r in &self.roots {
            for sub in [format!("{}/step_0", self.rel), self.rel.clone(), top.clone()] {
                let _ = fs::remove_dir(r.join(sub));
            }
        }
    }
}

fn slot_json(inst: &Instance, slot: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&inst.cli_ok(&["slots", "--json"])).unwrap();
    v.as_array().unwrap().iter().find(|s| s["name"] == slot).cloned().unwrap_or_default()
}

fn state(pid: u32) -> char {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')').next().unwrap_or_default().trim_start().chars().next().unwrap_or('?')
}

#[test]
fn a_bound_slot_tags_in_place_and_kills_what_left_its_cgroup() {
    let Some(inst) = Instance::start() else { return };
    let batch = BatchCgroup::new(&inst, "kill");
    let (stay, leave, stranger) = (marker("bstay"), marker("bleave"), marker("bstrange"));
    let dir = test_dir("bound");
    let go = dir.join("go");
    let roots: Vec<String> = batch.roots.iter().map(|r| r.display().to_string()).collect();
    // The job: a sleeper that stays, and once told, a child that leaves every cgroup (a root
    // job writing itself elsewhere).
    let mut job = batch.spawn(&format!(
        "{ESCAPE} sleep {stay} & while [ ! -e {g} ]; do sleep 0.02; done; \
         {ESCAPE} leave-cgroups {leave} {roots} & wait",
        g = go.display(),
        roots = roots.join(" ")
    ));
    // Not the job's: the batch system's own process in the same cgroup (slurmstepd is, in v2).
    let mut other = batch.spawn(&format!("exec {ESCAPE} sleep {stranger}"));
    assert!(
        wait_for(T, || processes_named(&stay).len() == 1 && processes_named(&stranger).len() == 1)
    );
    let sleeper = processes_named(&stay)[0];

    let out = inst.cli_ok(&["create", "job", "--cgroup", &batch.rel]);
    assert_eq!(out.trim(), "job");
    let rec = slot_json(&inst, "job");
    assert_eq!(rec["cgroups"]["bound"], batch.rel.as_str(), "{rec}");
    inst.cli_ok(&["adopt", "job", &job.id().to_string()]);
    // Tagged, not moved.
    assert!(batch.in_step(sleeper), "the adopted task was moved: {}", cgroups_of(sleeper));
    assert!(batch.in_step(job.id()), "{}", cgroups_of(job.id()));
    let ps: Vec<u32> = inst.ps("job").iter().map(|p| p.pid).collect();
    assert!(ps.contains(&sleeper) && ps.contains(&job.id()), "{ps:?}");

    fs::write(&go, "").unwrap();
    assert!(wait_for(T, || processes_named(&leave).len() == 1));
    let leaver = processes_named(&leave)[0];
    assert!(wait_for(T, || !cgroups_of(leaver).contains(&batch.rel)), "{}", cgroups_of(leaver));
    assert!(inst.ps("job").iter().any(|p| p.pid == leaver), "the task that left is not followed");

    // Freeze: the bound cgroup (the batch system's freezer), and SIGSTOP for what left it.
    let out = inst.cli_ok(&["freeze", "job"]);
    assert!(out.contains("SIGSTOP to 1 process(es) outside the cgroup"), "{out}");
    assert!(wait_for(T, || state(leaver) == 'T'));
    inst.cli_ok(&["thaw", "job"]);
    assert!(wait_for(T, || state(leaver) != 'T'));

    let report = inst.kill_clean("job");
    assert!(report["killed"].as_u64().unwrap() >= 3, "{report}");
    assert!(processes_named(&stay).is_empty() && processes_named(&leave).is_empty());
    // The batch system's own process in the cgroup was not the job's: left alone, and said.
    assert_eq!(processes_named(&stranger).len(), 1, "an untagged process was killed");
    assert!(report["warnings"].to_string().contains("untagged"), "{report}");
    assert!(wait_exit(&mut job, T).is_some());

    inst.cli_ok(&["release", "job"]);
    for d in batch.dirs("") {
        assert!(d.is_dir(), "release removed the batch system's cgroup {}", d.display());
    }
    other.kill().unwrap();
    other.wait().unwrap();
}

#[test]
fn the_oom_guard_kills_a_bound_slot_whole_when_its_step_cgroup_ooms() {
    let Some(inst) = Instance::start() else { return };
    let batch = BatchCgroup::new(&inst, "oom");
    // The batch system's limit, on the step as Slurm's task/cgroup sets it: v1's memory
    // controller where it is mounted, else cgroup2's, enabled down to the step.
    let mounts = inst.tracker().cgroups().mounts().clone();
    let mem = match (mounts.v1("memory"), &mounts.unified) {
        (Some(v1), _) => {
            let step = v1.join(&batch.rel).join("step_0");
            fs::write(step.join("memory.limit_in_bytes"), "64M").unwrap();
            v1.join(&batch.rel)
        }
        (None, Some(v2)) => {
            let mut dir = v2.clone();
            for part in format!("{}/step_0", batch.rel).split('/') {
                fs::write(dir.join("cgroup.subtree_control"), "+memory").unwrap();
                dir = dir.join(part);
            }
            fs::write(dir.join("memory.max"), "64M").unwrap();
            v2.join(&batch.rel)
        }
        (None, None) => panic!("no memory controller: the batch cgroup could not be made"),
    };
    let d = Daemon::start(&inst, "");
    let (sib, hog) = (marker("boomsib"), marker("boomhog"));
    let go = d.dir.join("go-oom");
    let mut job = batch.spawn(&format!(
        "{ESCAPE} sleep {sib} & while [ ! -e {g} ]; do sleep 0.02; done; \
         {ESCAPE} touch {hog} 256 60000 & wait",
        g = go.display()
    ));
    assert!(wait_for(T, || processes_named(&sib).len() == 1));
    // Bound over gRPC, as a batch system's daemon would.
    let (rt, mut c) = d.client();
    let bad = proto::CreateSlotRequest {
        name: "oomjob".into(),
        cgroup: format!("{}/../../etc", batch.rel),
        ..Default::default()
    };
    let e = rt.block_on(c.create_slot(bad)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let req = proto::CreateSlotRequest {
        name: "oomjob".into(),
        cgroup: batch.rel.clone(),
        ..Default::default()
    };
    let made = rt.block_on(c.create_slot(req)).unwrap().into_inner();
    let cg = made.slot.unwrap().cgroups.unwrap();
    assert_eq!(cg.bound, batch.rel);
    let bound_mem = cg.v1.get("memory").unwrap_or(&cg.unified);
    assert_eq!(*bound_mem, mem.display().to_string());
    let adopt = proto::AdoptProcessRequest { slot: "oomjob".into(), pid: job.id() };
    rt.block_on(c.adopt_process(adopt)).unwrap();
    fs::write(&go, "").unwrap();
    // The kernel kills the hog (the batch system's limit holds); the guard kills the rest.
    assert!(
        wait_for(T, || processes_named(&sib).is_empty()),
        "the sibling survived the step's OOM:\n{}",
        d.log()
    );
    assert!(processes_named(&hog).is_empty());
    assert!(wait_exit(&mut job, T).is_some());
    let s: serde_json::Value =
        serde_json::from_str(&inst.cli_ok(&["stat", "oomjob", "--json"])).unwrap();
    assert!(s["oom_kills"].as_u64().unwrap() >= 1, "{s}");
}

/// One line on stderr, starting `tracker: `, containing `want`; and no slot made.
fn refused(inst: &Instance, out: Output, want: &str, slots_before: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("tracker: ") && err.contains(want), "{err:?} lacks {want:?}");
    assert_eq!(inst.cli_ok(&["slots", "--json"]), slots_before, "something was created");
}

#[test]
fn bad_cgroup_paths_are_one_line_and_create_nothing() {
    let Some(inst) = Instance::start() else { return };
    let batch = BatchCgroup::new(&inst, "bad");
    inst.cli_ok(&["create", "first", "--cgroup", &batch.rel]);
    inst.cli_ok(&["create", "owned"]);
    let before = inst.cli_ok(&["slots", "--json"]);
    let root = batch.roots[0].display().to_string();
    let dir = test_dir("boundbad");
    let link = dir.join("link");
    symlink("/etc", &link).unwrap();
    let file = batch.dirs("")[0].join("cgroup.procs");
    let inside = format!("{}/step_0", batch.rel);
    let instance_parent = inst.name.clone();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["nope/never/there".into()], "does not exist"),
        (vec![format!("{root}/nope-{}", std::process::id())], "does not exist"),
        (vec![format!("{}/../..", batch.rel)], "`..` is not allowed"),
        (vec![file.display().to_string()], "not a directory"),
        (vec![dir.display().to_string()], "not in a mounted cgroup hierarchy"),
        (vec![link.display().to_string()], "not in a mounted cgroup hierarchy"),
        (vec![root.clone()], "hierarchy's root"),
        (vec![batch.rel.clone()], "overlaps slot \"first\"'s"),
        (vec![inside], "overlaps slot \"first\"'s"),
        (vec![instance_parent], "overlaps slot \"owned\"'s"),
    ];
    for (path, want) in cases {
        let out = inst.cli_output(&["create", "second", "--cgroup", &path[0]]);
        refused(&inst, out, want, &before);
    }
    let out = inst.cli_output(&["create", "second", "--cgroup", &batch.rel, "--memory-max", "1G"]);
    refused(&inst, out, "limits are the batch system's", &before);
    let out = inst.cli_output(&["set", "first", "--tasks-max", "10"]);
    refused(&inst, out, "limits are the batch system's", &before);
}

/// HTCondor's USER_JOB_WRAPPER way: `tracker run --cgroup <the wrapper's own cgroup>` from
/// inside the batch system's job cgroup. The job runs there, tagged; its escaped daemon dies
/// when the job ends; the tracker, in that cgroup too, does not freeze itself; the cgroup stays.
#[test]
fn tracker_run_binds_to_the_cgroup_it_runs_in_as_a_job_wrapper() {
    let Some(inst) = Instance::start() else { return };
    let batch = BatchCgroup::new(&inst, "wrap");
    let m = marker("bwrapd");
    let dir = test_dir("boundwrap");
    let out = dir.join("out");
    let tracker = tracker_tests::tracker_bin();
    let rel = format!("{}/step_0", batch.rel);
    let mut wrapper = batch.spawn(&format!(
        "TRACKER_INSTANCE={i} exec {t} run --slot wrapped --cgroup {rel} -- \
         sh -c 'cat /proc/self/cgroup; {ESCAPE} daemonize {m}' > {o} 2>&1",
        i = inst.name,
        t = tracker.display(),
        o = out.display()
    ));
    let status = wait_exit(&mut wrapper, T);
    let text = fs::read_to_string(&out).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {text}");
    // The job ran in the batch system's step cgroup, not one of the tracker's.
    let step = format!("/{}/step_0", batch.rel);
    assert!(text.lines().any(|l| l.ends_with(&step)), "{text}");
    assert!(!text.contains("slot-wrapped"), "{text}");
    assert!(processes_named(&m).is_empty(), "the job's daemon outlived it");
    assert!(!inst.cli_ok(&["slots"]).contains("wrapped"), "the slot was not released");
    for d in batch.dirs("step_0") {
        assert!(d.is_dir(), "{} was removed", d.display());
    }
}
