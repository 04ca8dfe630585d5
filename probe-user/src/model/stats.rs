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

/// Above this many values a side is resampled m-out-of-n (m = this), its
/// spread scaled back by sqrt(m / n): a day of monitor records (100k a
/// side) would otherwise cost minutes of resampling for the same interval.
pub(crate) const RESAMPLE_MAX: usize = 2000;

/// The median of values in any order (reordered in place); None for none.
fn median_in_place(v: &mut [f64]) -> Option<f64> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    let mid = n / 2;
    let (lower, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let hi = *m;
    if n % 2 == 1 {
        return Some(hi);
    }
    let lo = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(lo + 0.5 * (hi - lo))
}

/// One bootstrap draw of a side's median: m values drawn with replacement,
/// their median's distance from the sample's scaled by sqrt(m / n).
fn draw_median(rng: &mut fastrand::Rng, v: &[f64], med: f64, buf: &mut [f64]) -> Option<f64> {
    for x in buf.iter_mut() {
        *x = v[rng.usize(..v.len())];
    }
    let scale = (buf.len() as f64 / v.len() as f64).sqrt();
    Some(med + (median_in_place(buf)? - med) * scale)
}

/// The median difference B - A and its 95% bootstrap interval; None when a
/// side has fewer than two values (no spread to resample).
pub(crate) fn median_shift(a: &[f64], b: &[f64]) -> Option<Shift> {
    let (a, b) = (sorted(a), sorted(b));
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (ma, mb) = (quantile(&a, 0.5)?, quantile(&b, 0.5)?);
    // A fixed seed: the same files give the same interval every time.
    let mut rng = fastrand::Rng::with_seed(0x5ec0_9d5a);
    let mut draws = Vec::with_capacity(RESAMPLES);
    let mut buf_a = vec![0.0; a.len().min(RESAMPLE_MAX)];
    let mut buf_b = vec![0.0; b.len().min(RESAMPLE_MAX)];
    for _ in 0..RESAMPLES {
        let da = draw_median(&mut rng, &a, ma, &mut buf_a)?;
        let db = draw_median(&mut rng, &b, mb, &mut buf_b)?;
        draws.push(db - da);
    }
    draws.sort_by(f64::total_cmp);
    Some(Shift {
        diff: mb - ma,
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

    #[test]
    fn medians_in_place_match_the_sorted_quantile() {
        for n in 1..40usize {
            let v: Vec<f64> = (0..n).map(|k| ((k * 7919) % 31) as f64).collect();
            let mut w = v.clone();
            assert_eq!(median_in_place(&mut w), quantile(&sorted(&v), 0.5), "n {n}");
        }
        assert_eq!(median_in_place(&mut []), None);
    }

    #[test]
    fn large_sides_are_resampled_m_out_of_n_with_the_same_answer() {
        // 50k values a side, B 0.5 ms slower on a spread of 0..10 ms: the
        // interval still holds the shift, leaves out 0, and is narrower
        // than the one from 2000 values (the spread scales as 1/sqrt(n)).
        let spread = |k: usize| ((k * 7919) % 1000) as f64 / 100.0;
        let a: Vec<f64> = (0..50_000).map(spread).collect();
        let b: Vec<f64> = (0..50_000).map(|k| spread(k + 17) + 0.5).collect();
        let big = median_shift(&a, &b).unwrap();
        assert!(big.real() && big.lo <= 0.5 && big.hi >= 0.5, "{big:?}");
        let small = median_shift(&a[..2000], &b[..2000]).unwrap();
        assert!(
            big.hi - big.lo < (small.hi - small.lo) / 2.0,
            "{big:?} vs {small:?}"
        );
        // The same population on both sides: no difference.
        let c: Vec<f64> = (0..50_000).map(|k| spread(k + 3)).collect();
        assert!(!median_shift(&a, &c).unwrap().real());
    }
}
