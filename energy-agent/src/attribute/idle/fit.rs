//! A robust straight-line fit of a domain's interval power on how busy it was:
//! `P = P_idle + k · u`, `u` the busy CPUs of the domain (busy CPU-seconds per second on
//! its CPUs) or a GPU's utilisation (0–1). The intercept is the idle power; it is only
//! trusted when the fit says so ([`FitStatus::Good`]).
//!
//! - Weighted least squares. A sample's weight is its age's decay (`0.5^(age /
//!   half_life)`, age in intervals, so drifting idle power is followed) times
//!   `min(1, Δ / full_weight)²` (a short interval's power is noisier: the meter's
//!   resolution and the read's timing weigh more).
//! - Robust: iteratively reweighted with Huber weights on the residuals, scaled by their
//!   median absolute deviation; a sample beyond 6 scales gets no weight (a counter
//!   glitch, another regime after a step of the idle power).
//! - Confidence: the intercept's standard error from the residual spread and the spread
//!   of `u`, `se² = σ² (1/W + ū²/Sxx)`; `uncertainty_w` is twice it (about a 95% band).
//! - No fit where `u` barely varies: an intercept extrapolated from one load level is
//!   a guess, whatever its residuals.

use std::collections::VecDeque;

/// One interval of one domain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// How busy the domain was on average: busy CPUs, or a GPU's utilisation (0–1).
    pub busy: f64,
    /// Its average power, watts.
    pub watts: f64,
    /// The interval's length, seconds.
    pub seconds: f64,
}

/// How samples are weighed and when a fit is good.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitConfig {
    /// A sample's weight halves every this many intervals (`f64::INFINITY`: never).
    pub half_life: f64,
    /// At most this many of the newest samples are kept.
    pub window: usize,
    /// Effective samples (`(Σw)² / Σw²`) needed for any fit.
    pub min_samples: f64,
    /// Spread (weighted standard deviation) of `u` needed, in busy units…
    pub min_spread: f64,
    /// …and relative to the mean `u` (the farther the extrapolation to `u = 0`, the
    /// wider the spread it needs).
    pub min_relative_spread: f64,
    /// Intervals at least this long (seconds) get full weight.
    pub full_weight_s: f64,
    /// A good fit's `uncertainty_w` is at most the largest of this (watts)…
    pub max_uncertainty_w: f64,
    /// …and this fraction of the idle power, or of the mean dynamic power (`k·ū`: the
    /// figure the band is an error of, for the processes).
    pub max_relative_uncertainty: f64,
}

impl FitConfig {
    /// While running: weights halve every 16 intervals, and a step of the idle power
    /// is followed within [`FitConfig::FOLLOW_INTERVALS`].
    pub const RUN: Self = Self {
        half_life: 16.0,
        window: 64,
        min_samples: 5.0,
        min_spread: 0.1,
        min_relative_spread: 0.05,
        full_weight_s: 0.2,
        max_uncertainty_w: 1.0,
        max_relative_uncertainty: 0.1,
    };

    /// `calibrate`: every sample of the run counts the same.
    pub const CALIBRATE: Self = Self {
        half_life: f64::INFINITY,
        window: 8192,
        ..Self::RUN
    };

    /// With [`FitConfig::RUN`], a step of the idle power is followed (the fit within
    /// its uncertainty of the new value) within this many intervals of varied load
    /// (tested in `fit::tests` and `tests/tests/idle.rs`): a few intervals to see it
    /// ([`Window::drop_before_shift`]), then a new fit from the samples after it, good
    /// once its band is (about 8 intervals of varied load at 250 ms on the test tree).
    pub const FOLLOW_INTERVALS: usize = 24;
}

impl Default for FitConfig {
    fn default() -> Self {
        Self::RUN
    }
}

/// What the fit found.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Fit {
    /// The intercept: power at `u = 0`, watts (never negative).
    pub idle_w: f64,
    /// The slope: watts per busy unit (per busy CPU, or per 100% of a GPU).
    pub per_busy_w: f64,
    /// Twice the intercept's standard error, watts.
    pub uncertainty_w: f64,
    /// Samples in the window.
    pub samples: usize,
    /// Effective samples after weighting.
    pub effective_samples: f64,
    /// Least and most busy sample that counted.
    pub busy_min: f64,
    /// Most busy sample that counted.
    pub busy_max: f64,
    /// Weighted standard deviation of `u`.
    pub spread: f64,
    /// Robust standard deviation of the residuals, watts.
    pub residual_w: f64,
}

/// Whether a fit can be used, and if not why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitStatus {
    /// Good: its intercept is the idle power.
    Good,
    /// Not enough intervals yet.
    FewSamples,
    /// The load did not vary enough to separate idle from dynamic power.
    SteadyLoad,
    /// The samples do not follow a line well enough (or power falls with load).
    Poor,
}

impl FitStatus {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::FewSamples => "few_samples",
            Self::SteadyLoad => "steady_load",
            Self::Poor => "poor",
        }
    }
}

/// The newest samples of one domain, and their fit.
#[derive(Clone, Debug)]
pub struct Window {
    config: FitConfig,
    samples: VecDeque<Sample>,
}

impl Window {
    /// An empty window.
    pub fn new(config: FitConfig) -> Self {
        Self {
            config,
            samples: VecDeque::new(),
        }
    }

    /// Adds the newest sample (ignored unless finite, with a positive length).
    pub fn push(&mut self, s: Sample) {
        if !(s.busy.is_finite() && s.watts.is_finite() && s.seconds > 0.0) {
            return;
        }
        self.samples.push_back(s);
        while self.samples.len() > self.config.window.max(1) {
            self.samples.pop_front();
        }
    }

    /// The fit of the window, and whether it is good (a fit is given whenever one
    /// could be computed, good or not).
    pub fn fit(&self) -> (FitStatus, Option<Fit>) {
        fit(&self.samples, &self.config)
    }

    /// Whether the newest samples left the line of `good` (the idle power stepped):
    /// the mean residual of the newest [`SHIFT_SAMPLES`] beyond 4 residual scales /
    /// √n, and each of the newest 3 beyond 2 scales on the same side. Then only the
    /// samples after the step are kept, so the fit restarts from them instead of
    /// waiting for the old ones to decay; returns whether it did.
    pub fn drop_before_shift(&mut self, good: &Fit) -> bool {
        let n = self.samples.len();
        if n < SHIFT_SAMPLES {
            return false;
        }
        let scale = good.residual_w.max(1e-9);
        let resid: Vec<f64> = (self.samples.iter().skip(n - SHIFT_SAMPLES))
            .filter(|s| s.seconds >= self.config.full_weight_s / 2.0)
            .map(|s| s.watts - good.idle_w - good.per_busy_w * s.busy)
            .collect();
        if resid.len() < SHIFT_SAMPLES / 2 {
            return false;
        }
        let mean = resid.iter().sum::<f64>() / resid.len() as f64;
        let newest = &resid[resid.len() - 3..];
        let shifted = mean.abs() > 4.0 * scale / (resid.len() as f64).sqrt()
            && newest
                .iter()
                .all(|r| r.abs() > 2.0 * scale && r.signum() == mean.signum());
        if !shifted {
            return false;
        }
        // The step is where the residuals turned: keep from the first of the newest
        // run of residuals beyond 2 scales on the shifted side.
        let run = resid
            .iter()
            .rev()
            .take_while(|r| r.abs() > 2.0 * scale && r.signum() == mean.signum())
            .count();
        let keep = run.max(3);
        while self.samples.len() > keep {
            self.samples.pop_front();
        }
        true
    }
}

/// How many of the newest samples are looked at for a step of the idle power.
pub const SHIFT_SAMPLES: usize = 8;

/// Weights before reweighting: decay by age (the last sample is newest) × length.
fn base_weights(samples: &VecDeque<Sample>, c: &FitConfig) -> Vec<f64> {
    let n = samples.len();
    samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let age = (n - 1 - i) as f64;
            let decay = if c.half_life.is_finite() {
                0.5f64.powf(age / c.half_life)
            } else {
                1.0
            };
            let length = (s.seconds / c.full_weight_s).min(1.0);
            decay * length * length
        })
        .collect()
}

/// A weighted line fit: (intercept, slope, Σw, weighted mean u, Sxx).
fn wls(samples: &VecDeque<Sample>, w: &[f64]) -> Option<(f64, f64, f64, f64, f64)> {
    let sw: f64 = w.iter().sum();
    if sw <= 0.0 {
        return None;
    }
    let mu = samples.iter().zip(w).map(|(s, w)| w * s.busy).sum::<f64>() / sw;
    let mp = samples.iter().zip(w).map(|(s, w)| w * s.watts).sum::<f64>() / sw;
    let sxx: f64 = samples
        .iter()
        .zip(w)
        .map(|(s, w)| w * (s.busy - mu).powi(2))
        .sum();
    let sxy: f64 = samples
        .iter()
        .zip(w)
        .map(|(s, w)| w * (s.busy - mu) * (s.watts - mp))
        .sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    Some((mp - slope * mu, slope, sw, mu, sxx))
}

/// The weighted median of `values`.
fn weighted_median(values: &[f64], w: &[f64]) -> f64 {
    let mut pairs: Vec<(f64, f64)> = values.iter().copied().zip(w.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let half = pairs.iter().map(|p| p.1).sum::<f64>() / 2.0;
    let mut acc = 0.0;
    for (v, w) in &pairs {
        acc += w;
        if acc >= half {
            return *v;
        }
    }
    pairs.last().map_or(0.0, |p| p.0)
}

/// Huber's tuning constant, in residual scales.
const HUBER: f64 = 1.345;
/// Residuals beyond this many scales get no weight.
const REJECT: f64 = 6.0;

/// Fits `samples` (oldest first) under `c`.
pub fn fit(samples: &VecDeque<Sample>, c: &FitConfig) -> (FitStatus, Option<Fit>) {
    let base = base_weights(samples, c);
    let (sw, sw2) = (
        base.iter().sum::<f64>(),
        base.iter().map(|w| w * w).sum::<f64>(),
    );
    let n_eff = if sw2 > 0.0 { sw * sw / sw2 } else { 0.0 };
    if n_eff < c.min_samples || n_eff <= 2.0 {
        return (FitStatus::FewSamples, None);
    }
    let Some(mut line) = wls(samples, &base) else {
        return (FitStatus::SteadyLoad, None);
    };
    let mean_w = samples
        .iter()
        .zip(&base)
        .map(|(s, w)| w * s.watts)
        .sum::<f64>()
        / sw;
    // A floor for the residual scale: a model that fits exactly (a test's meter)
    // must not make every sample an outlier of a zero scale.
    let floor = (0.002 * mean_w.abs()).max(0.01);
    let mut w = base.clone();
    let mut scale = floor;
    for _ in 0..20 {
        let (a, b) = (line.0, line.1);
        let resid: Vec<f64> = samples.iter().map(|s| s.watts - a - b * s.busy).collect();
        let abs: Vec<f64> = resid.iter().map(|r| r.abs()).collect();
        scale = (1.4826 * weighted_median(&abs, &base)).max(floor);
        w = base
            .iter()
            .zip(&abs)
            .map(|(w0, r)| {
                let z = r / scale;
                let h = if z <= HUBER {
                    1.0
                } else if z <= REJECT {
                    HUBER / z
                } else {
                    0.0
                };
                w0 * h
            })
            .collect();
        let Some(next) = wls(samples, &w) else {
            return (FitStatus::SteadyLoad, None);
        };
        let done = (next.0 - a).abs() < 1e-9 * (1.0 + a.abs());
        line = next;
        if done {
            break;
        }
    }
    summarise(samples, &w, line, scale, n_eff, c)
}

/// The fit's figures and whether it is good.
fn summarise(
    samples: &VecDeque<Sample>,
    w: &[f64],
    (a, b, sw, mu, sxx): (f64, f64, f64, f64, f64),
    scale: f64,
    n_eff: f64,
    c: &FitConfig,
) -> (FitStatus, Option<Fit>) {
    let counted: Vec<&Sample> = samples
        .iter()
        .zip(w)
        .filter(|(_, w)| **w > 0.0)
        .map(|(s, _)| s)
        .collect();
    let ss: f64 = samples
        .iter()
        .zip(w)
        .map(|(s, w)| w * (s.watts - a - b * s.busy).powi(2))
        .sum();
    let sigma2 = ss / sw * n_eff / (n_eff - 2.0);
    let se_a = (sigma2 * (1.0 / sw + mu * mu / sxx)).sqrt();
    let se_b = (sigma2 / sxx).sqrt();
    let spread = (sxx / sw).sqrt();
    let lowest = counted
        .iter()
        .map(|s| s.watts)
        .fold(f64::INFINITY, f64::min);
    let fit = Fit {
        idle_w: a.max(0.0),
        per_busy_w: b,
        uncertainty_w: 2.0 * se_a,
        samples: samples.len(),
        effective_samples: n_eff,
        busy_min: counted.iter().map(|s| s.busy).fold(f64::INFINITY, f64::min),
        busy_max: counted.iter().map(|s| s.busy).fold(0.0, f64::max),
        spread,
        residual_w: scale,
    };
    let dynamic = (b * mu).abs();
    let allowed = c
        .max_uncertainty_w
        .max(c.max_relative_uncertainty * a.abs().max(dynamic));
    let status = if spread < c.min_spread.max(c.min_relative_spread * mu) {
        FitStatus::SteadyLoad
    } else if b < -2.0 * se_b
        || a < -fit.uncertainty_w.max(scale)
        || a > lowest + fit.uncertainty_w + 2.0 * scale
        || fit.uncertainty_w > allowed
    {
        FitStatus::Poor
    } else {
        FitStatus::Good
    };
    (status, Some(fit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic load pattern: levels 0.2–1.9 busy CPUs, revisited in an order
    /// that is not periodic in a few samples.
    fn busy(i: usize) -> f64 {
        0.2 + 1.7 * (((i * 7 + 3) % 11) as f64 / 10.0)
    }

    /// Small deterministic noise in ±`amp` W.
    fn noise(i: usize, amp: f64) -> f64 {
        amp * ((((i * 2654435761) % 1000) as f64 / 500.0) - 1.0)
    }

    fn window(config: FitConfig, n: usize, idle: impl Fn(usize) -> f64) -> Window {
        let mut w = Window::new(config);
        for i in 0..n {
            let u = busy(i);
            w.push(Sample {
                busy: u,
                watts: idle(i) + 15.0 * u + noise(i, 0.3),
                seconds: 0.25,
            });
        }
        w
    }

    #[test]
    fn recovers_the_intercept_and_slope_of_a_noisy_line() {
        let (status, fit) = window(FitConfig::RUN, 40, |_| 10.0).fit();
        let fit = fit.expect("a fit");
        assert_eq!(status, FitStatus::Good, "{fit:?}");
        assert!((fit.idle_w - 10.0).abs() < 0.3, "{fit:?}");
        assert!((fit.per_busy_w - 15.0).abs() < 0.3, "{fit:?}");
        assert!(
            fit.uncertainty_w > 0.0 && fit.uncertainty_w < 1.0,
            "{fit:?}"
        );
        assert!(
            (fit.idle_w - 10.0).abs() <= fit.uncertainty_w,
            "the band covers the truth: {fit:?}"
        );
    }

    #[test]
    fn too_few_samples_and_a_steady_load_give_no_good_fit() {
        let (status, _) = window(FitConfig::RUN, 3, |_| 10.0).fit();
        assert_eq!(status, FitStatus::FewSamples);
        let mut w = Window::new(FitConfig::RUN);
        for i in 0..50 {
            let u = 1.0 + 0.01 * noise(i, 1.0);
            w.push(Sample {
                busy: u,
                watts: 10.0 + 15.0 * u + noise(i + 7, 0.3),
                seconds: 0.25,
            });
        }
        assert_eq!(w.fit().0, FitStatus::SteadyLoad, "{:?}", w.fit());
    }

    #[test]
    fn outliers_do_not_move_the_intercept() {
        let mut w = window(FitConfig::RUN, 40, |_| 10.0);
        // Three glitches: a counter that jumped, one that stalled, a 1 ms interval.
        for (i, s) in [(1.0, 400.0, 0.25), (1.5, 0.0, 0.25), (0.2, 900.0, 0.001)]
            .into_iter()
            .enumerate()
        {
            w.push(Sample {
                busy: s.0,
                watts: s.1,
                seconds: s.2,
            });
            w.push(Sample {
                busy: busy(i + 50),
                watts: 10.0 + 15.0 * busy(i + 50),
                seconds: 0.25,
            });
        }
        let (status, fit) = w.fit();
        let fit = fit.expect("a fit");
        assert_eq!(status, FitStatus::Good, "{fit:?}");
        assert!((fit.idle_w - 10.0).abs() < 0.3, "{fit:?}");
    }

    #[test]
    fn power_that_falls_with_load_is_a_poor_fit() {
        let mut w = Window::new(FitConfig::RUN);
        for i in 0..30 {
            let u = busy(i);
            w.push(Sample {
                busy: u,
                watts: 40.0 - 10.0 * u + noise(i, 0.2),
                seconds: 0.25,
            });
        }
        assert_eq!(w.fit().0, FitStatus::Poor);
    }

    #[test]
    fn a_step_of_the_idle_power_is_followed_within_the_stated_intervals() {
        let step_at = 60;
        // No false alarm on the way.
        let mut before = window(FitConfig::RUN, 20, |_| 10.0);
        for i in 20..step_at {
            let good = before.fit().1.expect("a fit");
            before.push(Sample {
                busy: busy(i),
                watts: 10.0 + 15.0 * busy(i) + noise(i, 0.3),
                seconds: 0.25,
            });
            assert!(!before.drop_before_shift(&good), "a false step at {i}");
        }
        let idle = |i: usize| if i < step_at { 10.0 } else { 14.0 };
        let mut w = window(FitConfig::RUN, step_at, idle);
        let mut good = w.fit().1.expect("a fit before the step");
        let mut followed = None;
        for i in step_at..step_at + 100 {
            let u = busy(i);
            w.push(Sample {
                busy: u,
                watts: idle(i) + 15.0 * u + noise(i, 0.3),
                seconds: 0.25,
            });
            w.drop_before_shift(&good);
            let (status, fit) = w.fit();
            if status == FitStatus::Good {
                good = fit.expect("a good fit");
            }
            let near = fit.is_some_and(|f| (f.idle_w - 14.0).abs() < 0.5);
            match (followed, status == FitStatus::Good && near) {
                (None, true) => followed = Some(i + 1 - step_at),
                (Some(_), false) if status == FitStatus::Good => {
                    panic!("the fit left the new idle power again at {i}: {fit:?}")
                }
                _ => {}
            }
        }
        let after = followed.expect("the fit followed the step");
        eprintln!("followed a 10 → 14 W step after {after} intervals");
        assert!(after <= FitConfig::FOLLOW_INTERVALS, "{after} intervals");
    }

    #[test]
    fn calibration_weighs_every_sample_alike() {
        let (status, fit) = window(FitConfig::CALIBRATE, 200, |_| 10.0).fit();
        let fit = fit.expect("a fit");
        assert_eq!(status, FitStatus::Good);
        assert!((fit.effective_samples - 200.0).abs() < 1e-6, "{fit:?}");
        assert!(fit.uncertainty_w < 0.2, "{fit:?}");
    }
}
