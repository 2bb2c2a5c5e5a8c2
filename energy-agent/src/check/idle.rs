//! `check`'s idle-power lines: each meter domain's idle power as a run would start
//! with it, where it comes from and its band, and whether the state dir can be used.

use std::{collections::BTreeMap, path::Path};

use super::{Check, Status};
use crate::{
    attribute::idle::{configured_for, state::Method},
    power::{self, Domain, DomainClass, PowerSources, select::PowerOptions},
    topology::state::IdleStore,
    units::Watts,
};

/// The domains whose energy is attributed (psys only where there is no package).
fn attributable(power: &PowerSources) -> Vec<Domain> {
    let mut domains = power.cpu.domains();
    domains.extend(power.gpu.iter().flat_map(|g| g.domains()));
    let has_package = domains.iter().any(|d| d.class() == DomainClass::Cpu);
    domains.retain(|d| match d.class() {
        DomainClass::Cpu | DomainClass::Dram | DomainClass::Gpu => true,
        DomainClass::Platform => !has_package,
        DomainClass::PartOfPackage => false,
    });
    domains
}

/// Adds the state dir's line and one line per domain.
pub fn check_idle(
    checks: &mut Vec<Check>,
    opts: &PowerOptions,
    state_dir: Option<&Path>,
    configured: &BTreeMap<String, Watts>,
) {
    // A source that cannot be chosen is reported by the power checks.
    let Ok(power) = power::select(opts) else {
        return;
    };
    let store = IdleStore::open_quietly(state_dir, opts, &power);
    checks.push(match (state_dir, store.problem(), store.file()) {
        (None, _, _) => Check::new("state dir", Status::Warn, "off (--no-state)")
            .fix("without it, every run fits idle power from scratch"),
        (_, Some(problem), _) => Check::new("state dir", Status::Warn, problem.to_string())
            .fix("run as root, or --state-dir DIR to a writable directory"),
        (_, None, file) => Check::new(
            "state dir",
            Status::Pass,
            file.map_or(String::new(), |f| f.display().to_string()),
        ),
    });
    let stored = store.stored();
    let model: BTreeMap<Domain, Watts> = power.idle_power().into_iter().collect();
    for domain in attributable(&power) {
        let name = format!("idle power {domain}");
        let check = if let Some(w) = configured_for(configured, domain) {
            Check::new(
                name,
                Status::Pass,
                format!("{:.2} W, configured (--idle-power)", w.get()),
            )
        } else if let Some(w) = model.get(&domain) {
            Check::new(
                name,
                Status::Pass,
                format!("{:.2} W, the estimate's own (model)", w.get()),
            )
        } else if let Some(e) = stored.iter().find(|e| e.domain == domain.to_string()) {
            let how = match e.method {
                Method::Calibrate => "calibrated",
                Method::Fitted => "fitted by a run",
            };
            Check::new(
                name,
                Status::Pass,
                format!(
                    "{:.2} ± {:.2} W, {how} on {} ({} intervals, busy {:.2}–{:.2}, {:.2} W per busy unit); a good fit during a run comes first",
                    e.idle_w,
                    e.uncertainty_w,
                    e.date(),
                    e.samples,
                    e.busy_min,
                    e.busy_max,
                    e.per_busy_w
                ),
            )
        } else {
            Check::new(
                name,
                Status::Warn,
                "none stored: fitted during each run once the load varies; until then the estimate model or the lowest power seen (uncertain)",
            )
            .fix("energy-agent calibrate (as root, on an otherwise quiet host), or --idle-power")
        };
        checks.push(check);
    }
}
