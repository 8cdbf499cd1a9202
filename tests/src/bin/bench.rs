//! `cargo xtask bench`: what the tracker costs, against no tracker, in one run.
//!
//! - fork+exit and fork+exec(/bin/true) of an untracked process and of a tagged one, each as a
//!   ratio against the same process with no programs attached; two long-lived worker processes
//!   (one untracked, one tagged) run batches on one pinned CPU while the bench detaches and
//!   re-attaches the programs between batches, alternating which comes first; medians;
//! - the per-call cost of each program, from the kernel's BPF statistics, on the untracked and
//!   the tagged path;
//! - `tracker ps`, `stat`, `adopt` and `kill` of a slot of 10 processes, with the tasks array
//!   sized as kernel.pid_max 32768 and 4194304 size it (`LoadOptions::tasks_capacity`: the
//!   machine's pid_max is left alone);
//! - the time to kill a slot of 1,000 sleeping processes, against a plain `cgroup.kill` of the
//!   same set;
//! - the daemon: a gRPC usage query over its Unix socket, p50 and p99, against a
//!   `grpc.health.v1` check over the same socket, interleaved; and the events per second Watch
//!   delivers during a fork storm, with the count of any lost.
//!
//! usage: bench [ROUNDS] | bench serve CPU (a worker: reads `fork N` / `exec N` lines);
//! `BENCH_SECTIONS=overhead,scale,stat,memory,daemon,kill` runs only those.
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
/// Pipe round trips (two context switches each) and page faults per batch.
const PIPES: u32 = 20_000;
const FAULTS: u32 = 20_000;
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
        // BENCH_SECTIONS=overhead,scale,stat,memory,daemon,kill: some of them only.
        let only = std::env::var("BENCH_SECTIONS").unwrap_or_default();
        let want = |s: &str| only.is_empty() || only.split(',').any(|w| w == s);
        loader::load(&paths, &LoadOptions::default()).unwrap();
        let sections: [Section; 6] = [
            ("overhead", &|p| overhead(p, rounds)),
            ("scale", &|_| scale()),
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

/// A worker: pinned to `cpu`, for each `OP N` line on stdin (`fork`: fork+exit+wait, `exec`:
/// fork+exec(/bin/true)+wait, `pipe`: a round trip over two pipes with a child on the same
/// CPU, two context switches, `fault`: a first touch of an anonymous page), do N of them and
/// print the nanoseconds per operation.
fn serve(cpu: usize) {
    pin_to(cpu);
    for line in std::io::stdin().lines() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        let op = words.next().unwrap_or("fork").to_owned();
        let n: u32 = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
        let t0 = Instant::now();
        match op.as_str() {
            "pipe" => ping_pong(n),
            "fault" => touch_pages(n),
            _ => fork_loop(n, op == "exec"),
        }
        println!("{}", t0.elapsed().as_nanos() as f64 / f64::from(n));
    }
}

fn fork_loop(n: u32, exec: bool) {
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
}

/// `n` round trips of one byte with a child on this CPU (it inherits the pinning): each
/// round trip is two context switches. The child's fork and exit are outside the n.
fn ping_pong(n: u32) {
    let (mut to, mut from) = ([0i32; 2], [0i32; 2]);
    // SAFETY: plain pipe/fork/read/write on fds this function owns; the child only calls
    // async-signal-safe functions.
    unsafe {
        libc::pipe(to.as_mut_ptr());
        libc::pipe(from.as_mut_ptr());
        let pid = libc::fork();
        let mut b = 0u8;
        let p = (&raw mut b).cast();
        if pid == 0 {
            // Only the parent's ends stay open: its close of `to` ends this loop.
            libc::close(to[1]);
            libc::close(from[0]);
            while libc::read(to[0], p, 1) == 1 {
                libc::write(from[1], p, 1);
            }
            libc::_exit(0);
        }
        libc::close(to[0]);
        libc::close(from[1]);
        for _ in 0..n {
            libc::write(to[1], p, 1);
            libc::read(from[0], p, 1);
        }
        libc::close(to[1]);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::close(from[0]);
    }
}

/// `n` page faults: the first touch of each page of a fresh anonymous mapping.
fn touch_pages(n: u32) {
    let len = n as usize * 4096;
    // SAFETY: a private anonymous mapping, written within its bounds, then unmapped.
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(m, libc::MAP_FAILED);
        let base = m.cast::<u8>();
        for i in 0..n as usize {
            base.add(i * 4096).write_volatile(1);
        }
        libc::munmap(m, len);
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
    /// The static C worker `cargo xtask bench` builds (`BENCH_WORKER`), else this program's
    /// own `serve`, whose larger address space makes a fork dearer and so the ratios smaller.
    fn command() -> Command {
        let mut c = match std::env::var_os("BENCH_WORKER") {
            Some(worker) => Command::new(worker),
            None => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.arg("serve");
                c
            }
        };
        c.arg(CPU.to_string()).stdin(Stdio::piped()).stdout(Stdio::piped());
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
    /// The tracker's programs, as a load attaches them.
    On,
}

impl State {
    const ALL: [State; 2] = [State::Off, State::On];

    fn key(self) -> &'static str {
        match self {
            State::Off => "off",
            State::On => "on",
        }
    }
}

/// The programs on the hooks every process takes (`trk_rss` is attached only while a slot
/// needs it: its pin may be absent).
const HOT: [&str; 6] =
    [programs::FORK, programs::EXIT, programs::DEAD, programs::EXEC, programs::FREE, programs::RSS];

/// Attach what `state` needs: a load over pinned maps is an upgrade, which keeps every tag;
/// dropping a link's pin detaches it. First every tagged task that exited is let be freed
/// (an RCU grace period after the last batch) while the free program is there and nothing
/// attaches to its hook: the kernel may skip a program's run on a tracepoint while a program
/// attaches there or leaves, and a free seen by no program would stay in the kernel's count of
/// pending frees for good and keep the free program's path open (on a node the programs stay
/// attached, and that never happens). Waiting only before the detach, a free of the last
/// batch could fall in the upgrade's re-attach: the count then never came back to 0.
fn set_state(paths: &Paths, state: State) {
    assert!(frees_settled(paths), "tagged tasks exited and were never freed");
    loader::load(paths, &LoadOptions::default()).unwrap();
    if state == State::Off {
        for p in HOT {
            let _ = fs::remove_file(paths.link_pin(p));
        }
    }
}

/// Whether every tagged task that exited has been freed, within 10 s (a grace period or so).
fn frees_settled(paths: &Paths) -> bool {
    tracker_tests::wait_for(Duration::from_secs(10), || {
        status::status(paths).unwrap().pending_frees == Some(0)
    })
}

/// The tracker's programs that run on every fork, exec, exit, switch and memory change, each
/// with its tracepoint and the name of the empty program the bench puts beside it. The exit
/// backstop (`trk_dead`, at every context switch) is attached only on kernels that may skip a
/// run of the exit program (7.0+), or with `TRACKER_PREEMPTIBLE_TRACEPOINTS=1`: measured where it is.
const HOOKS: [(&str, &str, &str); 6] = [
    (programs::FORK, "sched_wakeup_new", "empty_fork"),
    (programs::EXEC, "sched_process_exec", "empty_exec"),
    (programs::EXIT, "sched_process_exit", "empty_exit"),
    (programs::DEAD, "sched_switch", "empty_switch"),
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

fn median(v: &mut [f64]) -> f64 {
    median_spread(v).0
}

fn set_stats(on: bool) {
    fs::write(STATS, if on { "1" } else { "0" }).unwrap();
}

/// The operations timed, in the order of the tables.
const OPS: [&str; 4] = ["fork", "exec", "pipe", "fault"];

fn op_n(what: &str) -> u32 {
    match what {
        "fork" => FORKS,
        "exec" => EXECS,
        "pipe" => PIPES,
        _ => FAULTS,
    }
}

fn op_label(what: &str) -> &'static str {
    match what {
        "fork" => "fork+exit",
        "exec" => "fork+exec",
        "pipe" => "pipe round trip",
        _ => "page fault",
    }
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
    for what in OPS {
        let n = op_n(what);
        samples.entry((what, "plain", state.key())).or_default().push(plain.run(what, n));
        samples.entry((what, "tagged", state.key())).or_default().push(tagged.run(what, n));
    }
}

fn overhead(paths: &Paths, rounds: usize) {
    println!(
        "fork+exit ×{FORKS}, fork+exec(/bin/true) ×{EXECS}, pipe round trips ×{PIPES} and page \
         faults ×{FAULTS} per batch, {rounds} rounds, pinned to CPU {CPU}, BPF statistics off \
         while timing; worker: {}",
        if std::env::var_os("BENCH_WORKER").is_some() {
            "static C (tests/bench/worker.c)"
        } else {
            "this program (`bench serve`)"
        }
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
    set_state(paths, State::On);
    let mut base_ns = BTreeMap::new();
    for (who, title) in [("plain", "an untracked process"), ("tagged", "a tagged process")] {
        println!("\n{title}: the same process with no program attached, and with the tracker's");
        println!("{:<16} {:>16} {:>16} {:>8}", "op", "no tracker", "tracker", "ratio");
        for what in OPS {
            let mut m =
                |state: State| median_spread(samples.get_mut(&(what, who, state.key())).unwrap());
            let (off, offs) = m(State::Off);
            let (on, ons) = m(State::On);
            if who == "plain" {
                base_ns.insert(what, off);
            }
            let label = op_label(what);
            let us = |m: f64, s: f64| {
                if m >= 1e4 {
                    format!("{:.1} ±{:.1} µs", m / 1e3, s / 1e3)
                } else {
                    format!("{m:.0} ±{s:.0} ns")
                }
            };
            println!("{label:<16} {:>16} {:>16} {:>8.4}", us(off, offs), us(on, ons), on / off);
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
    let programs = status::status(paths).unwrap().programs;
    let empties: Vec<EmptyProgram> = HOOKS
        .iter()
        .filter(|(prog, ..)| programs.iter().any(|p| p.name == *prog))
        .map(|(_, tp, empty)| EmptyProgram::attach(&btf, tp, empty).unwrap())
        .collect();
    set_state(paths, State::On);
    set_stats(true);
    // Per (operation, program): calls per operation and ns per call, for each batch.
    let mut untagged = CallSamples::new();
    let mut tagged_calls = CallSamples::new();
    for _ in 0..STAT_BATCHES {
        for what in OPS {
            let n = op_n(what) / 10;
            let s0 = prog_stats(paths);
            plain.run(what, n);
            let s1 = prog_stats(paths);
            tagged.run(what, n);
            let s2 = prog_stats(paths);
            per_call(what, n, &s0, &s1, &mut untagged);
            per_call(what, n, &s1, &s2, &mut tagged_calls);
        }
    }
    // Read before the empty programs leave: a free that falls in their detach may be seen by no
    // program (see `set_state`), and the count would show the bench's churn, not the tracker.
    frees_settled(paths);
    let pending_after = status::status(paths).unwrap().pending_frees;
    drop(empties);
    drop(tagged);
    let _ = t.kill("bench", &KillOptions::default());
    println!(
        "\nwhere the time goes (kernel BPF statistics, {STAT_BATCHES} batches of a tenth of the \
         above per operation; the machine's other calls are mixed in): calls per operation × \
         median ns per call = ns per operation, untagged and tagged; `empty@hook` is a program \
         that returns at once, on the same hook at the same time: the cost of any program there"
    );
    println!(
        "{:<16} {:<26} {:>26} {:>26}",
        "op", "program", "untagged: calls × ns = ns", "tagged: calls × ns = ns"
    );
    for what in OPS {
        let base = base_ns[what];
        let (mut sum_u, mut sum_t) = (0.0, 0.0);
        for (prog, tp, empty) in HOOKS {
            for name in [prog, empty] {
                let u = cost(&mut untagged, what, name);
                let tg = cost(&mut tagged_calls, what, name);
                if u.is_none() && tg.is_none() {
                    continue;
                }
                if name == prog {
                    sum_u += u.map_or(0.0, |c| c.0 * c.1);
                    sum_t += tg.map_or(0.0, |c| c.0 * c.1);
                }
                let show = |c: Option<(f64, f64)>| {
                    c.map_or("-".to_owned(), |(calls, ns)| {
                        format!("{calls:.2} × {ns:.0} = {:.0}", calls * ns)
                    })
                };
                let label = if name == empty { format!("  empty@{tp}") } else { name.to_owned() };
                println!("{:<16} {label:<26} {:>26} {:>26}", op_label(what), show(u), show(tg));
            }
        }
        println!(
            "{:<16} {:<26} {:>26} {:>26}",
            op_label(what),
            "all tracker programs",
            format!("{sum_u:.0} ns ({:.2}%)", 100.0 * sum_u / base),
            format!("{sum_t:.0} ns ({:.2}%)", 100.0 * sum_t / base)
        );
    }
    println!("(percentages of the operation's time with no tracker, pinned to CPU {CPU})");
    println!("(exited tagged tasks awaiting their free, after these batches: {pending_after:?})");
}

type CallSamples = BTreeMap<(&'static str, &'static str), (Vec<f64>, Vec<f64>)>;

/// Record, for operation `what` done `n` times between `before` and `after`, each program's
/// calls per operation and ns per call.
fn per_call(
    what: &'static str,
    n: u32,
    before: &BTreeMap<&'static str, (u64, u64)>,
    after: &BTreeMap<&'static str, (u64, u64)>,
    acc: &mut CallSamples,
) {
    for (name, (c1, t1)) in after {
        let (c0, t0) = before.get(name).copied().unwrap_or_default();
        let calls = c1.saturating_sub(c0);
        let e = acc.entry((what, name)).or_default();
        e.0.push(calls as f64 / f64::from(n));
        if calls > 0 {
            e.1.push(t1.saturating_sub(t0) as f64 / calls as f64);
        }
    }
}

/// (median calls per operation, median ns per call) of `name` during `what`, if it ran.
fn cost(acc: &mut CallSamples, what: &'static str, name: &'static str) -> Option<(f64, f64)> {
    let (calls, ns) = acc.get_mut(&(what, name))?;
    if ns.is_empty() {
        return None;
    }
    Some((median(calls), median(ns)))
}

const SCALE_ROUNDS: usize = 15;

/// The CLI's cost for a slot of 10 processes, against the size of the tasks array.
fn scale() {
    let Some(bin) = std::env::var_os("TRACKER_BIN").map(PathBuf::from) else {
        println!("\nscale: TRACKER_BIN is not set (run `cargo xtask bench`), skipped");
        return;
    };
    println!(
        "\na slot of 10 processes: the whole command, process start included, median of \
         {SCALE_ROUNDS}, the two sizes interleaved (adopt and kill: a fresh untracked tree of 10 \
         each round); CLI max RSS: the largest of any child so far"
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "tasks array (pid_max)", "ps", "stat", "adopt", "kill", "CLI max RSS"
    );
    // Both instances at once, their rounds interleaved: the machine's load drifts during a
    // run, and must weigh on both sizes alike.
    let sizes = [32768u32, 4_194_304];
    let mut insts = vec![];
    for pid_max in sizes {
        let paths = Paths::new(&format!("bench-pm{pid_max}-{}", std::process::id())).unwrap();
        // The array as pid_max would size it. kernel.pid_max itself is left alone: it is the
        // machine's, and every loaded instance's guard refuses a raise above its own array.
        let opts = LoadOptions { tasks_capacity: Some(pid_max), ..Default::default() };
        if let Err(e) = loader::load(&paths, &opts) {
            println!("{pid_max:<22} load failed: {e}");
            continue;
        }
        let t = Tracker::open(paths.clone()).unwrap();
        let child = sleepers(&t, "ten", 10);
        insts.push((pid_max, paths, t, child, [vec![], vec![], vec![], vec![]], 0u64));
    }
    for round in 0..SCALE_ROUNDS {
        for (_, paths, t, _, times, rss) in &mut insts {
            let cli = |args: &[&str]| -> (f64, u64) {
                let t0 = Instant::now();
                let out = Command::new(&bin)
                    .args(["--instance", paths.instance()])
                    .args(args)
                    .stdout(Stdio::null())
                    .output()
                    .unwrap();
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
                (ms, children_maxrss_kib())
            };
            let (ms, r) = cli(&["ps", "ten"]);
            times[0].push(ms);
            *rss = (*rss).max(r);
            times[1].push(cli(&["stat", "ten", "--json"]).0);
            let name = format!("adopt{round}");
            let mut tree = Command::new("bash")
                .args(["-c", "for i in $(seq 9); do sleep 1000 & done; wait"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let pid = tree.id();
            wait_until(Duration::from_secs(30), || {
                fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .is_ok_and(|c| c.split_whitespace().count() >= 9)
            });
            cli(&["create", &name]);
            times[2].push(cli(&["adopt", &name, &pid.to_string()]).0);
            times[3].push(cli(&["kill", &name]).0);
            let _ = tree.wait();
            t.release(&name).unwrap();
        }
    }
    for (pid_max, paths, t, mut child, mut times, rss) in insts {
        assert!(t.kill("ten", &KillOptions::default()).unwrap().is_complete());
        let _ = child.wait();
        println!(
            "{:<22} {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>8} KiB",
            format!("{pid_max}"),
            median(&mut times[0]),
            median(&mut times[1]),
            median(&mut times[2]),
            median(&mut times[3]),
            rss
        );
        drop(t);
        loader::unload(&paths, true).unwrap();
    }
}

/// The largest peak RSS of any child this process has waited for (`getrusage`), KiB.
fn children_maxrss_kib() -> u64 {
    // SAFETY: a zeroed rusage filled by the kernel.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss as u64
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
        map_name::EXIT_CPU,
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
    let (exit_cpu, _) = memlock(paths, map_name::EXIT_CPU);
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
        "per tracked task: {} bytes ({} of its tag, {} of the runtime its exit harvested), fixed, \
         for each of the {pids} possible tids (pid_max), plus {} bytes per process for its memory \
         entry",
        (tasks + exit_cpu) / pids,
        tasks / pids,
        exit_cpu / pids,
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
