use super::*;
use crate::attribute::report::idle_summary;

const S: u64 = 1_000_000_000;

/// One 0.5 s interval of a package at `idle` + 15 W per busy CPU.
fn obs(busy: f64, idle: f64) -> Observation {
    Observation {
        energy: Joules((idle + 15.0 * busy) * 0.5),
        duration: Nanos(S / 2),
        busy: Some(busy),
    }
}

/// A load that varies between 0.3 and 1.8 busy CPUs.
fn varied(i: usize) -> f64 {
    0.3 + 1.5 * ((i * 5 % 7) as f64 / 6.0)
}

fn model(configured: &[(&str, f64)]) -> IdleModel {
    IdleModel::new(
        FitConfig::RUN,
        configured
            .iter()
            .map(|(k, w)| (k.to_string(), Watts(*w)))
            .collect(),
        vec![(Domain::Dram(0), Watts(3.0))],
    )
}

fn calibration(idle: f64) -> Calibration {
    Calibration {
        domain: Domain::Package(0),
        idle: Watts(idle),
        uncertainty: Watts(0.2),
        at: "2025-06-01T10:00:00Z".into(),
    }
}

#[test]
fn configured_then_the_estimates_own_figure() {
    let mut m = model(&[("package", 7.0)]);
    let ip = m.idle_power(Domain::Package(0), obs(1.0, 10.0));
    assert_eq!((ip.watts, ip.origin), (Watts(7.0), IdleOrigin::Configured));
    assert!(!ip.uncertain && ip.fit.is_none());
    let ip = m.idle_power(Domain::Dram(0), obs(1.0, 3.0));
    assert_eq!((ip.watts, ip.origin), (Watts(3.0), IdleOrigin::Model));
    assert!(
        !ip.uncertain,
        "the estimate's idle power is known by construction"
    );
}

#[test]
fn before_any_fit_the_lowest_power_or_a_lower_prior_flagged_uncertain() {
    let mut m = model(&[]);
    let ip = m.idle_power(Domain::Package(0), obs(1.0, 10.0));
    assert_eq!((ip.watts, ip.origin), (Watts(25.0), IdleOrigin::Lowest));
    assert!(ip.uncertain);
    assert_eq!(ip.fit, Some(FitStatus::FewSamples));
    m.set_prior(vec![
        (Domain::Package(0), Watts(4.0)),
        (Domain::Psys, Watts(99.0)),
    ]);
    let ip = m.idle_power(Domain::Package(0), obs(1.0, 10.0));
    assert_eq!((ip.watts, ip.origin), (Watts(4.0), IdleOrigin::Model));
    assert!(ip.uncertain);
    // A prior above the lowest power seen is wrong for this host.
    let psys = Observation {
        busy: Some(1.0),
        ..obs(1.0, 10.0)
    };
    let ip = m.idle_power(Domain::Psys, psys);
    assert_eq!(ip.origin, IdleOrigin::Lowest);
}

#[test]
fn a_good_fit_comes_before_the_stored_calibration_and_is_kept_through_steady_load() {
    let mut m = model(&[]);
    m.set_calibrations(vec![calibration(9.0)]);
    let ip = m.idle_power(Domain::Package(0), obs(2.0, 10.0));
    assert_eq!((ip.watts, ip.origin), (Watts(9.0), IdleOrigin::Calibrated));
    assert_eq!(ip.calibrated_at.as_deref(), Some("2025-06-01T10:00:00Z"));
    assert_eq!(ip.uncertainty_w, Some(Watts(0.2)));
    assert!(!ip.uncertain);
    let mut fitted_after = None;
    for i in 0..20 {
        let ip = m.idle_power(Domain::Package(0), obs(varied(i), 10.0));
        if ip.origin == IdleOrigin::Fitted && fitted_after.is_none() {
            fitted_after = Some(i + 1);
            assert!((ip.watts.get() - 10.0).abs() < 0.05, "{ip:?}");
            assert!(ip.uncertainty_w.is_some() && ip.fit == Some(FitStatus::Good));
        }
    }
    let after = fitted_after.expect("the varied load was fitted");
    assert!(after <= 8, "fitted after {after} intervals");
    // Then 100 intervals at one load: the window loses its spread, the fit stays.
    for _ in 0..100 {
        m.idle_power(Domain::Package(0), obs(2.0, 10.0));
    }
    let ip = m.idle_power(Domain::Package(0), obs(2.0, 10.0));
    assert_eq!(ip.origin, IdleOrigin::Fitted);
    assert_eq!(ip.fit, Some(FitStatus::SteadyLoad));
    assert_eq!(m.learned().len(), 1);
    assert_eq!(m.current()[0], ip);
}

#[test]
fn a_consistent_more_precise_calibration_stays_and_a_contradicted_one_goes() {
    for (stored, expect) in [(10.05, IdleOrigin::Calibrated), (12.0, IdleOrigin::Fitted)] {
        let mut m = model(&[]);
        m.set_calibrations(vec![Calibration {
            uncertainty: Watts(0.01),
            ..calibration(stored)
        }]);
        let mut last = None;
        for i in 0..30 {
            // Noise of ±0.3 W, so the fit's band is wider than the calibration's.
            let noise = 0.3 * (((i * 37) % 11) as f64 / 5.0 - 1.0);
            let o = Observation {
                energy: Joules((10.0 + noise + 15.0 * varied(i)) * 0.5),
                ..obs(varied(i), 10.0)
            };
            last = Some(m.idle_power(Domain::Package(0), o));
        }
        let ip = last.unwrap();
        assert_eq!(ip.origin, expect, "stored {stored}: {ip:?}");
        assert_eq!(ip.fit, Some(FitStatus::Good));
    }
}

#[test]
fn a_load_that_never_varies_uses_the_calibration_and_says_why() {
    let mut m = model(&[]);
    m.set_calibrations(vec![calibration(10.0)]);
    let mut last = None;
    for _ in 0..60 {
        last = Some(m.idle_power(Domain::Package(0), obs(1.0, 10.0)));
    }
    let ip = last.take().unwrap();
    assert_eq!(ip.origin, IdleOrigin::Calibrated);
    assert_eq!(ip.fit, Some(FitStatus::SteadyLoad));
    assert!(m.learned().is_empty());
    let mut none = model(&[]);
    for _ in 0..60 {
        last = Some(none.idle_power(Domain::Package(0), obs(1.0, 10.0)));
    }
    let ip = last.unwrap();
    assert_eq!(ip.origin, IdleOrigin::Lowest);
    assert!(ip.uncertain, "a busy power standing in for idle is flagged");
}

#[test]
fn the_summary_is_the_weakest_origin() {
    let a = IdlePower::new(Domain::Package(0), Watts(1.0), IdleOrigin::Fitted);
    let mut b = IdlePower::new(Domain::Dram(0), Watts(1.0), IdleOrigin::Lowest);
    b.uncertain = true;
    assert_eq!(
        idle_summary(std::slice::from_ref(&a)),
        (Some(IdleOrigin::Fitted), false)
    );
    assert_eq!(idle_summary(&[a, b]), (Some(IdleOrigin::Lowest), true));
    assert_eq!(idle_summary(&[]), (None, false));
}

#[test]
fn a_short_interval_reading_nothing_is_not_the_lowest_power() {
    let mut m = model(&[]);
    m.idle_power(Domain::Package(0), obs(1.0, 10.0));
    let blip = Observation {
        energy: Joules(0.0),
        duration: Nanos(S / 200),
        busy: Some(1.0),
    };
    let ip = m.idle_power(Domain::Package(0), blip);
    assert_eq!(
        (ip.watts, ip.origin),
        (Watts(25.0), IdleOrigin::Lowest),
        "{ip:?}"
    );
    // With nothing longer yet, a short one is all there is.
    let mut fresh = model(&[]);
    let ip = fresh.idle_power(Domain::Package(0), blip);
    assert_eq!(ip.watts, Watts(0.0));
    let ip = fresh.idle_power(Domain::Package(0), obs(1.0, 10.0));
    assert_eq!(ip.watts, Watts(25.0), "the first long interval replaces it");
}
