//! Units shared by the timeline, the record and the output.

/// Milliseconds between two CLOCK_MONOTONIC nanosecond stamps (b - a), as a float.
pub(crate) fn ms_between(a: u64, b: u64) -> f64 {
    (b as i128 - a as i128) as f64 / 1e6
}

/// A duration in ms for a sentence, with the digits its size deserves
/// (0.25 ms, 40.5 ms, 122 ms).
pub(crate) fn ms_text(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0} ms")
    } else if x.abs() >= 10.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.2} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_between_signs() {
        assert_eq!(ms_between(1_000_000, 3_500_000), 2.5);
        assert_eq!(ms_between(3_000_000, 1_000_000), -2.0);
    }
}
