//! A slot's usage: what its exited tasks were harvested for in the kernel, plus what its live
//! tasks hold now (read in the kernel by the usage iterator), in one read.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::Serialize;
use tracker_common::{
    IoCounters, SlotCounters, SlotCounts, SlotState, USAGE_EXITED, USAGE_LEADER, UsageRecord,
    cpu::split,
};

use super::{instance::Instance, live};
use crate::{
    cgroup::MemorySource,
    error::Result,
    memory_link,
    registry::{self, SlotRecord},
};

/// Everything a slot used, exited and live tasks together, in base units.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    pub slot: String,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    /// The slot's memory now: what its own memory cgroup is charged, or, for a slot without
    /// one, the resident pages of its processes (see README: what is counted).
    pub memory_current_bytes: u64,
    /// High-water mark of `memory_current_bytes`, kept in the kernel at every change.
    pub memory_peak_bytes: u64,
    /// The largest peak RSS of any one process of the slot.
    pub max_process_rss_bytes: u64,
    /// Bytes the slot's tasks made the block layer read and write (`read_bytes`,
    /// `write_bytes` of `/proc/<pid>/io`).
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Bytes passed to read and write system calls, network filesystems included.
    pub rchar_bytes: u64,
    pub wchar_bytes: u64,
    pub read_syscalls: u64,
    pub write_syscalls: u64,
    pub cancelled_write_bytes: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
    /// Tasks (threads included) in the slot now, and the most it had at once.
    pub tasks_live: u64,
    pub tasks_peak: u64,
    pub processes_live: u64,
    /// Forks refused because the slot was at its `tasks-max` (from the slot's pids cgroup).
    pub forks_refused: u64,
    /// Processes of the slot the OOM killer killed (from the slot's memory cgroup).
    pub oom_kills: u64,
    /// What the kernel counted for the slot (tracker-common's `for_each_slot_count!`).
    #[serde(flatten)]
    pub counts: SlotCounts,
}

impl Usage {
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_user_seconds + self.cpu_system_seconds
    }
}

/// What the live tasks of one slot hold now, summed.
#[derive(Clone, Debug, Default)]
struct Live {
    user_ns: u64,
    system_ns: u64,
    io: IoCounters,
    min_flt: u64,
    maj_flt: u64,
    max_rss: u64,
    processes: u64,
    /// Exited tasks seen not yet freed (the CPU time their exit did not harvest is in
    /// `user_ns`/`system_ns`).
    unfreed: u64,
    /// Each live process: (pid, resident bytes now, its peak).
    leaders: Vec<(u32, u64, u64)>,
}

impl Live {
    fn add(&mut self, r: &UsageRecord) {
        let (user, system) = split(r.sum_exec_ns, r.utime_ns, r.stime_ns);
        self.user_ns += user;
        self.system_ns += system;
        // An exited task not yet freed: everything else was harvested at its exit.
        if r.flags & USAGE_EXITED != 0 {
            self.unfreed += 1;
            return;
        }
        self.io.add(&r.io);
        self.min_flt += r.min_flt;
        self.maj_flt += r.maj_flt;
        if r.flags & USAGE_LEADER != 0 {
            self.processes += 1;
            self.max_rss = self.max_rss.max(r.hiwater_rss_bytes);
            self.leaders.push((r.tgid, r.rss_bytes, r.hiwater_rss_bytes));
        }
    }
}

/// (resident bytes, sum of peaks) of the slot's live processes that are not in its memory
/// cgroup (nor below it).
fn outside_memory(rec: &SlotRecord, leaders: &[(u32, u64, u64)]) -> (u64, u64) {
    if leaders.is_empty() {
        return (0, 0);
    }
    let Some(inside) = rec.cgroups.memory_procs() else { return (0, 0) };
    leaders
        .iter()
        .filter(|(pid, _, _)| !inside.contains(pid))
        .fold((0, 0), |(n, p), (_, rss, peak)| (n + rss, p + (*peak).max(*rss)))
}

fn build(rec: &SlotRecord, st: &SlotState, c: &SlotCounters, live: &Live) -> Usage {
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut io = c.io;
    io.add(&live.io);
    let from_cgroup = match memory_link::source(rec) {
        MemorySource::Rss => None,
        _ => rec.cgroups.memory(),
    };
    let (mem_current, mem_peak) = match from_cgroup {
        // What the kernel charges the slot's own memory cgroup, and its high-water mark;
        // plus the processes a root job moved out of it, whose new pages are charged
        // elsewhere: their resident bytes now, and their own peaks (an upper bound of what
        // they added to the slot's).
        Some((now, peak)) => {
            let (out_now, out_peak) = outside_memory(rec, &live.leaders);
            (now + out_now, peak + out_peak)
        }
        None => {
            // From rss_stat. `mem_current` moves with atomic adds of signed deltas; a
            // transient negative reads huge. rss_stat sees a process at its first change of
            // resident pages: an adopted process that sleeps has none, while the usage
            // iterator reads every live process's resident pages now.
            let kept = if (st.mem_current as i64) < 0 { 0 } else { st.mem_current };
            let seen: u64 = live.leaders.iter().map(|(_, rss, _)| rss).sum();
            let now = kept.max(seen);
            (now, st.mem_peak.max(now))
        }
    };
    Usage {
        slot: rec.name.clone(),
        cpu_user_seconds: secs(c.cpu_user_ns + live.user_ns),
        cpu_system_seconds: secs(c.cpu_system_ns + live.system_ns),
        memory_current_bytes: mem_current,
        memory_peak_bytes: mem_peak,
        max_process_rss_bytes: c.max_rss_bytes.max(live.max_rss),
        read_bytes: io.read_bytes,
        write_bytes: io.write_bytes,
        rchar_bytes: io.rchar,
        wchar_bytes: io.wchar,
        read_syscalls: io.syscr,
        write_syscalls: io.syscw,
        cancelled_write_bytes: io.cancelled_write_bytes,
        minor_faults: c.min_flt + live.min_flt,
        major_faults: c.maj_flt + live.maj_flt,
        tasks_live: st.live_tasks,
        tasks_peak: st.peak_tasks,
        processes_live: live.processes,
        forks_refused: rec.cgroups.forks_refused(),
        oom_kills: rec.cgroups.oom_kills(),
        counts: c.counts,
    }
}

/// The usage of slot `name` now.
pub(super) fn of(t: &Instance, name: &str) -> Result<Usage> {
    let rec = t.slot(name)?;
    await_final_cpu(t, rec.id)?;
    let (kernel, live) = settled(t, &[rec.id], rec.id)?;
    let (st, c) = &kernel[0];
    Ok(build(&rec, st, c, &live.get(&rec.id).cloned().unwrap_or_default()))
}

/// The usage of every slot, with one pass over the kernel's tasks.
pub(super) fn all(t: &Instance) -> Result<Vec<Usage>> {
    let reg = registry::read(&t.paths)?;
    let ids: Vec<u32> = reg.slots.iter().map(|r| r.id).collect();
    let (kernel, live) = settled(t, &ids, 0)?;
    Ok(reg
        .slots
        .iter()
        .zip(kernel)
        .map(|(r, (st, c))| build(r, &st, &c, &live.get(&r.id).cloned().unwrap_or_default()))
        .collect())
}

/// What the kernel counts of one slot.
type Kernel = (SlotState, SlotCounters);

/// The kernel's records of slots `ids` and what the usage iterator reads of slot `want` (0:
/// every slot), taken so that no task is counted twice or not at all: the records are read
/// before the iterator runs (a task the iterator reports live has harvested nothing yet), and
/// read again after; while a task of them passed its exit or free program in between, its
/// harvest may be in neither read (it exited after the first read and before the iterator
/// reached it, which then reports only the rest), and the pass is made again. Bounded: a slot
/// whose tasks exit without pause may be read with such a task short, for that read only.
fn settled(t: &Instance, ids: &[u32], want: u32) -> Result<(Vec<Kernel>, BTreeMap<u32, Live>)> {
    const PASSES: usize = 4;
    let closes = |c: &SlotCounters| (c.counts.tasks_exited, c.counts.tasks_finished);
    let mut pass = 0;
    loop {
        let kernel: Vec<Kernel> = {
            let maps = t.maps();
            ids.iter()
                .map(|&id| Ok((maps.state(id)?, maps.counters(id)?)))
                .collect::<Result<_>>()?
        };
        let live = live_usage(t, want)?;
        pass += 1;
        if pass == PASSES {
            return Ok((kernel, live));
        }
        let maps = t.maps();
        let mut still = true;
        for (&id, (_, c)) in ids.iter().zip(&kernel) {
            still &= closes(&maps.counters(id)?) == closes(c);
        }
        if still {
            return Ok((kernel, live));
        }
    }
}

/// An empty slot's usage is final: wait until its exited tasks have been freed, where the rest
/// of their CPU time is added. Until then, a task that passed its exit (no longer live) holds
/// the CPU time of its last moments, which neither the counters nor the iterator show: for a
/// large process, freeing its memory can take a good part of a second. The free comes an RCU
/// grace period after the task's last context switch, for which a dying task on a loaded
/// machine can wait milliseconds. A zombie its parent has not reaped is not freed either, but
/// the iterator shows it (and the rest of its CPU): not waited for. Bounded, so that an exited
/// task neither freed nor seen (a leader released by another thread's exec, for a grace
/// period; one whose free program run the kernel skipped) costs a second, not a hang.
fn await_final_cpu(t: &Instance, slot: u32) -> Result<()> {
    const BOUND: Duration = Duration::from_secs(1);
    if t.maps().state(slot)?.live_tasks != 0 {
        return Ok(());
    }
    let start = Instant::now();
    let mut pause = Duration::from_micros(500);
    loop {
        let pending = t.maps().harvests_pending(slot)?;
        if pending == 0 {
            return Ok(());
        }
        let unfreed = live_usage(t, slot)?.get(&slot).map_or(0, |l| l.unfreed);
        if pending <= unfreed {
            return Ok(());
        }
        if start.elapsed() >= BOUND {
            tracing::debug!("slot {slot}: {pending} exited task(s) not freed after {BOUND:?}");
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Run the usage iterator for slot `slot` (0: every slot); sums per slot id.
fn live_usage(t: &Instance, slot: u32) -> Result<BTreeMap<u32, Live>> {
    let mut out: BTreeMap<u32, Live> = BTreeMap::new();
    for r in live::records(t, slot)? {
        out.entry(r.slot).or_default().add(&r);
    }
    Ok(out)
}
