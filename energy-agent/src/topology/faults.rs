//! Transient failures of a running loop (a map read, a meter, a sink): each is logged —
//! the first at once, then at most one line per component every [`LOG_EVERY`] with the
//! count since — and counted, and the loop goes on. A daemon left running for months
//! must not die of one bad read.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// Shortest time between two log lines of one component.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One component's failures.
#[derive(Debug)]
struct Component {
    total: u64,
    unlogged: u64,
    last_logged: Option<Instant>,
}

/// Failures per component since start.
#[derive(Debug, Default)]
pub struct Faults {
    components: BTreeMap<&'static str, Component>,
}

impl Faults {
    /// Records one failure of `component` (a short stable name: `probe`, `power`,
    /// `sink`, …) and logs it unless that component logged within [`LOG_EVERY`].
    pub fn record(&mut self, component: &'static str, error: &anyhow::Error) {
        self.record_at(component, error, Instant::now());
    }

    fn record_at(&mut self, component: &'static str, error: &anyhow::Error, now: Instant) {
        let c = self.components.entry(component).or_insert(Component {
            total: 0,
            unlogged: 0,
            last_logged: None,
        });
        c.total += 1;
        let due = c
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        if !due {
            c.unlogged += 1;
            return;
        }
        if c.unlogged > 0 {
            log::warn!(
                "{component}: {error:#} (and {} more since the last report; going on)",
                c.unlogged
            );
        } else {
            log::warn!("{component}: {error:#} (going on)");
        }
        c.unlogged = 0;
        c.last_logged = Some(now);
    }

    /// Failures per component since start.
    pub fn totals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.components.iter().map(|(name, c)| (*name, c.total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_counts_but_logging_is_rate_limited() {
        let mut f = Faults::default();
        let t0 = Instant::now();
        let e = anyhow::anyhow!("map read failed");
        for i in 0..5 {
            f.record_at("probe", &e, t0 + Duration::from_millis(i));
        }
        f.record_at("sink", &e, t0);
        let c = &f.components["probe"];
        assert_eq!((c.total, c.unlogged), (5, 4));
        f.record_at("probe", &e, t0 + LOG_EVERY);
        let c = &f.components["probe"];
        assert_eq!(
            (c.total, c.unlogged),
            (6, 0),
            "logged again, with the 4 in between"
        );
        let totals: Vec<_> = f.totals().collect();
        assert_eq!(totals, vec![("probe", 6), ("sink", 1)]);
    }
}
