//! The split of one domain's energy in one interval, exactly as DESIGN.md states it:
//! `E_idle = min(P_idle · Δ, E)`, `E_dyn = E − E_idle`; the dynamic part goes to
//! processes by weight (on-CPU time on the domain's CPUs); the idle part stays in an
//! explicit `idle` bucket, or with `--idle share` is spread by the same weights.
//! Nothing is lost: Σ processes + idle bucket = E, to floating-point rounding.

use std::collections::BTreeMap;

use crate::units::Joules;

/// What happens to idle (static) energy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdlePolicy {
    /// An explicit `idle` row keeps it (default).
    #[default]
    Bucket,
    /// Spread over processes by the same weights (SCI-style allocated energy).
    Share,
}

impl std::str::FromStr for IdlePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bucket" => Ok(Self::Bucket),
            "share" => Ok(Self::Share),
            _ => Err(format!("unknown idle policy {s:?} (bucket or share)")),
        }
    }
}

/// One process's part of a domain's energy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Share {
    /// Dynamic energy.
    pub dynamic_j: Joules,
    /// Allocated idle energy (only with [`IdlePolicy::Share`]).
    pub idle_j: Joules,
}

/// A domain's energy split among processes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    /// Per process (pid) shares.
    pub shares: BTreeMap<u32, Share>,
    /// What no process was given: the idle bucket (and all of the energy of an
    /// interval in which nothing ran).
    pub idle_bucket_j: Joules,
}

impl Split {
    /// Σ shares + bucket: equals the domain's energy.
    pub fn total(&self) -> Joules {
        self.shares
            .values()
            .map(|s| s.dynamic_j + s.idle_j)
            .sum::<Joules>()
            + self.idle_bucket_j
    }
}

/// Splits `energy_j` of one domain: `idle_j` is its static part (clamped to the
/// energy), `weights` the processes' claims (on-CPU ns on the domain's CPUs).
pub fn split(
    energy_j: Joules,
    idle_j: Joules,
    weights: &BTreeMap<u32, u64>,
    policy: IdlePolicy,
) -> Split {
    let energy_j = energy_j.non_negative();
    let idle_j = idle_j.non_negative().min(energy_j);
    let dynamic_j = energy_j - idle_j;
    let total_weight: u64 = weights.values().sum();
    if total_weight == 0 {
        return Split {
            shares: BTreeMap::new(),
            idle_bucket_j: energy_j,
        };
    }
    let spread_idle = policy == IdlePolicy::Share;
    let shares = weights
        .iter()
        .filter(|&(_, &w)| w > 0)
        .map(|(&pid, &w)| {
            let f = w as f64 / total_weight as f64;
            (
                pid,
                Share {
                    dynamic_j: dynamic_j * f,
                    idle_j: if spread_idle {
                        idle_j * f
                    } else {
                        Joules::ZERO
                    },
                },
            )
        })
        .collect();
    Split {
        shares,
        idle_bucket_j: if spread_idle { Joules::ZERO } else { idle_j },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(pairs: &[(u32, u64)]) -> BTreeMap<u32, u64> {
        pairs.iter().copied().collect()
    }

    fn close(a: Joules, b: f64) -> bool {
        (a.get() - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    fn split(e: f64, idle: f64, weights: &BTreeMap<u32, u64>, policy: IdlePolicy) -> Split {
        super::split(Joules(e), Joules(idle), weights, policy)
    }

    #[test]
    fn dynamic_by_weight_idle_in_the_bucket() {
        let s = split(100.0, 40.0, &w(&[(1, 2), (2, 1)]), IdlePolicy::Bucket);
        assert!(close(s.shares[&1].dynamic_j, 40.0));
        assert!(close(s.shares[&2].dynamic_j, 20.0));
        assert_eq!(s.shares[&1].idle_j, Joules(0.0));
        assert_eq!(s.idle_bucket_j, Joules(40.0));
        assert!(close(s.total(), 100.0));
    }

    #[test]
    fn share_policy_spreads_idle_by_the_same_weights() {
        let s = split(100.0, 40.0, &w(&[(1, 3), (2, 1)]), IdlePolicy::Share);
        assert!(close(s.shares[&1].idle_j, 30.0));
        assert!(close(s.shares[&2].idle_j, 10.0));
        assert_eq!(s.idle_bucket_j, Joules(0.0));
        assert!(close(s.total(), 100.0));
    }

    #[test]
    fn nothing_ran_means_everything_is_idle() {
        for policy in [IdlePolicy::Bucket, IdlePolicy::Share] {
            let s = split(12.0, 3.0, &w(&[]), policy);
            assert!(s.shares.is_empty());
            assert_eq!(s.idle_bucket_j, Joules(12.0));
        }
    }

    #[test]
    fn idle_above_the_measured_energy_is_clamped() {
        let s = split(5.0, 9.0, &w(&[(1, 1)]), IdlePolicy::Bucket);
        assert_eq!(s.shares[&1].dynamic_j, Joules(0.0));
        assert_eq!(s.idle_bucket_j, Joules(5.0));
        let s = split(-1.0, 0.0, &w(&[(1, 1)]), IdlePolicy::Bucket);
        assert_eq!(s.total(), Joules(0.0));
    }

    #[test]
    fn conservation_holds_to_rounding_for_awkward_numbers() {
        let weights = w(&[
            (1, 333_333_333),
            (2, 1),
            (3, 7_777_777),
            (4, 999_999_999_999),
        ]);
        for policy in [IdlePolicy::Bucket, IdlePolicy::Share] {
            let s = split(123.456_789, 45.678_901, &weights, policy);
            assert!(close(s.total(), 123.456_789), "{policy:?}: {}", s.total());
        }
    }
}
