//! `cargo xtask bench`: what the tracker costs, against no tracker, in one run.
//!
//! - fork+exit and fork+exec(/bin/true) of an untracked process and of a tagged one, each as a
//!   ratio against the same process with no programs attached; two long-lived worker processes
//!   (one untracked, one tagged) run batches on one pinned CPU while the bench detaches and
//!   re-attaches the programs between batches, alternating which comes first; medians;
//! - the per-call cost of each program, from the kernel's BPF statistics, on the untracked and
//!   the tagged path;
//! - the time to kill a slot of 1,000 sleeping processes, against a plain `cgroup.kill` of the
//!   same set;
//! - the daemon: a gRPC usage query over its Unix socket, p50 and p99, against a
//!   `grpc.health.v1` check over the same socket, interleaved; and the events per second Watch
//!   delivers during a fork storm, with the count of any lost.
//!
//! usage: bench [ROUNDS] | bench serve CPU (a worker: reads `fork N` / `exec N` lines);
//! `BENCH_SECTIONS=overhead,stat,memory,daemon,kill` runs only those.
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
use tracker_tests::calibrate::EmptyProgram;

const CPU: usize = 1;
const FORKS: u32 = 3000;
const EXECS: u32 = 600;
const KILL_SET: usize = 1000;
/// Short batches of each operation, each worker, for the per-call costs.
const STAT_BATCHES: usize = 40;
const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

const USAGE: &str = "usage: bench [ROUNDS] | bench serve CPU (run it with `cargo xtask bench`)";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = match args.get(1).map(String::as_str) {
        None => 15,
        Some("serve") => {
            let Some(cpu) = args.get(2).and_then(|c| c.parse().ok()) else {
                eprintln!("bench: serve needs a CPU number\n{USAGE}");
                std::process::exit(2);
            };
            serve(cpu);
            return;
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return;
        }
        // Test runners and IDEs run every executable cargo builds with libtest's flags to
        // enumerate tests: this one has none, and must not start measuring.
        Some(flag) if flag.starts_with('-') => {
            libtest_empty(&args[1..]);
            return;
        }
        Some(r) => r.parse().unwrap_or_else(|_| {
            eprintln!("bench: {r:?} is not a number of rounds\n{USAGE}");
            std::process::exit(2);
        }),
    };
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
        // BENCH_SECTIONS=overhead,stat,memory,daemon,kill: some of them only.
        let only = std::env::var("BENCH_SECTIONS").unwrap_or_default();
        let want = |s: &str| only.is_empty() || only.split(',').any(|w| w == s);
        loader::load(&paths, &LoadOptions::default()).unwrap();
        let sections: [Section; 5] = [
            ("overhead", &|p| overhead(p, rounds)),
            ("stat", &stat_latency),
            ("memory", &kernel_memory),
            ("daemon", &daemon),
            ("kill", &kill_time),
        ];
        for (name, run) in sections {
            if want(name) {
                run(&paths);
            }
        }
    });
    let _ = loader::unload(&paths, true);
    let _ = fs::write(STATS, old_stats.trim());
    if result.is_err() {
        std::process::exit(1);
    }
}

type Section<'a> = (&'a str, &'a dyn Fn(&Paths));

/// Answer as a libtest harness with no tests does: `--list` lists none, anything else runs
/// none.
fn libtest_empty(args: &[String]) {
    if args.iter().any(|a| a == "--list") {
        println!("0 tests, 0 benchmarks");
    } else {
        println!(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n"
        );
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

/// What is attached during a batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// No program.
    Off,
    /// Tagging only: fork, exit, exec.
    Tracking,
    /// Tagging and accounting: also the final-switch harvest and the memory tracking.
    Accounting,
}

impl State {
    const ALL: [State; 3] = [State::Off, State::Tracking, State::Accounting];

    fn key(self) -> &'static str {
        match self {
            State::Off => "off",
            State::Tracking => "tracking",
            State::Accounting => "accounting",
        }
    }
}

const TRACKING: [&str; 3] = [programs::FORK, programs::EXIT, programs::EXEC];
const ACCOUNTING: [&str; 2] = [programs::FREE, programs::RSS];

/// Attach what `state` needs: a load over pinned maps is an upgrade, which keeps every tag;
/// dropping a link's pin detaches it.
fn set_state(paths: &Paths, state: State) {
    loader::load(paths, &LoadOptions::default()).unwrap();
    let drop: Vec<&str> = match state {
        State::Off => TRACKING.iter().chain(&ACCOUNTING).copied().collect(),
        State::Tracking => ACCOUNTING.to_vec(),
        State::Accounting => vec![],
    };
    for p in drop {
        fs::remove_file(paths.link_pin(p)).unwrap();
    }
}

/// The tracker's programs that run on every fork, exec, exit, switch and memory change, each
/// with its tracepoint and the name of the empty program the bench puts beside it.
const HOOKS: [(&str, &str, &str); 5] = [
    (programs::FORK, "task_newtask", "empty_fork"),
    (programs::EXEC, "sched_process_exec", "empty_exec"),
    (programs::EXIT, "sched_process_exit", "empty_exit"),
    (programs::FREE, "sched_process_free", "empty_free"),
    (programs::RSS, "rss_stat", "empty_rss"),
];

/// Per-program (run count, run time ns) from the kernel's BPF statistics: the tracker's, and
/// the bench's empty ones.
fn prog_stats(paths: &Paths) -> BTreeMap<&'static str, (u64, u64)> {
    let mut out: BTreeMap<&'static str, (u64, u64)> = status::status(paths)
        .unwrap()
        .programs
        .iter()
        .map(|p| (p.name, (p.run_count, p.run_time_ns)))
        .collect();
    for info in aya::programs::loaded_programs().flatten() {
        let Some(name) = info.name_as_str() else { continue };
        if let Some((_, _, empty)) = HOOKS.iter().find(|h| h.2 == name) {
            out.insert(empty, (info.run_count(), info.run_time().as_nanos() as u64));
        }
    }
    out
}

/// The mean nanoseconds per call of each program that ran between `before` and `after`.
fn per_call(
    before: &BTreeMap<&'static str, (u64, u64)>,
    after: &BTreeMap<&'static str, (u64, u64)>,
    acc: &mut BTreeMap<&'static str, Vec<f64>>,
) {
    for (name, (c1, t1)) in after {
        let (c0, t0) = before.get(name).copied().unwrap_or_default();
        let calls = c1.saturating_sub(c0);
        if calls > 0 {
            acc.entry(name).or_default().push(t1.saturating_sub(t0) as f64 / calls as f64);
        }
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

type Samples = BTreeMap<(&'static str, &'static str, &'static str), Vec<f64>>;

/// One batch of each operation from each worker.
fn batch(plain: &mut Worker, tagged: &mut Worker, state: State, samples: &mut Samples) {
    for what in ["fork", "exec"] {
        let n = op_n(what);
        samples.entry((what, "plain", state.key())).or_default().push(plain.run(what, n));
        samples.entry((what, "tagged", state.key())).or_default().push(tagged.run(what, n));
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
    // Rotate which state comes first, so that warm-up and the loads bias none of them.
    for round in 0..rounds {
        for i in 0..State::ALL.len() {
            let state = State::ALL[(round + i) % State::ALL.len()];
            set_state(paths, state);
            batch(&mut plain, &mut tagged, state, &mut samples);
        }
    }
    set_state(paths, State::Accounting);
    let mut base_ns = BTreeMap::new();
    for (who, title) in [("plain", "an untracked process"), ("tagged", "a tagged process")] {
        println!(
            "\n{title}: the same process with no program attached, with tagging, with tagging and accounting"
        );
        println!(
            "{:<10} {:>16} {:>16} {:>8} {:>16} {:>8}",
            "op", "no tracker", "tagging", "ratio", "+ accounting", "ratio"
        );
        for what in ["fork", "exec"] {
            let mut m =
                |state: State| median_spread(samples.get_mut(&(what, who, state.key())).unwrap());
            let (off, offs) = m(State::Off);
            let (tr, trs) = m(State::Tracking);
            let (ac, acs) = m(State::Accounting);
            if who == "plain" {
                base_ns.insert(what, off);
            }
            let label = if what == "fork" { "fork+exit" } else { "fork+exec" };
            let us = |m: f64, s: f64| format!("{:.1} ±{:.1} µs", m / 1e3, s / 1e3);
            println!(
                "{label:<10} {:>16} {:>16} {:>8.4} {:>16} {:>8.4}",
                us(off, offs),
                us(tr, trs),
                tr / off,
                us(ac, acs),
                ac / off
            );
        }
    }
    println!("(median ± half the interquartile range over the rounds; on this VM whole-operation");
    println!(
        " timings move by a few percent from batch to batch: the per-call costs below are the"
    );
    println!(" precise measure of what the programs add)");

    // Per-call cost, with the kernel's statistics on, over many short batches: this VM's
    // vCPUs are preempted by the host at times (steal time), which the kernel's clock counts
    // into whatever program was running; a batch without steal shows the program's own cost.
    // The empty programs first: the first program a tracepoint calls pays for warming the
    // call path, which would otherwise count against the tracker's.
    set_state(paths, State::Off);
    let btf = btf_rs::Btf::from_file("/sys/kernel/btf/vmlinux").unwrap();
    let empties: Vec<EmptyProgram> =
        HOOKS.iter().map(|(_, tp, empty)| EmptyProgram::attach(&btf, tp, empty).unwrap()).collect();
    set_state(paths, State::Accounting);
    set_stats(true);
    let mut untagged: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut tagged_calls: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for _ in 0..STAT_BATCHES {
        for what in ["fork", "exec"] {
            let n = op_n(what) / 10;
            let s0 = prog_stats(paths);
            plain.run(what, n);
            let s1 = prog_stats(paths);
            tagged.run(what, n);
            let s2 = prog_stats(paths);
            per_call(&s0, &s1, &mut untagged);
            per_call(&s1, &s2, &mut tagged_calls);
        }
    }
    drop(empties);
    drop(tagged);
    let _ = t.kill("bench", &KillOptions::default());
    let ns = |m: &mut BTreeMap<&str, Vec<f64>>, name: &str| -> Option<(f64, f64)> {
        let v = m.get_mut(name).filter(|v| !v.is_empty())?;
        let med = median(v);
        Some((med, v[0]))
    };
    println!(
        "\nper program call (kernel BPF statistics, {} batches; the machine's other calls are \
         mixed in): median, and in brackets the fastest batch; `empty@hook` is a program that \
         returns at once, on the same hook at the same time: the cost of any program there",
        STAT_BATCHES * 2
    );
    println!("{:<24} {:>18} {:>18}", "program", "untagged path", "tagged path");
    let names: Vec<&str> = untagged
        .keys()
        .chain(tagged_calls.keys())
        .copied()
        .collect::<std::collections::BTreeSet<&str>>()
        .into_iter()
        .filter(|n| !n.starts_with("empty"))
        .flat_map(|n| [n].into_iter().chain(HOOKS.iter().filter(move |h| h.0 == n).map(|h| h.2)))
        .collect();
    // Per program: (median, fastest batch) on the untagged path and on the tagged one.
    type Cost = Option<(f64, f64)>;
    let mut costs: BTreeMap<&str, (Cost, Cost)> = BTreeMap::new();
    for name in names {
        let (u, tg) = (ns(&mut untagged, name), ns(&mut tagged_calls, name));
        costs.insert(name, (u, tg));
        let show = |v: Option<(f64, f64)>| {
            v.map_or("-".to_owned(), |(m, min)| format!("{m:.0} ns ({min:.0})"))
        };
        let label = HOOKS
            .iter()
            .find(|h| h.2 == name)
            .map_or(name.to_owned(), |h| format!("  empty@{}", h.1));
        println!("{label:<24} {:>18} {:>18}", show(u), show(tg));
    }
    for (prog, tp, empty) in HOOKS {
        let (Some((Some(u), Some(tg))), Some((Some(eu), Some(et)))) =
            (costs.get(prog), costs.get(empty))
        else {
            continue;
        };
        println!(
            "{prog} over an empty program on {tp}: untagged path {:+.0} ns, tagged path {:+.0} ns",
            u.0 - eu.0,
            tg.0 - et.0
        );
    }
    let cost = |tagged: bool, names: &[&str]| -> f64 {
        names
            .iter()
            .filter_map(|n| costs.get(n))
            .filter_map(|(u, t)| if tagged { *t } else { *u })
            .map(|(median, _)| median)
            .sum()
    };
    for (what, names) in [
        ("fork", &["trk_fork", "trk_exit", "trk_free"][..]),
        ("exec", &["trk_fork", "trk_exec", "trk_exit", "trk_free"]),
    ] {
        let base = base_ns[what];
        let label = if what == "fork" { "fork+exit" } else { "fork+exec" };
        println!(
            "BPF time per {label}: untracked {:.0} ns ({:.3}% of {:.1} µs), tagged {:.0} ns ({:.3}%)",
            cost(false, names),
            100.0 * cost(false, names) / base,
            base / 1e3,
            cost(true, names),
            100.0 * cost(true, names) / base
        );
    }
}

/// A slot `name` of `n` sleeping processes (a shell and its `n - 1` children).
fn sleepers(t: &Tracker, name: &str, n: usize) -> Child {
    t.create_slot(&SlotSpec { name: name.into(), ..Default::default() }).unwrap();
    let mut cmd = Command::new("bash");
    let script = format!("for i in $(seq {}); do sleep 1000 & done; wait", n - 1);
    cmd.args(["-c", &script]).stdout(Stdio::null());
    let child = t.spawn(name, &mut cmd, true).unwrap();
    wait_until(Duration::from_secs(60), || t.slot_status(name).unwrap().tasks_live >= n as u64);
    child
}

fn stat_latency(paths: &Paths) {
    let t = Tracker::open(paths.clone()).unwrap();
    println!("\none usage read of a slot (what `tracker stat` does), median of 50; and the whole");
    println!("`tracker stat --json` command, process start included, median of 10:");
    for n in [10, 1000] {
        let name = format!("stat{n}");
        let mut child = sleepers(&t, &name, n);
        let mut lib = vec![];
        for _ in 0..50 {
            let t0 = Instant::now();
            let u = t.usage(&name).unwrap();
            lib.push(t0.elapsed().as_secs_f64() * 1e3);
            assert!(u.tasks_live >= n as u64);
        }
        let mut cli = vec![];
        let bin = std::env::var_os("TRACKER_BIN").map(PathBuf::from);
        for _ in 0..10 {
            let Some(bin) = &bin else { break };
            let t0 = Instant::now();
            let out = Command::new(bin)
                .args(["--instance", paths.instance(), "stat", &name, "--json"])
                .output()
                .unwrap();
            cli.push(t0.elapsed().as_secs_f64() * 1e3);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let cli = if cli.is_empty() { "-".into() } else { format!("{:.2} ms", median(&mut cli)) };
        println!(
            "  {n:>5} live processes: {:.3} ms (max {:.3} ms); command {cli}",
            median(&mut lib.clone()),
            lib.iter().copied().fold(0.0, f64::max)
        );
        assert!(t.kill(&name, &KillOptions::default()).unwrap().is_complete());
        let _ = child.wait();
        t.release(&name).unwrap();
    }
}

/// Kernel memory a map holds now (`memlock` in its fdinfo; 6.4+ counts what it really uses).
fn memlock(paths: &Paths, name: &str) -> (u64, u64) {
    let data = aya::maps::MapData::from_pin(paths.map_pin(name)).unwrap();
    let info = data.info().unwrap();
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = data.fd().as_fd().as_raw_fd();
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let bytes = text
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (bytes, u64::from(info.max_entries()))
}

fn kernel_memory(paths: &Paths) {
    use tracker_common::map_name;
    let t = Tracker::open(paths.clone()).unwrap();
    println!("\nkernel memory of the maps (memlock):");
    for name in [
        map_name::TASKS,
        map_name::SLOTS,
        map_name::COUNTERS,
        map_name::MM_RSS,
        map_name::CGROUP_SLOTS,
        map_name::ADOPT,
        map_name::USAGE,
    ] {
        let (bytes, entries) = memlock(paths, name);
        println!("  {name:<18} {:>10} bytes for {entries:>6} entries", bytes);
    }
    let (tasks, pids) = memlock(paths, map_name::TASKS);
    let (slots, nslots) = memlock(paths, map_name::SLOTS);
    let (counters, _) = memlock(paths, map_name::COUNTERS);
    // The per-process memory entry: what 1,000 live processes that touched memory add.
    let (before, _) = memlock(paths, map_name::MM_RSS);
    let mut child = sleepers(&t, "memory", 1000);
    let (after, _) = memlock(paths, map_name::MM_RSS);
    assert!(t.kill("memory", &KillOptions::default()).unwrap().is_complete());
    let _ = child.wait();
    t.release("memory").unwrap();
    println!(
        "per tracked task: {} bytes of the tasks array, fixed, for each of the {pids} possible tids \
         (pid_max), plus {} bytes per process for its memory entry",
        tasks / pids,
        after.saturating_sub(before) / 1000
    );
    println!(
        "per slot: {} bytes ({} of control, {} of per-CPU counters), fixed for each of the {nslots} slots",
        (slots + counters) / nslots,
        slots / nslots,
        counters / nslots
    );
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
        let mut child = sleepers(&t, &name, KILL_SET + 1);
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

/// p-th percentile (0..=1) of sorted `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn daemon(paths: &Paths) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tracker::daemon::proto::{self, tracker_client::TrackerClient};

    const CALLS: usize = 2000;
    // The teardown of the processes the sections before killed goes on in the kernel for a
    // moment, and would weigh on the latencies measured here.
    std::thread::sleep(Duration::from_secs(3));
    let t = Tracker::open(paths.clone()).unwrap();
    let d = tracker_tests::daemon::Daemon::for_instance(paths.instance(), "");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let channel = rt.block_on(tracker_tests::daemon::connect(&d.socket));
    let mut client = TrackerClient::new(channel.clone());
    let mut health = HealthClient::new(channel);

    let mut child = sleepers(&t, "grpc", 10);
    let (mut usage, mut check) = (vec![], vec![]);
    rt.block_on(async {
        for i in 0..CALLS + 100 {
            let t0 = Instant::now();
            let u = client.get_usage(proto::GetUsageRequest { slot: "grpc".into() }).await.unwrap();
            let t1 = Instant::now();
            health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
            let t2 = Instant::now();
            assert!(u.into_inner().usage.unwrap().tasks_live >= 10);
            // The first hundred warm the connection and the daemon's threads up.
            if i >= 100 {
                usage.push((t1 - t0).as_secs_f64() * 1e6);
                check.push((t2 - t1).as_secs_f64() * 1e6);
            }
        }
    });
    assert!(t.kill("grpc", &KillOptions::default()).unwrap().is_complete());
    let _ = child.wait();
    t.release("grpc").unwrap();
    usage.sort_by(f64::total_cmp);
    check.sort_by(f64::total_cmp);
    let (u50, u99, h50, h99) = (
        percentile(&usage, 0.5),
        percentile(&usage, 0.99),
        percentile(&check, 0.5),
        percentile(&check, 0.99),
    );
    println!(
        "\ngRPC over the Unix socket, {CALLS} calls each, interleaved: GetUsage of a slot of 10 \
         processes p50 {u50:.0} µs, p99 {u99:.0} µs; grpc.health.v1 Check p50 {h50:.0} µs, p99 \
         {h99:.0} µs; ratio p50 {:.2}, p99 {:.2}",
        u50 / h50,
        u99 / h99
    );

    // Watch during a fork storm: every event of the storm, numbered; any loss counted.
    const STORM: u32 = 20_000;
    t.create_slot(&SlotSpec { name: "storm".into(), ..Default::default() }).unwrap();
    let mut worker = Worker::tagged(&t, "storm");
    let mut stream = rt
        .block_on(client.watch(proto::WatchRequest { slot: "storm".into() }))
        .unwrap()
        .into_inner();
    let storm = std::thread::spawn(move || {
        let t0 = Instant::now();
        worker.run("fork", STORM);
        (t0, t0.elapsed())
    });
    let (mut forks, mut exits, mut lost, mut last_seq, mut gaps) = (0u32, 0u32, 0u64, 0u64, 0u64);
    let mut last = Instant::now();
    rt.block_on(async {
        while forks < STORM || exits < STORM {
            let r = match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                Ok(Ok(Some(r))) => r,
                other => {
                    println!("Watch ended early: {other:?}");
                    break;
                }
            };
            let e = r.event.unwrap();
            match e.kind() {
                proto::EventKind::Fork => forks += 1,
                proto::EventKind::Exit => exits += 1,
                proto::EventKind::Lost => lost += e.lost,
                _ => {}
            }
            if e.seq != 0 {
                if last_seq != 0 {
                    gaps += e.seq - last_seq - 1;
                }
                last_seq = e.seq;
            }
            last = Instant::now();
        }
    });
    let (t0, storm_took) = storm.join().unwrap();
    let took = (last - t0).as_secs_f64();
    let events = u64::from(forks + exits);
    println!(
        "Watch during a fork storm of {STORM} fork+exit ({:.0} forks/s): {events} events delivered \
         in {took:.2} s, {:.0} events/s; lost {lost} (announced), {gaps} missing from the numbering",
        f64::from(STORM) / storm_took.as_secs_f64(),
        events as f64 / took
    );
    let _ = t.kill("storm", &KillOptions::default());
    let _ = t.release("storm");
}
