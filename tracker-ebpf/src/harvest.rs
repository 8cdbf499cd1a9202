//! A tagged task's CPU time is harvested in two parts: what it has used when it passes its
//! exit program, and the rest (its last slice: the exit itself, tearing down its memory and
//! files, up to its final context switch) when it is freed. Harvested at the free alone, a
//! task whose free program run the kernel skips would lose all its CPU time: measured on 6.18,
//! a tracepoint's programs miss runs while another program attaches to or detaches from it
//! (8 of 2,400 frees while `bpftrace` came and went on `sched_process_free`). Then only the
//! last slice is lost.
//!
//! What the exit harvested is kept in `EXIT_CPU` under the tid of the task's entry, for
//! whatever closes that entry. Nothing else writes that element while the entry is exited and
//! not closed: another task's exit under the tid needs a tag there first, and a tag closes the
//! entry. So the closer reads it before it closes, and if its close succeeds, the value it read
//! is its task's. An exec by another thread moves the leader's entry to another tid: the value
//! is copied there first. A task that exited under a version that kept no such value is
//! harvested whole: the array starts at 0.
//!
//! An array, not a hash keyed by the entry: its lookup is a bounds check and a load, where a
//! hash insert at the exit and a lookup and delete at the free (helper calls) made a tagged
//! fork+exit cost about 1,000 ns more (measured on 6.18: the exit program 767 ns a call against
//! 187, the free 768 against 291), against 8 bytes per possible tid.
use tracker_common::cpu::split;

use crate::maps::EXIT_CPU;

/// The exit of task `tid`, whose runtime so far is `sum`: recorded before its entry is marked
/// exited (or, for the exit backstop, after it claimed the entry: see `exit.rs`).
#[inline(always)]
pub fn record(tid: u32, sum: u64) {
    if let Some(p) = EXIT_CPU.get_ptr_mut(tid) {
        // SAFETY: an array element, valid for the map's lifetime.
        unsafe { core::ptr::write_volatile(p, sum) };
    }
}

/// What the exit of the task whose exited entry is under `tid` harvested: read before the
/// entry is closed (see the module doc).
#[inline(always)]
pub fn recorded(tid: u32) -> u64 {
    // SAFETY: an array element, valid for the map's lifetime.
    EXIT_CPU.get_ptr(tid).map_or(0, |p| unsafe { core::ptr::read_volatile(p) })
}

/// The (user, system) time not harvested yet of a task whose final runtime is `sum`, of which
/// `utime` and `stime` were sampled, and whose exit harvested `done`: the rest, split in the
/// proportion of the task's whole life, as the kernel's `cputime_adjust` splits it.
#[inline(always)]
pub fn rest(done: u64, (sum, utime, stime): (u64, u64, u64)) -> (u64, u64) {
    split(sum.saturating_sub(done), utime, stime)
}

/// The leader's entry moves from `from` to `to` (an exec by another thread, see
/// `slot::exec_by_thread`): its value goes first, so that a free that closes the moved entry
/// reads it. `to` held the exec'ing thread's live tag, whose value no one reads.
#[inline(always)]
pub fn copy(from: u32, to: u32) {
    record(to, recorded(from));
}
