//! The one clock every timestamp in synack is on: CLOCK_MONOTONIC, in
//! nanoseconds. `bpf_ktime_get_ns()` reads the same clock, so kernel and user
//! times of one request share one axis with no conversion.

/// Nanoseconds of CLOCK_MONOTONIC now.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec on our stack; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds between two CLOCK_MONOTONIC nanosecond stamps (b - a), as a float.
pub fn ms_between(a: u64, b: u64) -> f64 {
    (b as i128 - a as i128) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_matches_std_instant_pace() {
        let a = mono_ns();
        let i = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = mono_ns();
        let el = i.elapsed().as_nanos() as i128;
        assert!(b > a);
        // Both read CLOCK_MONOTONIC: the two intervals agree to well under 1 ms.
        assert!(
            ((b - a) as i128 - el).abs() < 1_000_000,
            "{} vs {}",
            b - a,
            el
        );
    }

    #[test]
    fn ms_between_signs() {
        assert_eq!(ms_between(1_000_000, 3_500_000), 2.5);
        assert_eq!(ms_between(3_000_000, 1_000_000), -2.0);
    }
}
