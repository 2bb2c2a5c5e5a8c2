use super::*;
use crate::carbon::series::Series;

const H: u64 = 3600;

fn at(s: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(s)
}

/// Hourly from 0 h: 400, 300, 100, 50, 150, 500, 500, 500 g/kWh.
fn forecast() -> Forecast {
    let text: String = [400, 300, 100, 50, 150, 500, 500, 500]
        .iter()
        .enumerate()
        .map(|(i, g)| format!("{},{g}\n", i as u64 * H))
        .collect();
    Forecast::from_series(&Series::parse(&text, "hourly.csv").expect("series"))
}

#[test]
fn the_mean_follows_the_steps() {
    let f = forecast();
    assert_eq!(f.step, Duration::from_secs(H));
    assert_eq!(
        mean_over(&f, at(0), Duration::from_secs(2 * H)),
        Some(350.0)
    );
    // Half an hour of 300, then 100 for an hour, then half an hour of 50.
    let g = mean_over(&f, at(H + H / 2), Duration::from_secs(2 * H)).unwrap();
    assert!((g - (150.0 + 100.0 + 25.0) / 2.0).abs() < 1e-9, "{g}");
    assert_eq!(
        mean_over(&f, at(7 * H), Duration::from_secs(H)),
        Some(500.0),
        "the last step"
    );
    assert_eq!(
        mean_over(&f, at(7 * H), Duration::from_secs(2 * H)),
        None,
        "past the end"
    );
}

#[test]
fn the_greenest_two_hours_start_at_2h_and_save_what_is_expected() {
    let f = forecast();
    let p = plan(
        &f,
        at(0),
        Duration::from_secs(2 * H),
        Duration::from_secs(24 * H),
        Some((10.0, 1.0)),
    )
    .expect("plan");
    // 2–4 h: (100 + 50) / 2 = 75 g/kWh, against 350 now.
    assert_eq!(p.start_unix_s, (2 * H) as f64);
    assert_eq!(p.g_per_kwh, 75.0);
    assert_eq!(p.now_g_per_kwh, Some(350.0));
    assert!((p.saving_fraction.unwrap() - 275.0 / 350.0).abs() < 1e-12);
    assert!((p.saving_g.unwrap() - 10.0 * 275.0).abs() < 1e-9);
    assert!(render(&p, Duration::from_secs(2 * H)).contains("1970-01-01T02:00:00Z"));
}

#[test]
fn the_window_bounds_the_search_and_no_cover_is_an_error() {
    let f = forecast();
    // Within 3 h, a 2 h job may start at 0 or 1 h only: 1–3 h = 200 beats 350.
    let p = plan(
        &f,
        at(0),
        Duration::from_secs(2 * H),
        Duration::from_secs(3 * H),
        None,
    )
    .expect("plan");
    assert_eq!(p.start_unix_s, H as f64);
    assert_eq!(p.saving_g, None);
    // Starting between points: now is a candidate too.
    let p = plan(
        &f,
        at(2 * H + 1800),
        Duration::from_secs(H),
        Duration::from_secs(H),
        None,
    )
    .expect("plan");
    assert_eq!(p.wait_s, 0.0);
    assert_eq!(p.g_per_kwh, 75.0);
    let e = plan(
        &f,
        at(100 * H),
        Duration::from_secs(H),
        Duration::from_secs(24 * H),
        None,
    )
    .unwrap_err();
    assert!(e.contains("does not cover"), "{e}");
    assert!(
        plan(
            &f,
            at(0),
            Duration::from_secs(4 * H),
            Duration::from_secs(H),
            None
        )
        .is_err()
    );
}
