//! CPU time arithmetic shared by the kernel programs (a task's final CPU) and user space (the
//! live tasks' CPU from the usage iterator), so that both split it the same way.

/// Split the precise runtime `sum` between user and system in the proportion of the
/// tick-sampled `utime` and `stime`, as the kernel's `cputime_adjust` does; a task too short
/// to have been sampled counts as user time, as there. (Every division is checked: a panic
/// path would leave a BPF program without an exit, which the verifier rejects.)
#[inline(always)]
pub fn split(sum: u64, utime: u64, stime: u64) -> (u64, u64) {
    if stime == 0 {
        return (sum, 0);
    }
    if utime == 0 {
        return (0, sum);
    }
    // system = sum * stime / total, in 20-bit fixed point so that nothing overflows 64 bits
    // (BPF has no 128-bit arithmetic): the ratio from microseconds, and coarser still beyond
    // 2^44 µs (200 days of one task's CPU), where `st << 20` would overflow.
    let (mut st, mut total) = if utime.saturating_add(stime) >= 1000 {
        (stime / 1000, utime.saturating_add(stime) / 1000)
    } else {
        (stime, utime + stime)
    };
    if total >= 1 << 44 {
        st >>= 20;
        total >>= 20;
    }
    let ratio = (st << 20).checked_div(total).unwrap_or(0).min(1 << 20);
    let system = (sum >> 20) * ratio + (((sum & 0xf_ffff) * ratio) >> 20);
    (sum.saturating_sub(system), system.min(sum))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn runtime_is_split_like_the_kernel_does() {
        assert_eq!(split(1000, 3, 1), (750, 250));
        assert_eq!(split(1000, 0, 0), (1000, 0));
        assert_eq!(split(1000, 5, 0), (1000, 0));
        assert_eq!(split(1000, 0, 5), (0, 1000));
        // No overflow for a year of runtime, nor for ticks beyond 200 days.
        let year = 365 * 24 * 3600 * 1_000_000_000u64;
        let (user, system) = split(year, year, year);
        assert_eq!(user + system, year);
        assert!(system.abs_diff(year / 2) <= year / 1000, "{system}");
    }

    #[test]
    fn the_parts_always_add_up_and_follow_the_ticks() {
        for (sum, u, s) in [
            (1, 1, 1),
            (999_999_937, 7, 3),
            (u64::MAX, 1, 1),
            (12345, 1, 1 << 40),
            (1 << 60, u64::MAX / 4, u64::MAX / 4),
            (1 << 50, 1 << 62, 1 << 50),
        ] {
            let (user, system) = split(sum, u, s);
            assert_eq!(user + system, sum, "{sum} {u} {s}");
            // Within the fixed point's resolution (2^-20 of the runtime, twice) of the exact
            // proportion.
            let exact = (u128::from(sum) * u128::from(s) / (u128::from(u) + u128::from(s))) as u64;
            assert!(
                system.abs_diff(exact) <= (sum >> 19) + 2,
                "{sum} {u} {s}: {system} vs {exact}"
            );
        }
    }
}
