//! The Slurm integration (contrib/slurm) on a real one-node Slurm that the test starts on this
//! machine: its own munged, slurmctld and slurmd, with config, state, spool, logs, sockets and
//! ports of their own in a temporary directory, so that no system-wide Slurm or munge
//! configuration is read or touched. The daemons are stopped when the test ends, failed or
//! not.
//!
//! The cluster runs Slurm's production configuration: `proctrack/cgroup`,
//! `task/cgroup,task/affinity`, `jobacct_gather/cgroup`, and a cgroup.conf constraining RAM
//! and cores (cgroup/v1 on a hybrid or v1 machine, cgroup/v2 on a pure v2 one). The plugin
//! binds each job's slot to the job cgroup Slurm made and only tags. In order:
//! 1. without the plugin, a root job's double-forked daemon that writes itself into other
//!    cgroups outlives the job (proctrack/cgroup loses it), and the Epilog, finding no slot,
//!    lets the node be;
//! 2. with the plugin, the same daemon dies with its job; the slot was bound to Slurm's job
//!    cgroup and the task stayed in Slurm's cgroups;
//! 3. an ordinary user's job stays in Slurm's step cgroup, tagged; its usage is recorded and
//!    its slot released;
//! 4. Slurm's memory limit still kills an over-limit job (JobState=OUT_OF_MEMORY);
//! 5. Slurm still sees a running step's tasks (`scontrol listpids`, `sstat`), which the
//!    tracker has tagged;
//! 6. a batch job and an srun step inside it share one slot; both their escaped daemons die;
//! 7. when `tracker adopt` fails, the task does not run.
//!
//! Needs the Debian packages slurmctld, slurmd, slurm-client, munge and libslurm-dev
//! (`cargo xtask test` installs them).
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    io::Read as _,
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tracker_tests::{
    ESCAPE, Instance, marker, process_state, processes_named, scaled, skip, test_dir, tracker_bin,
    wait_exit, wait_for,
};

/// Generous: the daemons, the jobs and their epilogs each take well under ten seconds here.
const TIMEOUT: Duration = Duration::from_secs(60);

const SLURM_PROGRAMS: &[&str] = &[
    "munged",
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "srun",
    "sbatch",
    "squeue",
    "sinfo",
    "scancel",
    "scontrol",
    "sstat",
    "sacct",
    "sacctmgr",
    "mariadbd",
    "mariadb-install-db",
];
const SPANK_HEADER: &str = "/usr/include/slurm/spank.h";

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

#[test]
fn slurm_jobs_leave_nothing_behind_with_the_tracker() {
    let Some(inst) = Instance::start() else {
        return;
    };
    // Declared after the instance, so dropped before it: the daemons stop (and the last
    // epilogs finish) while the instance is still loaded.
    let Some(slurm) = Slurm::start(&inst) else {
        return;
    };
    escape_without_the_tracker(&slurm);
    escaped_daemon_dies_with_its_job(&slurm, &inst);
    user_job_stays_in_slurms_cgroup(&slurm, &inst);
    slurm_memory_limit_still_kills(&slurm, &inst);
    slurm_still_sees_running_tasks(&slurm, &inst);
    every_step_of_a_batch_job_shares_its_slot(&slurm, &inst);
    task_does_not_run_untracked(&slurm, &inst);
    // A drained node stays drained: waiting cannot hide an epilog that failed it.
    assert!(
        wait_for(TIMEOUT, || slurm.node_state() == "idle"),
        "the node is {:?}, not idle: an epilog failed it{}",
        slurm.node_state(),
        slurm.logs()
    );
}

/// A root job's daemon that double-forks and writes itself into the root cgroup of every
/// hierarchy, out of Slurm's step cgroup (and out of reach of proctrack/cgroup), with its
/// stdio closed as a real daemon's (one holding srun's pipes makes slurmstepd wait 60 s for
/// them: "Abandoning IO"). The job waits until it is out, so that the step's end cannot catch
/// it still inside.
fn escaping_daemon(name: &str, ready: &Path) -> String {
    format!(
        "(setsid sh -c 'for f in /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/cgroup.procs; do \
         [ -e $f ] && echo $$ > $f; done; touch {r}; exec {ESCAPE} sleep {name}' \
         </dev/null >/dev/null 2>&1 &); while [ ! -e {r} ]; do sleep 0.05; done",
        r = ready.display()
    )
}

/// The plugin's reading of a task's /proc/self/cgroup, on the layouts of Slurm's cgroup/v1
/// and cgroup/v2 (this machine runs only one of them), with Slurm's functions stubbed.
#[test]
fn the_plugin_finds_the_job_cgroup_in_every_layout() {
    if !Path::new(SPANK_HEADER).exists() {
        skip("slurm/spank.h is missing: `cargo xtask test` installs libslurm-dev");
        return;
    }
    let dir = test_dir("spank-parse");
    let bin = dir.join("spank_cgroup_test");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("helpers/spank_cgroup_test.c");
    let out = Command::new("gcc")
        .args(["-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = Command::new(&bin).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stdout));
    let _ = fs::remove_dir_all(&dir);
}

/// The problem: under proctrack/cgroup a job that leaves its cgroup is not the job's any
/// more.
fn escape_without_the_tracker(slurm: &Slurm) {
    slurm.set_plugstack("");
    let m = marker("sescape");
    let script = format!(
        "echo job=$SLURM_JOB_ID; {}; echo started",
        escaping_daemon(&m, &slurm.dir.join("escaped-daemon-ready"))
    );
    let job = slurm.srun(&["--job-name=escape", "bash", "-c", &script]);
    assert!(job.status.success(), "srun failed: {}", job.stderr);
    assert!(job.stdout.contains("started"), "{}", job.stdout);
    slurm.wait_until_gone(job.id);

    let escaped = processes_named(&m);
    assert!(!escaped.is_empty(), "without the tracker, the job's escaped daemon should survive it");
    eprintln!("without the tracker: job {} is gone, its daemon {escaped:?} is not", job.id);
    // The epilog ran for the job, found no slot, and let the node be.
    let log = slurm.epilog_log();
    assert!(log.contains(&format!("no slot slurm-{} on this node", job.id)), "{log}");

    for &pid in &escaped {
        // SAFETY: kill has no memory effects; the pid is the job's daemon, found above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(wait_for(TIMEOUT, || processes_named(&m).is_empty()));
}

/// The fix: the plugin binds the job's slot to Slurm's job cgroup and tags the task before it
/// runs; the Epilog kills what left the cgroup.
fn escaped_daemon_dies_with_its_job(slurm: &Slurm, inst: &Instance) {
    slurm.set_plugstack(&slurm.plugin_line(&tracker_bin(), inst));
    let m = marker("sbound");
    let script = format!(
        "echo job=$SLURM_JOB_ID; cat /proc/self/cgroup; {tracker} --instance {i} slots --json; \
         {daemon}; echo started",
        tracker = tracker_bin().display(),
        i = inst.name,
        daemon = escaping_daemon(&m, &slurm.dir.join("bound-daemon-ready"))
    );
    let job = slurm.srun(&["--job-name=bound", "bash", "-c", &script]);
    assert!(job.status.success(), "srun failed: {}{}", job.stderr, slurm.logs());
    // The slot is bound to the job's cgroup, and the task is still in it.
    let job_cg = slurm.job_cgroup(&job);
    let slots = &job.stdout[job.stdout.find('[').unwrap()..];
    let slots: serde_json::Value =
        serde_json::from_str(&slots[..=slots.rfind(']').unwrap()]).unwrap();
    let slot = slots.as_array().unwrap().iter().find(|s| s["name"] == format!("slurm-{}", job.id));
    let bound = slot.map(|s| s["cgroups"]["bound"].clone()).unwrap_or_default();
    assert_eq!(bound, job_cg.as_str(), "{}", job.stdout);
    let record = slurm.job_record(job.id, inst, &m);
    // Slurm could not reach the daemon: the tracker killed it.
    assert!(record["kill"]["killed"].as_u64().unwrap() >= 1, "{record}");
}

/// An ordinary user's job cannot leave its cgroup: it runs where Slurm put it, tagged.
fn user_job_stays_in_slurms_cgroup(slurm: &Slurm, inst: &Instance) {
    slurm.set_plugstack(&slurm.plugin_line(&tracker_bin(), inst));
    let m = marker("suser");
    let job = slurm.srun(&[
        "--job-name=user",
        "--uid=65534",
        "--gid=65534",
        "bash",
        "-c",
        &format!(
            "echo job=$SLURM_JOB_ID uid=$(id -u); cat /proc/self/cgroup; \
             exec {ESCAPE} daemonize {m} </dev/null >/dev/null 2>&1"
        ),
    ]);
    assert!(job.status.success(), "srun failed: {}", job.stderr);
    // An ordinary user's job: the plugin adopted it while still root, before it became
    // the user.
    assert!(job.stdout.contains("uid=65534"), "{}", job.stdout);
    slurm.job_cgroup(&job);
    let record = slurm.job_record(job.id, inst, &m);
    let usage = &record["usage"];
    // daemonize forks twice; the execs of bash and of the helper were counted in the slot,
    // so the task was in it before its program ran.
    assert!(usage["tasks_started"].as_u64().unwrap() >= 2, "{usage}");
    assert!(usage["execs"].as_u64().unwrap() >= 2, "{usage}");
}

/// task/cgroup's memory limit holds the tagged job: the kernel kills it in Slurm's cgroup.
fn slurm_memory_limit_still_kills(slurm: &Slurm, inst: &Instance) {
    slurm.set_plugstack(&slurm.plugin_line(&tracker_bin(), inst));
    let m = marker("shog");
    let job = slurm.srun(&[
        "--job-name=hog",
        "--mem=40M",
        "bash",
        "-c",
        &format!("echo job=$SLURM_JOB_ID; cat /proc/self/cgroup; exec {ESCAPE} touch {m} 200 100"),
    ]);
    assert!(!job.status.success(), "the job outgrew --mem=40M and lived: {}", job.stdout);
    slurm.job_cgroup(&job);
    let record = slurm.job_record(job.id, inst, &m);
    assert!(record["usage"]["exits_by_signal"].as_u64().unwrap() >= 1, "{record}");
    let state = slurm.output("scontrol", &["show", "job", &job.id.to_string()]);
    assert!(state.contains("JobState=OUT_OF_MEMORY"), "{state}\n{}", job.stderr);
    eprintln!("Slurm's memory limit: {}", job.stderr.trim());
    // Slurm's accounting of the step, from its cgroups (cpuacct): the CPU the tagged task
    // spent touching its pages until the limit stopped it. (MaxRSS is sampled every
    // JobAcctGatherFrequency seconds: a task this short has none.)
    let step = format!("{}.0", job.id);
    let mut acct = String::new();
    assert!(
        wait_for(TIMEOUT, || {
            acct = slurm.output(
                "sacct",
                &["-n", "-P", "-j", &step, "-o", "JobID,State,NTasks,MaxRSS,TotalCPU"],
            );
            let f: Vec<&str> = acct.trim().split('|').collect();
            f.len() == 5
                && f[0] == step
                && f[1] == "OUT_OF_MEMORY"
                && f[2] == "1"
                && cpu_seconds(f[4]) > 0.0
        }),
        "sacct does not account the step's task: {acct:?}"
    );
    eprintln!("sacct -j {step}: {}", acct.trim());
}

/// proctrack/cgroup and jobacct_gather/cgroup still find a running step's task, which the
/// tracker has tagged.
fn slurm_still_sees_running_tasks(slurm: &Slurm, inst: &Instance) {
    slurm.set_plugstack(&slurm.plugin_line(&tracker_bin(), inst));
    let m = marker("sspin");
    let out_path = slurm.dir.join("running-job.out");
    let mut srun = slurm
        .command("srun")
        .args(["--job-name=running", "bash", "-c"])
        .arg(format!("echo job=$SLURM_JOB_ID; exec {ESCAPE} spin {m} 600"))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut id = 0u32;
    assert!(wait_for(TIMEOUT, || {
        let text = fs::read_to_string(&out_path).unwrap_or_default();
        id = text.lines().find_map(|l| l.strip_prefix("job=")?.trim().parse().ok()).unwrap_or(0);
        id != 0 && processes_named(&m).len() == 1
    }));
    let spinner = processes_named(&m)[0];
    let slot = format!("slurm-{id}");
    assert!(inst.ps(&slot).iter().any(|p| p.pid == spinner), "the task is not tagged");
    // Slurm's process tracking: the step's cgroup still holds the task.
    let mut listed = String::new();
    assert!(
        wait_for(TIMEOUT, || {
            listed = slurm.output("scontrol", &["listpids", &id.to_string()]);
            listed.lines().any(|l| l.split_whitespace().next() == Some(&spinner.to_string()))
        }),
        "scontrol listpids does not see task {spinner}: {listed}"
    );
    // Slurm's accounting of the running step, gathered from its cgroups.
    let mut stat = String::new();
    assert!(
        wait_for(TIMEOUT, || {
            stat = slurm.output(
                "sstat",
                &["-n", "-P", "-j", &format!("{id}.0"), "-o", "JobID,NTasks,MaxRSS,AveCPU,Pids"],
            );
            let f: Vec<&str> = stat.trim().split('|').collect();
            f.len() == 5 && f[1] == "1" && f[4].split(',').any(|p| p == spinner.to_string())
        }),
        "sstat does not see the step's task {spinner}: {stat:?}"
    );
    eprintln!("scontrol listpids {id}:\n{listed}sstat -j {id}.0: {stat}");
    slurm.output("scancel", &[&id.to_string()]);
    assert!(wait_exit(&mut srun, TIMEOUT).is_some());
    slurm.job_record(id, inst, &m);
}

/// A batch job and a step it starts with srun: two slurmstepds, one slot (the second
/// `tracker create` finds it made), and an escaped daemon from each, both killed at the job's
/// end.
fn every_step_of_a_batch_job_shares_its_slot(slurm: &Slurm, inst: &Instance) {
    slurm.set_plugstack(&slurm.plugin_line(&tracker_bin(), inst));
    let m = marker("sbatchd");
    let step = escaping_daemon(&m, &slurm.dir.join("batch-step-ready"));
    let batch = escaping_daemon(&m, &slurm.dir.join("batch-ready"));
    let script = slurm.dir.join("batch-job.sh");
    let step_script = slurm.dir.join("batch-step.sh");
    write_executable(&step_script, &format!("#!/bin/sh\n{step}\n"));
    write_executable(
        &script,
        &format!("#!/bin/sh\nsrun {} || exit 1\n{batch}\n", step_script.display()),
    );
    let out = slurm.run_bounded(
        slurm
            .command("sbatch")
            .args(["--wait", "--parsable", "--job-name=batch", "--output=batch-%j.out"])
            .arg(&script),
    );
    assert!(out.status.success(), "sbatch failed: {}{}", out.stderr, slurm.logs());
    let id: u32 = out.stdout.trim().parse().unwrap_or_else(|_| panic!("{}", out.stdout));
    let record = slurm.job_record(id, inst, &m);
    assert!(record["kill"]["killed"].as_u64().unwrap() >= 2, "{record}");
}

/// A task whose adoption fails must not run at all.
fn task_does_not_run_untracked(slurm: &Slurm, inst: &Instance) {
    let refusing = slurm.dir.join("tracker-refusing-adopt");
    write_executable(
        &refusing,
        &format!(
            "#!/bin/sh\ncase \" $* \" in *\" adopt \"*) echo 'adopt refused by the test' >&2; \
             exit 1;; esac\nexec {} \"$@\"\n",
            tracker_bin().display()
        ),
    );
    slurm.set_plugstack(&slurm.plugin_line(&refusing, inst));
    let ran = slurm.dir.join("untracked-task-ran");
    let job = slurm.srun(&[
        "--job-name=refused",
        "bash",
        "-c",
        &format!("echo job=$SLURM_JOB_ID; touch {}", ran.display()),
    ]);
    assert!(!job.status.success(), "srun succeeded: {}", job.stdout);
    assert!(job.stderr.contains("adopt refused by the test"), "{}", job.stderr);
    assert!(!ran.exists(), "the task ran although it could not be tracked");
    // The task printed no job id: wait for the queue to empty instead.
    assert!(
        wait_for(TIMEOUT, || slurm.queue().is_some_and(|q| q.is_empty())),
        "{:?}",
        slurm.queue()
    );
}

/// A one-node Slurm in its own directory; stopped on drop.
struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
    /// Started daemons, in start order (munged, slurmctld, slurmd).
    daemons: Vec<(&'static str, Child)>,
    /// The cgroup this test made for slurmstepd's scope, removed with the cluster.
    made_slice: Option<PathBuf>,
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

struct Job {
    id: u32,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Slurm {
    /// Start munged, slurmctld and slurmd; `None` (after a skip) where Slurm is not installed.
    fn start(inst: &Instance) -> Option<Self> {
        let missing: Vec<&str> =
            SLURM_PROGRAMS.iter().copied().filter(|p| find_program(p).is_none()).collect();
        if !missing.is_empty() || !Path::new(SPANK_HEADER).exists() {
            skip(&format!(
                "Slurm is not installed (missing: {}{}): `cargo xtask test` installs it \
                 (apt-get install slurmctld slurmd slurmdbd slurm-client munge libslurm-dev \
                 mariadb-server)",
                missing.join(" "),
                if Path::new(SPANK_HEADER).exists() { "" } else { " slurm/spank.h" }
            ));
            return None;
        }
        // munged insists that everyone may traverse its socket's directory: test_dir's may.
        let dir = test_dir("slurm");
        let mut slurm =
            Self { conf: dir.join("slurm.conf"), dir, daemons: vec![], made_slice: None };
        slurm.build_plugin();
        let [ctld_port, slurmd_port, dbd_port, db_port] = free_ports();
        slurm.write_config(inst, [ctld_port, slurmd_port, dbd_port]);
        slurm.start_munged();
        slurm.start_accounting(db_port, dbd_port);
        for daemon in ["slurmctld", "slurmd"] {
            let log = fs::File::create(slurm.dir.join(format!("{daemon}.out"))).unwrap();
            let child = slurm
                .command(daemon)
                .arg("-D")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            slurm.daemons.push((daemon, child));
        }
        slurm.wait_up("the node to become idle", || slurm.node_state() == "idle");
        Some(slurm)
    }

    fn plugin(&self) -> PathBuf {
        self.dir.join("spank_tracker.so")
    }

    fn build_plugin(&self) {
        let src = contrib().join("spank_tracker.c");
        let out = Command::new("gcc")
            .args(["-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o"])
            .arg(self.plugin())
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn write_config(&mut self, inst: &Instance, [ctld_port, slurmd_port, dbd_port]: [u16; 3]) {
        let d = self.dir.display();
        let host = short_hostname();
        // The epilog is a copy: slurmd runs it only if it is executable, whatever the
        // checkout did to the file's mode.
        let epilog = self.dir.join("epilog.sh");
        write_executable(&epilog, &fs::read_to_string(contrib().join("epilog.sh")).unwrap());
        // epilog.sh reads its settings from tracker.conf next to slurm.conf.
        fs::write(
            self.dir.join("tracker.conf"),
            format!(
                "TRACKER={}\nTRACKER_INSTANCE={}\nTRACKER_USAGE_DIR={d}/usage\n\
                 TRACKER_EPILOG_LOG={d}/epilog.log\n",
                tracker_bin().display(),
                inst.name
            ),
        )
        .unwrap();
        self.set_plugstack("");
        // One CPU and 1000 MB: a node configured with more than it has is drained. Memory is
        // allocated (CR_Memory), so that task/cgroup enforces `--mem`.
        let conf = format!(
            "ClusterName=trk{pid}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={d}/ctld
SlurmdSpoolDir={d}/slurmd
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
PlugStackConfig={d}/plugstack.conf
Epilog={epilog}
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/linear
SelectTypeParameters=CR_Memory
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/cgroup
FirstJobId={first_job}
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={d}/munge/munge.socket
NodeName={host} NodeAddr=127.0.0.1 CPUs=1 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
",
            pid = std::process::id(),
            epilog = epilog.display(),
            first_job = first_job_id(),
        );
        fs::write(&self.conf, conf).unwrap();
        // Slurm reads cgroup.conf beside slurm.conf. Its cgroup paths (`slurm/uid_U/job_J`)
        // are machine-wide: job ids of our own keep them apart from another test's cluster.
        let plugin = if is_pure_v2() { "cgroup/v2" } else { "cgroup/v1" };
        // cgroup/v2 has systemd make slurmstepd's scope (over D-Bus); on a node without systemd
        // as its init, an administrator tells it to make the scope itself, as here.
        let systemd = if !is_pure_v2() {
            ""
        } else if Path::new("/run/systemd/system").exists() {
            "IgnoreSystemdOnFailure=yes\n"
        } else {
            // Slurm then makes `system.slice/<node>_slurmstepd.scope`, but not the slice.
            let slice = Path::new("/sys/fs/cgroup/system.slice");
            if !slice.exists() {
                fs::create_dir(slice).unwrap();
                self.made_slice = Some(slice.to_path_buf());
            }
            // What systemd's Delegate= would have done: the controllers Slurm constrains
            // jobs with, enabled down to the scope's parent.
            for parent in [Path::new("/sys/fs/cgroup"), slice] {
                for c in ["cpuset", "cpu", "io", "memory", "pids"] {
                    let control = parent.join("cgroup.subtree_control");
                    if let Err(e) = fs::write(&control, format!("+{c}")) {
                        panic!("enabling {c} in {}: {e}", control.display());
                    }
                }
            }
            "IgnoreSystemd=yes\n"
        };
        fs::write(
            self.dir.join("cgroup.conf"),
            format!(
                "CgroupPlugin={plugin}\nCgroupAutomount=no\nConstrainCores=yes\n\
                 ConstrainRAMSpace=yes\nConstrainDevices=yes\n{systemd}"
            ),
        )
        .unwrap();
        for sub in ["ctld", "slurmd"] {
            fs::create_dir_all(self.dir.join(sub)).unwrap();
        }
    }

    /// `sacct`'s database: a private MariaDB (its own data directory, socket and port, no
    /// grant tables: only this machine's loopback reaches it) and slurmdbd in front of it, with
    /// this cluster registered.
    fn start_accounting(&mut self, db_port: u16, dbd_port: u16) {
        let db = self.dir.join("db");
        fs::create_dir_all(&db).unwrap();
        let install = self.run_bounded(
            Command::new(find_program("mariadb-install-db").unwrap())
                .args(["--no-defaults", "--user=root", "--skip-test-db"])
                .arg(format!("--datadir={}", db.join("data").display())),
        );
        assert!(install.status.success(), "mariadb-install-db: {}", install.stderr);
        let log = fs::File::create(db.join("mariadbd.out")).unwrap();
        let child = Command::new(find_program("mariadbd").unwrap())
            .args([
                "--no-defaults",
                "--user=root",
                "--skip-grant-tables",
                "--bind-address=127.0.0.1",
            ])
            .arg(format!("--datadir={}", db.join("data").display()))
            .arg(format!("--socket={}", db.join("mariadb.sock").display()))
            .arg(format!("--pid-file={}", db.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", db.join("mariadbd.log").display()))
            .arg(format!("--port={db_port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.push(("mariadbd", child));
        let up = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        self.wait_up("mariadbd to listen", || up(db_port));

        let d = self.dir.display();
        let conf = self.dir.join("slurmdbd.conf");
        fs::write(
            &conf,
            format!(
                "AuthType=auth/munge\nAuthInfo=socket={d}/munge/munge.socket\nDbdHost={host}\n\
                 DbdAddr=127.0.0.1\nDbdPort={dbd_port}\nSlurmUser=root\n\
                 StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n\
                 StoragePort={db_port}\nStorageUser=root\nStorageLoc=slurm_acct_db\n\
                 LogFile={d}/slurmdbd.log\nPidFile={d}/slurmdbd.pid\n",
                host = short_hostname()
            ),
        )
        .unwrap();
        // slurmdbd refuses a configuration (it holds the database password) others can read.
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o600)).unwrap();
        let log = fs::File::create(self.dir.join("slurmdbd.out")).unwrap();
        let child = self
            .command("slurmdbd")
            .arg("-D")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.push(("slurmdbd", child));
        self.wait_up("slurmdbd to listen", || up(dbd_port));
        let cluster = format!("trk{}", std::process::id());
        let add =
            self.run_bounded(self.command("sacctmgr").args(["-i", "add", "cluster", &cluster]));
        assert!(add.status.success(), "sacctmgr: {}{}{}", add.stdout, add.stderr, self.logs());
    }

    /// A private munged: its own key, socket, pid, seed and log files in our directory.
    fn start_munged(&mut self) {
        let m = self.dir.join("munge");
        fs::create_dir_all(&m).unwrap();
        fs::set_permissions(&m, fs::Permissions::from_mode(0o755)).unwrap();
        let mut key = vec![0u8; 1024];
        fs::File::open("/dev/urandom").unwrap().read_exact(&mut key).unwrap();
        let key_file = m.join("munge.key");
        fs::write(&key_file, key).unwrap();
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
        let socket = m.join("munge.socket");
        let log = fs::File::create(m.join("munged.out")).unwrap();
        let child = Command::new(find_program("munged").unwrap())
            .arg("--foreground")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key_file.display()))
            .arg(format!("--log-file={}", m.join("munged.log").display()))
            .arg(format!("--pid-file={}", m.join("munged.pid").display()))
            .arg(format!("--seed-file={}", m.join("munged.seed").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.push(("munged", child));
        self.wait_up("munged's socket", || socket.exists());
    }

    /// Wait for `ready`, failing at once (with the logs) when one of our daemons has died: a
    /// daemon's fatal error must not read as a slow start for the whole TIMEOUT.
    fn wait_up(&self, what: &str, ready: impl Fn() -> bool) {
        let mut dead = None;
        let in_time = wait_for(TIMEOUT, || {
            dead = self.dead_daemon();
            dead.is_some() || ready()
        });
        if let Some(d) = dead {
            panic!("waiting for {what}: {d} exited{}", self.logs());
        }
        assert!(in_time, "waiting for {what}: not within {:?}{}", scaled(TIMEOUT), self.logs());
    }

    /// The first of our daemons that has exited (a zombie: we reap only in `drop`).
    fn dead_daemon(&self) -> Option<&'static str> {
        self.daemons.iter().find_map(|(name, child)| {
            matches!(process_state(child.id()), None | Some('Z' | 'X')).then_some(*name)
        })
    }

    fn set_plugstack(&self, text: &str) {
        // Read by srun and by each new slurmstepd: no reconfiguration needed.
        fs::write(self.dir.join("plugstack.conf"), text).unwrap();
    }

    /// A Slurm command pointed at this cluster, and only at it.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(find_program(program).unwrap());
        // A test run inside a Slurm job must not make srun join that job.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if ["SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SINFO_"]
                .iter()
                .any(|p| k.starts_with(p))
            {
                c.env_remove(&*k);
            }
        }
        c.env("SLURM_CONF", &self.conf).env_remove("TRACKER_INSTANCE").current_dir(&self.dir);
        c
    }

    fn output(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).stdin(Stdio::null()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn node_state(&self) -> String {
        self.output("sinfo", &["-h", "-o", "%T"]).trim().to_owned()
    }

    /// The ids of the jobs slurmctld holds as pending, running or completing; `None` when
    /// squeue fails (slurmctld busy), which must not pass for an empty queue.
    fn queue(&self) -> Option<Vec<u32>> {
        let out = self.command("squeue").args(["-h", "-o", "%i"]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        out.status.success().then(|| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// A job's completion includes its epilog: the job leaves the queue after it.
    fn wait_until_gone(&self, job: u32) {
        assert!(
            wait_for(TIMEOUT, || self.queue().is_some_and(|q| !q.contains(&job))),
            "job {job} is still in the queue: {}",
            self.output("squeue", &[])
        );
    }

    /// Run `cmd` (a client command), waiting for it at most TIMEOUT.
    fn run_bounded(&self, cmd: &mut Command) -> Finished {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.join(format!("client-{n}.out"));
        let err_path = self.dir.join(format!("client-{n}.err"));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        let status = wait_exit(&mut child, TIMEOUT)
            .unwrap_or_else(|| panic!("{cmd:?} did not return in {TIMEOUT:?}: {}", self.logs()));
        Finished {
            status,
            stdout: fs::read_to_string(&out_path).unwrap(),
            stderr: fs::read_to_string(&err_path).unwrap(),
        }
    }

    /// srun a job whose script prints `job=$SLURM_JOB_ID` first.
    fn srun(&self, args: &[&str]) -> Job {
        let out = self.run_bounded(self.command("srun").args(args));
        let id = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("job="))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|id| id.parse().ok())
            .unwrap_or(0);
        Job { id, status: out.status, stdout: out.stdout, stderr: out.stderr }
    }

    /// The plugstack.conf line for the plugin, with `tracker` as its binary.
    fn plugin_line(&self, tracker: &Path, inst: &Instance) -> String {
        format!(
            "required {} tracker={} instance={}\n",
            self.plugin().display(),
            tracker.display(),
            inst.name
        )
    }

    /// After a tracked job: wait for it to end (its epilog included); check that nothing
    /// named `marker` is left anywhere, that the epilog killed and released its slot; return
    /// the usage record the epilog wrote.
    fn job_record(&self, job: u32, inst: &Instance, marker: &str) -> serde_json::Value {
        self.wait_until_gone(job);
        let path = self.dir.join("usage").join(format!("{job}.json"));
        assert!(
            wait_for(TIMEOUT, || path.exists()),
            "no usage record {}{}",
            path.display(),
            self.logs()
        );
        assert_eq!(processes_named(marker), Vec::<u32>::new(), "job {job} left processes");

        let text = fs::read_to_string(&path).unwrap();
        let record: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}):\n{text}", path.display()));
        eprintln!("with the tracker: job {job} is gone with its daemons; its record:\n{text}");
        let slot = format!("slurm-{job}");
        assert_eq!(record["slot"], slot.as_str(), "{record}");
        assert_eq!(record["kill"]["survivors"].as_array().unwrap().len(), 0, "{record}");
        let slots = inst.cli_ok(&["slots", "--json"]);
        assert!(!slots.contains(&format!("\"{slot}\"")), "slot {slot} was not released: {slots}");
        record
    }

    /// The job cgroup Slurm put a job's task in, relative to the hierarchy roots
    /// (`slurm/uid_0/job_42`), from the `/proc/self/cgroup` the job printed: asserts the task
    /// was still in its step's cgroup, where Slurm put it, when its program ran.
    fn job_cgroup(&self, job: &Job) -> String {
        let want = format!("/job_{}/step_", job.id);
        let line = job
            .stdout
            .lines()
            .filter(|l| l.starts_with("0::") || l.split(':').nth(1) == Some("memory"))
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("the task is not in its step's cgroup:\n{}", job.stdout));
        let path = line.splitn(3, ':').nth(2).unwrap();
        let end = path.find(&want).unwrap() + want.len() - "/step_".len();
        path[1..end].to_owned()
    }

    fn epilog_log(&self) -> String {
        fs::read_to_string(self.dir.join("epilog.log")).unwrap_or_default()
    }

    /// The tails of the daemons' logs, for a failure message.
    fn logs(&self) -> String {
        let mut s = String::new();
        for name in [
            "munge/munged.log",
            "db/mariadbd.log",
            "slurmdbd.log",
            "slurmctld.log",
            "slurmd.log",
            "slurmd.out",
            "epilog.log",
        ] {
            let text = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s += &format!("\n--- {name}\n{}", lines[lines.len().saturating_sub(15)..].join("\n"));
        }
        s
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if self.daemons.iter().any(|(name, _)| *name == "slurmctld") {
            // Let jobs end through their epilogs while the daemons still run.
            let _ = self.command("scancel").args(["--partition=debug"]).output();
            wait_for(Duration::from_secs(20), || self.queue().is_some_and(|q| q.is_empty()));
        }
        // slurmd and slurmctld first, munged (which they need to talk) last.
        for (name, child) in self.daemons.iter_mut().rev() {
            // SAFETY: kill has no memory effects; the pid is our own child, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_exit(child, Duration::from_secs(10)).is_none() {
                eprintln!("warning: {name} ignored SIGTERM; killed it");
            }
        }
        // What the daemons leave running (slurmstepd, escaped job processes) carries this
        // cluster's SLURM_CONF in its environment.
        let conf = format!("SLURM_CONF={}", self.conf.display());
        for pid in processes_with_env(|env| env.contains(&conf.as_str())) {
            // SAFETY: kill has no memory effects; the process was started by this cluster.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if let Some(slice) = &self.made_slice {
            remove_cgroup_tree(slice);
        }
        if failed {
            eprintln!("slurm test directory kept: {}{}", self.dir.display(), self.logs());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Remove a cgroup and its descendants, leaves first, each once the tasks just killed in it
/// are gone (best effort: one still busy after a while stays, and says so).
fn remove_cgroup_tree(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    if !wait_for(Duration::from_secs(10), || fs::remove_dir(dir).is_ok()) {
        eprintln!("warning: cannot remove cgroup {}: still busy", dir.display());
    }
}

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/slurm")
}

/// Slurm's daemons live in sbin, which a test's PATH may lack.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The name slurmd gives its node: the host name up to its first dot.
fn short_hostname() -> String {
    let h = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    h.trim().split('.').next().unwrap().to_owned()
}

/// sacct's times (`00:00.103`, `01:02:03`, `1-02:03:04`) in seconds.
fn cpu_seconds(s: &str) -> f64 {
    let (days, rest) = s.split_once('-').unwrap_or(("0", s));
    let secs = rest.split(':').fold(0.0, |acc, part| acc * 60.0 + part.parse().unwrap_or(0.0));
    days.parse::<f64>().unwrap_or(0.0) * 86400.0 + secs
}

/// A first job id of this test process's own (Slurm's job ids go up to 0x03ff_ffff).
fn first_job_id() -> u32 {
    (std::process::id() % 4_000_000) * 16 + 1
}

/// Whether cgroup2 is mounted at /sys/fs/cgroup itself (no v1 hierarchies).
fn is_pure_v2() -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 "))
}

/// TCP ports free now, so that a Slurm or database already on the machine keeps its own.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> =
        (0..N).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Live processes (not this one) whose environment satisfies `pred`.
fn processes_with_env(pred: impl Fn(&[&str]) -> bool) -> Vec<u32> {
    let me = std::process::id();
    let mut pids = vec![];
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        // A zombie's environment reads empty: it matches nothing.
        let env = String::from_utf8_lossy(&env);
        let vars: Vec<&str> = env.split('\0').collect();
        if pred(&vars) {
            pids.push(pid);
        }
    }
    pids
}
