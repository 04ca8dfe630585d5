//! Units shared by the timeline, the record and the output.

/// Milliseconds between two CLOCK_MONOTONIC nanosecond stamps (b - a), as a float.
pub(crate) fn ms_between(a: u64, b: u64) -> f64 {
    (b as i128 - a as i128) as f64 / 1e6
}

/// A duration in ms for a sentence, with the digits its size deserves
/// (0.25 ms, 40.5 ms, 122 ms).
pub(crate) fn ms_text(x: f64) -> String {
    let t = if x.abs() >= 100.0 {
        format!("{x:.0} ms")
    } else if x.abs() >= 10.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.2} ms")
    };
    unsigned_zero(t)
}

/// A number as text with 2 decimals (tables).
pub(crate) fn fixed2(x: f64) -> String {
    unsigned_zero(format!("{x:.2}"))
}

/// A formatted number that rounded to zero loses its sign: "-0.00" reads
/// as a negative value, or as an error.
fn unsigned_zero(t: String) -> String {
    match t.strip_prefix('-') {
        Some(rest) if !rest.chars().any(|c| c.is_ascii_digit() && c != '0') => rest.to_string(),
        _ => t,
    }
}

/// A wall-clock time (nanoseconds since the Unix epoch) as RFC 3339 in UTC
/// with milliseconds: `2026-12-03T13:45:07.123Z`. None out of range.
pub(crate) fn rfc3339_ms(unix_ns: i128) -> Option<String> {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns - unix_ns.rem_euclid(1_000_000))
            .ok()?;
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).ok()
}

/// An RFC 3339 time (any offset, any fraction) as milliseconds since the
/// Unix epoch; None when it is not one.
pub(crate) fn unix_ms_of_rfc3339(s: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_both_ways() {
        // 2026-12-03T13:45:07.123456789Z
        let ns: i128 = 1_796_305_507_123_456_789;
        let s = rfc3339_ms(ns).unwrap();
        assert_eq!(s, "2026-12-03T13:45:07.123Z");
        assert_eq!(unix_ms_of_rfc3339(&s), Some(1_796_305_507_123.0));
        // Another offset is the same instant.
        assert_eq!(
            unix_ms_of_rfc3339("2026-12-03T14:45:07.123+01:00"),
            Some(1_796_305_507_123.0)
        );
        assert_eq!(unix_ms_of_rfc3339("13:45:07"), None);
        assert_eq!(unix_ms_of_rfc3339(""), None);
    }

    #[test]
    fn ms_between_signs() {
        assert_eq!(ms_between(1_000_000, 3_500_000), 2.5);
        assert_eq!(ms_between(3_000_000, 1_000_000), -2.0);
    }

    #[test]
    fn zero_has_no_sign() {
        assert_eq!(ms_text(-0.001), "0.00 ms");
        assert_eq!(ms_text(-0.01), "-0.01 ms");
        assert_eq!(ms_text(-150.2), "-150 ms");
        assert_eq!(fixed2(-0.004), "0.00");
        assert_eq!(fixed2(-0.006), "-0.01");
        assert_eq!(fixed2(12.0), "12.00");
    }
}
