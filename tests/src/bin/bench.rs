//! `cargo xtask bench`: what the tracker costs, against no tracker, in one run.
//!
//! - fork+exit and fork+exec(/bin/true) of an untracked process and of a tagged one, each as a
//!   ratio against the same process with no programs attached; two long-lived worker processes
//!   (one untracked, one tagged) run batches on one pinned CPU while the bench detaches and
//!   re-attaches the programs between batches, alternating which comes first; medians;
//! - the per-call cost of each program, from the kernel's BPF statistics, on the untracked and
//!   the tagged path;
//! - the time to kill a slot of 1,000 sleeping processes, against a plain `cgroup.kill` of the
//!   same set.
//!
//! usage: bench [ROUNDS] | bench serve CPU (a worker: reads `fork N` / `exec N` lines)
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use tracker::{KillOptions, LoadOptions, Paths, SlotSpec, Tracker, loader, programs, status};

const CPU: usize = 1;
const FORKS: u32 = 3000;
const EXECS: u32 = 600;
const KILL_SET: usize = 1000;
const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        serve(args[2].parse().unwrap());
        return;
    }
    let rounds: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(15);
    let others: Vec<String> = fs::read_dir("/sys/fs/bpf")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let others: Vec<&String> = others
        .iter()
        .filter(|n| Paths::new(n).is_ok_and(|p| p.map_pin("TRK_TASKS").exists()))
        .collect();
    if !others.is_empty() {
        println!(
            "note: other tracker instances are loaded ({others:?}); their programs run in every case, the baseline included"
        );
    }
    let paths = Paths::new(&format!("bench-{}", std::process::id())).unwrap();
    let old_stats = fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    fs::write(STATS, "1").unwrap();
    let result = std::panic::catch_unwind(|| {
        overhead(&paths, rounds);
        if std::env::var_os("BENCH_OVERHEAD_ONLY").is_none() {
            kill_time(&paths);
        }
    });
    let _ = loader::unload(&paths, true);
    let _ = fs::write(STATS, old_stats.trim());
    if result.is_err() {
        std::process::exit(1);
    }
}

/// A worker: pinned to `cpu`, for each `fork N` or `exec N` line on stdin, do N fork+exit (or
/// fork+exec of /bin/true) and print the nanoseconds per operation.
fn serve(cpu: usize) {
    pin_to(cpu);
    for line in std::io::stdin().lines() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        let exec = words.next() == Some("exec");
        let n: u32 = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
        let t0 = Instant::now();
        for _ in 0..n {
            // SAFETY: the child only calls async-signal-safe functions before exiting.
            unsafe {
                let pid = libc::fork();
                if pid == 0 {
                    if exec {
                        let path = c"/bin/true".as_ptr();
                        let argv = [path, std::ptr::null()];
                        libc::execv(path, argv.as_ptr());
                    }
                    libc::_exit(0);
                }
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        println!("{}", t0.elapsed().as_nanos() as f64 / f64::from(n));
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A long-lived worker process (see `serve`).
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn command() -> Command {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["serve", &CPU.to_string()]).stdin(Stdio::piped()).stdout(Stdio::piped());
        c
    }

    fn from(mut child: Child) -> Self {
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdin, stdout }
    }

    /// An untracked worker.
    fn plain() -> Self {
        Self::from(Self::command().spawn().unwrap())
    }

    /// A worker tagged into `slot`.
    fn tagged(t: &Tracker, slot: &str) -> Self {
        Self::from(t.spawn(slot, &mut Self::command(), false).unwrap())
    }

    /// ns per operation of `n` operations `what`.
    fn run(&mut self, what: &str, n: u32) -> f64 {
        writeln!(self.stdin, "{what} {n}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().parse().unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Detach the always-on programs (fork, exit, exec): dropping their link pins detaches them.
/// The maps, the slots and the tags stay.
fn detach_tracking(paths: &Paths) {
    for p in [programs::FORK, programs::EXIT, programs::EXEC] {
        fs::remove_file(paths.link_pin(p)).unwrap();
    }
}

/// Attach them again: a load over pinned maps is an upgrade, which keeps every tag.
fn attach_tracking(paths: &Paths) {
    loader::load(paths, &LoadOptions::default()).unwrap();
}

/// Per-program (run count, run time ns) from the kernel's BPF statistics.
fn prog_stats(paths: &Paths) -> BTreeMap<&'static str, (u64, u64)> {
    status::status(paths)
        .unwrap()
        .programs
        .iter()
        .map(|p| (p.name, (p.run_count, p.run_time_ns)))
        .collect()
}

fn per_call(
    before: &BTreeMap<&'static str, (u64, u64)>,
    after: &BTreeMap<&'static str, (u64, u64)>,
    acc: &mut BTreeMap<&'static str, (u64, u64)>,
) {
    for (name, (c1, t1)) in after {
        let (c0, t0) = before.get(name).copied().unwrap_or_default();
        let e = acc.entry(name).or_default();
        e.0 += c1.saturating_sub(c0);
        e.1 += t1.saturating_sub(t0);
    }
}

fn median(v: &mut [f64]) -> f64 {
    median_spread(v).0
}

fn set_stats(on: bool) {
    fs::write(STATS, if on { "1" } else { "0" }).unwrap();
}

fn op_n(what: &str) -> u32 {
    if what == "fork" { FORKS } else { EXECS }
}

/// (median, interquartile range / 2) of `v`.
fn median_spread(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
    (q(0.5), (q(0.75) - q(0.25)) / 2.0)
}

type Samples = BTreeMap<(&'static str, &'static str), Vec<f64>>;

/// One batch of each operation from each worker.
fn batch(plain: &mut Worker, tagged: &mut Worker, attached: bool, samples: &mut Samples) {
    for what in ["fork", "exec"] {
        let n = op_n(what);
        let (p, t) = if attached { ("untracked", "tagged") } else { ("plain off", "tagged off") };
        samples.entry((what, p)).or_default().push(plain.run(what, n));
        samples.entry((what, t)).or_default().push(tagged.run(what, n));
    }
}

fn overhead(paths: &Paths, rounds: usize) {
    println!(
        "fork+exit ×{FORKS} and fork+exec(/bin/true) ×{EXECS} per batch, {rounds} rounds, \
         pinned to CPU {CPU}, BPF statistics off while timing"
    );
    loader::load(paths, &LoadOptions::default()).unwrap();
    let t = Tracker::open(paths.clone()).unwrap();
    t.create_slot(&SlotSpec { name: "bench".into(), ..Default::default() }).unwrap();
    let mut plain = Worker::plain();
    let mut tagged = Worker::tagged(&t, "bench");
    set_stats(false);
    let mut samples = Samples::new();
    // Alternate which state comes first, so that warm-up biases neither.
    for round in 0..rounds {
        // off-on, on-off, off-on...: each round starts where the last ended.
        for attached in if round % 2 == 0 { [false, true] } else { [true, false] } {
            if attached != paths.link_pin(programs::FORK).exists() {
                if attached { attach_tracking(paths) } else { detach_tracking(paths) }
            }
            batch(&mut plain, &mut tagged, attached, &mut samples);
        }
    }
    if !paths.link_pin(programs::FORK).exists() {
        attach_tracking(paths);
    }
    println!(
        "\n{:<10} {:>16} {:>16} {:>8} {:>16} {:>16} {:>8}",
        "op", "no tracker", "untracked", "ratio", "no tracker", "tagged", "ratio"
    );
    let mut base_ns = BTreeMap::new();
    for what in ["fork", "exec"] {
        let mut m = |case| median_spread(samples.get_mut(&(what, case)).unwrap());
        let (pb, pbs) = m("plain off");
        let (un, uns) = m("untracked");
        let (tb, tbs) = m("tagged off");
        let (tg, tgs) = m("tagged");
        base_ns.insert(what, pb);
        let label = if what == "fork" { "fork+exit" } else { "fork+exec" };
        let us = |m: f64, s: f64| format!("{:.1} ±{:.1} µs", m / 1e3, s / 1e3);
        println!(
            "{label:<10} {:>16} {:>16} {:>8.4} {:>16} {:>16} {:>8.4}",
            us(pb, pbs),
            us(un, uns),
            un / pb,
            us(tb, tbs),
            us(tg, tgs),
            tg / tb
        );
    }
    println!("(median ± half the interquartile range; each ratio compares one worker process with");
    println!(" the programs attached against the same process with them detached)");

    // Per-call cost, with the kernel's statistics on.
    set_stats(true);
    let mut untagged = BTreeMap::new();
    let mut tagged_calls = BTreeMap::new();
    for _ in 0..3 {
        for what in ["fork", "exec"] {
            let n = op_n(what);
            let s0 = prog_stats(paths);
            plain.run(what, n);
            let s1 = prog_stats(paths);
            tagged.run(what, n);
            let s2 = prog_stats(paths);
            per_call(&s0, &s1, &mut untagged);
            per_call(&s1, &s2, &mut tagged_calls);
        }
    }
    drop(tagged);
    let _ = t.kill("bench", &KillOptions::default());
    let ns = |m: &BTreeMap<&str, (u64, u64)>, name: &str| {
        m.get(name).filter(|(c, _)| *c > 0).map(|(c, t)| *t as f64 / *c as f64)
    };
    println!("\nper program call (kernel BPF statistics; the machine's other calls are mixed in):");
    println!("{:<10} {:>14} {:>14}", "program", "untagged path", "tagged path");
    for name in
        untagged.keys().chain(tagged_calls.keys()).collect::<std::collections::BTreeSet<_>>()
    {
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} ns"));
        println!(
            "{name:<10} {:>14} {:>14}",
            show(ns(&untagged, name)),
            show(ns(&tagged_calls, name))
        );
    }
    let cost = |m: &BTreeMap<&str, (u64, u64)>, names: &[&str]| -> f64 {
        names.iter().filter_map(|n| ns(m, n)).sum()
    };
    for (what, names) in
        [("fork", &["trk_fork", "trk_exit"][..]), ("exec", &["trk_fork", "trk_exec", "trk_exit"])]
    {
        let base = base_ns[what];
        let label = if what == "fork" { "fork+exit" } else { "fork+exec" };
        println!(
            "BPF time per {label}: untracked {:.0} ns ({:.3}% of {:.1} µs), tagged {:.0} ns ({:.3}%)",
            cost(&untagged, names),
            100.0 * cost(&untagged, names) / base,
            base / 1e3,
            cost(&tagged_calls, names),
            100.0 * cost(&tagged_calls, names) / base
        );
    }
}

/// Start `KILL_SET` sleepers under a shell in `cgroup`, or in `slot` when given.
fn sleepers_script() -> String {
    format!("for i in $(seq {KILL_SET}); do sleep 1000 & done; wait")
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill_time(paths: &Paths) {
    let t = Tracker::open(paths.clone()).unwrap();
    let Some(v2) = t.cgroups().mounts().unified.clone() else {
        println!("\nkill time: no cgroup2 mount, skipped");
        return;
    };
    let mut ours = vec![];
    let mut plain = vec![];
    for round in 0..3 {
        let name = format!("kill{round}");
        t.create_slot(&SlotSpec { name: name.clone(), ..Default::default() }).unwrap();
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &sleepers_script()]).stdout(Stdio::null());
        let mut child = t.spawn(&name, &mut cmd, true).unwrap();
        wait_until(Duration::from_secs(60), || {
            t.slot_status(&name).unwrap().tasks_live > KILL_SET as u64
        });
        let r = t.kill(&name, &KillOptions::default()).unwrap();
        assert!(r.is_complete());
        ours.push(r.elapsed_ms);
        let _ = child.wait();
        t.release(&name).unwrap();

        let cg = plain_cgroup(&v2, round);
        let procs = cg.join("cgroup.procs");
        let mut sh = Command::new("bash");
        let script = format!("echo $$ > {}; {}", procs.display(), sleepers_script());
        sh.args(["-c", &script]).stdout(Stdio::null());
        let mut child = sh.spawn().unwrap();
        wait_until(Duration::from_secs(60), || {
            fs::read_to_string(&procs).unwrap_or_default().lines().count() > KILL_SET
        });
        let t0 = Instant::now();
        fs::write(cg.join("cgroup.kill"), "1").unwrap();
        wait_until(Duration::from_secs(30), || {
            fs::read_to_string(cg.join("cgroup.events")).unwrap().contains("populated 0")
        });
        plain.push(t0.elapsed().as_secs_f64() * 1e3);
        let _ = child.wait();
        let _ = fs::remove_dir(&cg);
    }
    println!(
        "\nkill a slot of {KILL_SET} sleeping processes: tracker kill {:.1} ms, plain cgroup.kill {:.1} ms (medians of 3)",
        median(&mut ours),
        median(&mut plain)
    );
}

fn plain_cgroup(v2: &Path, round: usize) -> PathBuf {
    let dir = v2.join(format!("bench-plain-{}-{round}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}
