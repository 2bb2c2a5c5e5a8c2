//! The statistics the report and the drift comparison use: percentiles (nearest rank),
//! mean and sample variance, and a confidence interval for the relative change of a
//! mean between two samples (Welch's standard error through the delta method, with a
//! Student t quantile for small samples).

/// The nearest-rank percentile `p` (0–100) of `sorted` (ascending); None when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Mean and sample variance (n − 1); None for fewer than one value.
pub fn mean_var(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Some((mean, var))
}

/// The two-sided 95% quantile of Student's t with `df` degrees of freedom.
pub fn t95(df: f64) -> f64 {
    // Tabulated for 1–30, then the normal quantile's series in 1/df.
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    if !df.is_finite() || df <= 1.0 {
        return T[0];
    }
    if df <= 30.0 {
        return T[df.floor() as usize - 1];
    }
    let z: f64 = 1.959_964;
    z + (z.powi(3) + z) / (4.0 * df)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * df * df)
}

/// The relative change of a mean from sample A to sample B, with its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Change {
    /// Mean of A.
    pub mean_a: f64,
    /// Mean of B.
    pub mean_b: f64,
    /// Samples in A.
    pub n_a: usize,
    /// Samples in B.
    pub n_b: usize,
    /// (B − A) / A.
    pub change: f64,
    /// Lower end of the 95% interval of the change.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

impl Change {
    /// Whether B is worse than A by more than `threshold` (a fraction), and
    /// significantly so: the point estimate past the threshold and the interval above
    /// zero.
    pub fn regressed(&self, threshold: f64) -> bool {
        self.change > threshold && self.low > 0.0
    }
}

/// The change of the mean from `a` to `b`: None unless each has at least two samples
/// and A's mean is positive.
pub fn change(a: &[f64], b: &[f64]) -> Option<Change> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (ma, va) = mean_var(a)?;
    let (mb, vb) = mean_var(b)?;
    if ma <= 0.0 {
        return None;
    }
    let (sa, sb) = (va / a.len() as f64, vb / b.len() as f64);
    // Welch–Satterthwaite degrees of freedom.
    let df = if sa + sb > 0.0 {
        (sa + sb).powi(2) / (sa * sa / (a.len() as f64 - 1.0) + sb * sb / (b.len() as f64 - 1.0))
    } else {
        f64::INFINITY
    };
    // Delta method for the ratio mb / ma.
    let ratio = mb / ma;
    let se = (sb / (ma * ma) + mb * mb * sa / ma.powi(4)).sqrt();
    let half = t95(df) * se;
    Some(Change {
        mean_a: ma,
        mean_b: mb,
        n_a: a.len(),
        n_b: b.len(),
        change: ratio - 1.0,
        low: ratio - 1.0 - half,
        high: ratio - 1.0 + half,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0], 95.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn mean_and_sample_variance() {
        let (m, v) = mean_var(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(m, 5.0);
        assert!((v - 32.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn t_quantiles_meet_the_normal_one() {
        assert_eq!(t95(1.0), 12.706);
        assert_eq!(t95(10.0), 2.228);
        assert!((t95(1000.0) - 1.962).abs() < 0.001);
        assert!(t95(31.0) < t95(30.0) && t95(31.0) > 1.96);
    }

    #[test]
    fn a_known_shift_is_found_and_noise_is_not_a_regression() {
        // A: 10 ± 1 J, B: 12 ± 1 J (alternating), 50 each: +20%, tight interval.
        let a: Vec<f64> = (0..50)
            .map(|i| if i % 2 == 0 { 9.0 } else { 11.0 })
            .collect();
        let b: Vec<f64> = (0..50)
            .map(|i| if i % 2 == 0 { 11.0 } else { 13.0 })
            .collect();
        let c = change(&a, &b).unwrap();
        assert!((c.change - 0.2).abs() < 1e-12, "{c:?}");
        // se of the ratio ≈ sqrt(1.0204/50/100 + 1.44·1.0204/50/100) ≈ 0.0223.
        assert!(
            (c.high - c.low) / 2.0 > 0.04 && (c.high - c.low) / 2.0 < 0.05,
            "{c:?}"
        );
        assert!(c.regressed(0.10));
        assert!(!c.regressed(0.25));
        // The same mean with much noise: not significant.
        let noisy: Vec<f64> = (0..6)
            .map(|i| if i % 2 == 0 { 2.0 } else { 22.0 })
            .collect();
        let c = change(&a, &noisy).unwrap();
        assert!(c.change > 0.1 && c.low < 0.0, "{c:?}");
        assert!(!c.regressed(0.10));
        assert!(change(&a, &[1.0]).is_none(), "one sample is no interval");
    }
}
