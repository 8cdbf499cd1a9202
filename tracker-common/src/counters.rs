//! What the kernel counts for a slot, per CPU (`map_name::COUNTERS`): what it harvested from
//! exited tasks (CPU, I/O, faults, peak RSS), and the slot's counts, which are declared once in
//! `for_each_slot_count!` and reported from there by everything that shows a slot.

/// The slot's counts, declared once: `field, "metric name", "what it counts";`. The kernel
/// programs count each in `SlotCounters::counts`; user space sums them over CPUs and reports
/// each under its field name in `Usage`, `SlotStatus`, the gRPC messages, the CLI and its
/// JSON, and as `tracker_slot_<metric name>` in the metrics, all derived from this list.
///
/// A new count is one line at the end (the reserved words after it shrink by one, so a running
/// tracker's map keeps its layout), the kernel code that counts it, and its field in the
/// `Usage` and `SlotStatus` messages of proto/tracker/v1/tracker.proto (a test checks them).
///
/// Calls macro `$m` with the list.
#[macro_export]
macro_rules! for_each_slot_count {
    ($m:ident) => {
        $m! {
            tasks_started, "tasks_started",
                "Tasks that entered the slot (fork, clone of a thread, adoption)";
            tasks_exited, "tasks_exited", "Tasks of the slot that passed do_exit";
            processes_started, "processes_started",
                "Processes (thread-group leaders) among the tasks that entered the slot";
            processes_exited, "processes_exited",
                "Processes of the slot whose last thread passed do_exit";
            execs, "execs", "Successful execve calls by tasks of the slot";
            exits_by_signal, "exits_by_signal", "Processes whose last thread died of a signal";
            doom_kills, "doom_kills",
                "Tasks killed in the kernel because they ran while the slot was being killed";
            tag_failures, "tag_failures",
                "Children of a tagged task that could not be tagged (should stay 0)";
            net_rx_bytes, "network_receive_bytes", "Bytes the slot's sockets received";
            net_tx_bytes, "network_transmit_bytes", "Bytes the slot's sockets sent";
            net_rx_packets, "network_receive_packets", "Packets the slot's sockets received";
            net_tx_packets, "network_transmit_packets", "Packets the slot's sockets sent";
            tasks_finished, "tasks_finished",
                "Exited tasks whose entry was closed: freed (their CPU harvested) or dropped";
        }
    };
}

/// One count of `SlotCounts`: its field name, metric name and help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountField {
    pub name: &'static str,
    pub metric: &'static str,
    pub help: &'static str,
}

macro_rules! declare_slot_counts {
    ($($name:ident, $metric:literal, $help:literal;)*) => {
        /// The slot's counts (see `for_each_slot_count!`), per CPU in the kernel.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "user", derive(serde::Serialize))]
        pub struct SlotCounts {
            $(#[doc = $help] pub $name: u64,)*
        }

        /// How many counts `SlotCounts` has.
        pub const SLOT_COUNTS: usize = [$(stringify!($name)),*].len();

        impl SlotCounts {
            /// Each count's names and help, in field order.
            pub const FIELDS: [CountField; SLOT_COUNTS] =
                [$(CountField { name: stringify!($name), metric: $metric, help: $help }),*];

            /// The values, in the order of `FIELDS`.
            pub fn values(&self) -> [u64; SLOT_COUNTS] {
                [$(self.$name),*]
            }

            /// Fold another CPU's counts in.
            #[inline(always)]
            pub fn add(&mut self, o: &Self) {
                $(self.$name += o.$name;)*
            }
        }
    };
}

for_each_slot_count!(declare_slot_counts);

/// The words of a `SlotCounters` value, fixed so that a count added later takes a reserved
/// word instead of changing the pinned map's value size.
const SLOT_COUNTERS_WORDS: usize = 32;
/// The harvest fields before `counts`, in words.
const HARVEST_WORDS: usize = 5 + size_of::<IoCounters>() / 8;

/// Per-slot, per-CPU counters. User space folds the CPUs together with `add`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounters {
    /// CPU time of exited tasks, harvested where it is final.
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    /// I/O of exited tasks (`task_io_accounting`), harvested at exit.
    pub io: IoCounters,
    pub min_flt: u64,
    pub maj_flt: u64,
    /// Largest peak RSS (bytes) of an exited process of the slot. A maximum, not a sum.
    pub max_rss_bytes: u64,
    pub counts: SlotCounts,
    pub _reserved: [u64; SLOT_COUNTERS_WORDS - HARVEST_WORDS - SLOT_COUNTS],
}

impl SlotCounters {
    /// Fold another CPU's counters in (`max_rss_bytes` is a maximum, the rest sums).
    pub fn add(&mut self, o: &Self) {
        self.cpu_user_ns += o.cpu_user_ns;
        self.cpu_system_ns += o.cpu_system_ns;
        self.io.add(&o.io);
        self.min_flt += o.min_flt;
        self.maj_flt += o.maj_flt;
        self.max_rss_bytes = self.max_rss_bytes.max(o.max_rss_bytes);
        self.counts.add(&o.counts);
    }
}

/// `struct task_io_accounting`, in the kernel's field order (checked against BTF at load).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub rchar: u64,
    pub wchar: u64,
    pub syscr: u64,
    pub syscw: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub cancelled_write_bytes: u64,
}

impl IoCounters {
    #[inline(always)]
    pub fn add(&mut self, o: &IoCounters) {
        self.rchar += o.rchar;
        self.wchar += o.wchar;
        self.syscr += o.syscr;
        self.syscw += o.syscw;
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
        self.cancelled_write_bytes += o.cancelled_write_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_fold_into_sums_and_a_maximum() {
        let mut a = SlotCounters { cpu_user_ns: 5, max_rss_bytes: 100, ..Default::default() };
        a.counts.execs = 2;
        a.io.rchar = 7;
        let mut b = SlotCounters { cpu_user_ns: 1, max_rss_bytes: 300, ..Default::default() };
        b.counts.execs = 3;
        b.counts.net_tx_packets = 4;
        b.io.rchar = 1;
        a.add(&b);
        assert_eq!((a.cpu_user_ns, a.max_rss_bytes, a.io.rchar), (6, 300, 8));
        assert_eq!((a.counts.execs, a.counts.net_tx_packets), (5, 4));
    }

    #[test]
    fn every_count_has_its_names_and_value() {
        let c = SlotCounts { doom_kills: 9, ..Default::default() };
        let i = SlotCounts::FIELDS.iter().position(|f| f.name == "doom_kills").unwrap();
        assert_eq!(c.values()[i], 9);
        assert_eq!(c.values().iter().sum::<u64>(), 9);
        for f in SlotCounts::FIELDS {
            assert!(!f.metric.is_empty() && !f.help.is_empty(), "{f:?}");
        }
    }
}
