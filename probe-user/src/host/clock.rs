//! The one clock every timestamp in synack is on: CLOCK_MONOTONIC, in
//! nanoseconds. `bpf_ktime_get_ns()` reads the same clock, so kernel and user
//! times of one request share one axis with no conversion.

/// Nanoseconds of CLOCK_MONOTONIC now.
pub(crate) fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec on our stack; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall-clock time (RFC 3339, UTC, ms) of a CLOCK_MONOTONIC stamp, or
/// of now: the wall clock now less the time since the stamp, so a clock
/// step between the stamp and now moves it (synack's stamps are at most a
/// request old when this is called).
pub(crate) fn wall_of(t_ns: Option<u64>) -> Option<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos() as i128;
    let ago = t_ns.map_or(0, |t| mono_ns() as i128 - t as i128).max(0);
    crate::model::units::rfc3339_ms(now - ago)
}

/// Wall-clock time of day, local, with milliseconds.
pub(crate) fn time_of_day() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: zeroed tm is a valid out-parameter; localtime_r is thread-safe.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a time_t and a tm.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_millis()
    )
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
}
