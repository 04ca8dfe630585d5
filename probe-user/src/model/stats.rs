//! Order statistics and the difference of two medians with a bootstrap
//! interval: what `synack compare` and the `--count` summary say about a
//! population of requests. Pure and deterministic (a fixed seed).

/// The q-quantile (0..=1) of sorted values, linear between neighbours
/// (type 7, as R and numpy default to); None for no values.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let h = (n - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// Values sorted, NaN left out.
pub(crate) fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    s
}

/// How two samples' medians differ: B's minus A's, and a 95% percentile
/// bootstrap interval of it (resampling each side with replacement).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Shift {
    pub diff: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Shift {
    /// The interval leaves out zero: a difference, not noise.
    pub(crate) fn real(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }
}

/// Resamples per interval: enough for a stable 2.5% tail.
pub(crate) const RESAMPLES: usize = 2000;

/// The median difference B - A and its 95% bootstrap interval; None when a
/// side has fewer than two values (no spread to resample).
pub(crate) fn median_shift(a: &[f64], b: &[f64]) -> Option<Shift> {
    let (a, b) = (sorted(a), sorted(b));
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let diff = quantile(&b, 0.5)? - quantile(&a, 0.5)?;
    // A fixed seed: the same files give the same interval every time.
    let mut rng = fastrand::Rng::with_seed(0x5ec0_9d5a);
    let mut draws = Vec::with_capacity(RESAMPLES);
    let mut buf_a = vec![0.0; a.len()];
    let mut buf_b = vec![0.0; b.len()];
    for _ in 0..RESAMPLES {
        for x in buf_a.iter_mut() {
            *x = a[rng.usize(..a.len())];
        }
        for x in buf_b.iter_mut() {
            *x = b[rng.usize(..b.len())];
        }
        buf_a.sort_by(f64::total_cmp);
        buf_b.sort_by(f64::total_cmp);
        draws.push(quantile(&buf_b, 0.5)? - quantile(&buf_a, 0.5)?);
    }
    draws.sort_by(f64::total_cmp);
    Some(Shift {
        diff,
        lo: quantile(&draws, 0.025)?,
        hi: quantile(&draws, 0.975)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0], 0.9), Some(3.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.5));
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!((quantile(&ten, 0.9).unwrap() - 9.1).abs() < 1e-9);
        assert_eq!(
            quantile(&sorted(&[5.0, f64::NAN, 1.0, 3.0]), 0.5),
            Some(3.0)
        );
    }

    #[test]
    fn a_shift_is_found_and_noise_is_not() {
        // Two draws of the same jittery population: no difference.
        let jitter = |k: usize| ((k * 7919) % 13) as f64 * 0.1;
        let a: Vec<f64> = (0..40).map(|k| 50.0 + jitter(k)).collect();
        let b: Vec<f64> = (0..40).map(|k| 50.0 + jitter(k + 5)).collect();
        let s = median_shift(&a, &b).unwrap();
        assert!(!s.real(), "{s:?}");
        // The same population 80 ms later: a difference, inside the interval.
        let c: Vec<f64> = a.iter().map(|x| x + 80.0).collect();
        let s = median_shift(&a, &c).unwrap();
        assert!(s.real() && (s.diff - 80.0).abs() < 1e-9, "{s:?}");
        assert!(s.lo <= 80.0 && s.hi >= 80.0, "{s:?}");
        // Deterministic.
        assert_eq!(median_shift(&a, &c), median_shift(&a, &c));
        assert_eq!(median_shift(&[1.0], &c), None);
    }
}
