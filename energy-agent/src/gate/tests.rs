use super::*;
use crate::report::compare::ModelDrift;

fn figures(requests: usize, g_per_request: f64, j_per_token: Option<f64>, kwh: f64) -> Figures {
    Figures {
        name: "llama".into(),
        energy_j: kwh * J_PER_KWH,
        max_run_kwh: kwh,
        requests,
        g_per_request: (requests > 0).then_some(g_per_request),
        j_per_token,
        ..Default::default()
    }
}

const BUDGET: Budget = Budget {
    max_gco2e_per_1k_requests: Some(2.0),
    max_joules_per_token: Some(0.5),
    max_kwh_per_run: Some(1.0),
};

#[test]
fn within_over_and_no_data_give_0_1_and_2() {
    let ok = check_figures("llama", &BUDGET, Some(&figures(10, 0.0015, Some(0.4), 0.5)));
    assert_eq!(ok.len(), 3);
    assert!(ok.iter().all(|c| c.verdict == Verdict::Within), "{ok:?}");
    assert!(
        (ok[0].actual.unwrap() - 1.5).abs() < 1e-12,
        "grams per 1,000 requests"
    );
    assert_eq!(exit_code(&ok), 0);
    let over = check_figures("llama", &BUDGET, Some(&figures(10, 0.0015, Some(0.6), 0.5)));
    assert_eq!(over[1].verdict, Verdict::Over);
    assert_eq!(exit_code(&over), 1);
    assert!(render(&over).contains("FAIL"));
    let no_tokens = check_figures("llama", &BUDGET, Some(&figures(10, 0.0015, None, 0.5)));
    assert_eq!(no_tokens[1].verdict, Verdict::Unusable);
    assert_eq!(exit_code(&no_tokens), 2, "missing data is never a pass");
    let no_requests = check_figures("llama", &BUDGET, Some(&figures(0, 0.0, None, 0.5)));
    assert!(no_requests[0].note.contains("no enriched requests"));
    assert_eq!(exit_code(&no_requests), 2);
    let absent = check_figures("llama", &BUDGET, None);
    assert!(absent.iter().all(|c| c.verdict == Verdict::Unusable));
    assert_eq!(exit_code(&absent), 2);
    let mut both = over.clone();
    both.extend(absent);
    assert_eq!(exit_code(&both), 1, "over budget wins over missing data");
    assert_eq!(exit_code(&[]), 2, "nothing checked is no pass");
}

#[test]
fn a_measure_report_is_checked_on_its_energy_only() {
    let report = serde_json::json!({"energy_j": {"total": 0.5 * J_PER_KWH}});
    let checks = check_measure("llama", &BUDGET, &report);
    assert_eq!(checks.len(), 3);
    assert_eq!(checks[0].verdict, Verdict::NotApplicable);
    assert_eq!(checks[2].verdict, Verdict::Within);
    assert_eq!(exit_code(&checks), 0);
    let big = serde_json::json!({"energy_j": {"total": 2.0 * J_PER_KWH}});
    assert_eq!(exit_code(&check_measure("llama", &BUDGET, &big)), 1);
    let bad = serde_json::json!({"energy": 1});
    assert_eq!(exit_code(&check_measure("llama", &BUDGET, &bad)), 2);
    let only_requests = Budget {
        max_kwh_per_run: None,
        ..BUDGET
    };
    assert_eq!(
        exit_code(&check_measure("llama", &only_requests, &report)),
        2,
        "no limit that applies: nothing was checked"
    );
}

fn drift(change: Option<Change>, requests: (usize, usize)) -> Comparison {
    Comparison {
        a: "version=1".into(),
        b: "version=2".into(),
        models: vec![ModelDrift {
            model: "llama".into(),
            requests,
            j_per_request: change,
            j_per_token: None,
        }],
    }
}

#[test]
fn a_significant_regression_fails_and_noise_or_no_data_does_not_pass() {
    let c = |change, low, high| Change {
        mean_a: 10.0,
        mean_b: 10.0 * (1.0 + change),
        n_a: 50,
        n_b: 50,
        change,
        low,
        high,
    };
    let worse = check_drift(&drift(Some(c(0.2, 0.15, 0.25)), (50, 50)), 0.1, None);
    assert_eq!(worse.len(), 1, "no token counts: J/request only");
    assert_eq!(worse[0].verdict, Verdict::Over);
    assert_eq!(exit_code(&worse), 1);
    let noisy = check_drift(&drift(Some(c(0.2, -0.05, 0.45)), (50, 50)), 0.1, None);
    assert_eq!(exit_code(&noisy), 0, "not significant");
    let small = check_drift(&drift(Some(c(0.05, 0.01, 0.09)), (50, 50)), 0.1, None);
    assert_eq!(exit_code(&small), 0, "significant but within 10%");
    let few = check_drift(&drift(None, (1, 50)), 0.1, None);
    assert_eq!(exit_code(&few), 2);
    let missing = check_drift(&drift(None, (1, 50)), 0.1, Some("mistral"));
    assert_eq!(missing[0].model, "mistral");
    assert_eq!(exit_code(&missing), 2);
}
