//! The decision for one object on one tier: which policies match it, and which of them decide.
//! One function for the manager (what to queue), `plan` (what would be queued) and `explain`
//! (why), so the three never disagree.
//!
//! # Precedence
//! For an object stored on tier `T`, every policy is considered in file order:
//! 1. a disabled policy (`enabled = false`) is shown as disabled and does nothing;
//! 2. a policy acts on `T` when its `from` is `T` (an `expire` with `from = "*"` acts on
//!    every tier);
//! 3. it *matches* when a bucket glob, every object condition (an `idle` among them: unread
//!    for that long), and the age (`after`) hold;
//! 4. among the matching policies, an `expire` wins over everything else (the first one in the
//!    file decides; the others are overruled): the object goes from `T`, so nothing is
//!    transferred from there;
//! 5. otherwise each destination tier gets one decision: a `move` wins over a `copy` to the
//!    same tier (the normal backup-and-tier pattern — `copy` after 1 h, `move` after 30 d —
//!    uploads once, then evicts); among equals the first in the file decides. Transfers to
//!    different destinations are independent (a `copy` to one tier and a `move` to another both
//!    decide).

use std::time::Duration;

use crate::condition::{Miss, Object};
use crate::policy::{Action, Policy};

/// What one policy makes of one object on one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It matches and decides: its action is due now.
    Decides,
    /// It matches, but another policy decides (named, by its position in the file).
    Overruled(usize),
    /// Bucket and conditions hold, but the object is younger than `after` by this much.
    NotYet(Duration),
    /// A condition does not hold.
    Miss(Miss),
    /// The policy acts on another tier.
    OtherTier,
    /// `enabled = false`.
    Disabled,
}

impl Outcome {
    /// Whether the policy decides (its action is due).
    pub fn decides(&self) -> bool {
        *self == Outcome::Decides
    }
}

/// Every policy's [`Outcome`] for `object` stored on `tier`, in file order (see the module docs
/// for the precedence). `out` is cleared and filled (a buffer the caller reuses: the manager
/// evaluates every object every pass). For many objects of one bucket, [`BucketEvaluator`] does
/// the same with the per-bucket work done once.
pub fn evaluate_into(policies: &[Policy], tier: &str, object: &Object<'_>, out: &mut Vec<Outcome>) {
    BucketEvaluator::new(policies, tier, object.bucket).evaluate_into(object, out);
}

/// [`evaluate_into`] for the objects of one bucket on one tier: what depends only on the
/// policy, the tier and the bucket (enabled, the tier, the bucket globs) is decided once, so
/// an object costs only its own conditions and age (a pass evaluates every object of a
/// million-object bucket).
#[derive(Debug, Clone)]
pub struct BucketEvaluator<'a> {
    policies: &'a [Policy],
    bucket: String,
    /// Per policy: its outcome whatever the object, or `None` when the object decides.
    fixed: Vec<Option<Outcome>>,
}

impl<'a> BucketEvaluator<'a> {
    /// The evaluator of `bucket`'s objects stored on `tier`.
    pub fn new(policies: &'a [Policy], tier: &str, bucket: &str) -> Self {
        let fixed = policies
            .iter()
            .map(|policy| {
                if !policy.enabled {
                    Some(Outcome::Disabled)
                } else if !policy.acts_on(tier) {
                    Some(Outcome::OtherTier)
                } else if !policy.matches_bucket(bucket) {
                    Some(Outcome::Miss(Miss::Bucket))
                } else {
                    None
                }
            })
            .collect();
        BucketEvaluator {
            policies,
            bucket: bucket.to_owned(),
            fixed,
        }
    }

    /// Every policy's [`Outcome`] for `object` (of this evaluator's bucket and tier) into `out`.
    pub fn evaluate_into(&self, object: &Object<'_>, out: &mut Vec<Outcome>) {
        debug_assert_eq!(object.bucket, self.bucket);
        let policies = self.policies;
        out.clear();
        for (policy, fixed) in policies.iter().zip(&self.fixed) {
            let outcome = if let Some(fixed) = fixed {
                fixed.clone()
            } else if let Err(miss) = policy.conditions.check(object) {
                Outcome::Miss(miss)
            } else if object.age < policy.after {
                Outcome::NotYet(policy.after - object.age)
            } else {
                Outcome::Decides
            };
            out.push(outcome);
        }
        // An expire wins over everything else.
        let expire =
            (0..policies.len()).find(|&i| out[i].decides() && policies[i].action == Action::Expire);
        if let Some(winner) = expire {
            for (i, outcome) in out.iter_mut().enumerate() {
                if i != winner && outcome.decides() {
                    *outcome = Outcome::Overruled(winner);
                }
            }
            return;
        }
        // One decision per destination: a move over a copy, then the first in the file.
        for i in 0..policies.len() {
            if !out[i].decides() {
                continue;
            }
            let winner = (0..policies.len())
                .filter(|&j| out[j].decides() && policies[j].to == policies[i].to)
                .min_by_key(|&j| (policies[j].action != Action::Move, j))
                .unwrap_or(i);
            if winner != i {
                out[i] = Outcome::Overruled(winner);
            }
        }
    }
}

/// One line for people on why `policies[index]` has `outcome` for an object of age `age`:
/// what `plan` and `explain` print.
pub fn describe(policies: &[Policy], index: usize, outcome: &Outcome, age: Duration) -> String {
    let policy = &policies[index];
    let whole_secs = |d: Duration| format_duration(d);
    let conditions = if policy.conditions.is_empty() {
        String::new()
    } else {
        format!("; {}", policy.conditions)
    };
    match outcome {
        Outcome::Decides => format!(
            "age {} >= after {}{conditions}",
            whole_secs(age),
            whole_secs(policy.after)
        ),
        Outcome::Overruled(by) => {
            let winner = &policies[*by];
            let why = if winner.action == Action::Expire {
                "an expire wins"
            } else if winner.action != policy.action {
                "a move wins over a copy to the same tier"
            } else {
                "the first in the file wins"
            };
            format!("matches, but {:?} decides ({why})", winner.name)
        }
        Outcome::NotYet(left) => format!(
            "age {} < after {}: due in {}",
            whole_secs(age),
            whole_secs(policy.after),
            whole_secs(*left)
        ),
        Outcome::Miss(miss) => format!("no match: {miss}"),
        Outcome::OtherTier => format!("acts on tier {:?}", policy.from),
        Outcome::Disabled => "disabled (enabled = false)".to_owned(),
    }
}

/// A duration in whole seconds as the configuration writes them: `31d 2h 5m 3s`, `0s`
/// (days, hours, minutes, seconds; zero parts left out; never months).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

impl Outcome {
    /// A short name: `decides`, `overruled`, `not-yet`, `no-match`, `other-tier`, `disabled`
    /// (the `outcome` of `explain --json`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Decides => "decides",
            Outcome::Overruled(_) => "overruled",
            Outcome::NotYet(_) => "not-yet",
            Outcome::Miss(_) => "no-match",
            Outcome::OtherTier => "other-tier",
            Outcome::Disabled => "disabled",
        }
    }
}

/// [`evaluate_into`] into a new vector.
pub fn evaluate(policies: &[Policy], tier: &str, object: &Object<'_>) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(policies.len());
    evaluate_into(policies, tier, object, &mut out);
    out
}

/// Whether any enabled `copy` or `move` from `tier` to a destination other than `to` covers
/// `bucket`: the cheap per-bucket question before [`transfers_elsewhere`] per object.
pub fn any_transfer_elsewhere(policies: &[Policy], tier: &str, bucket: &str, to: &str) -> bool {
    policies
        .iter()
        .any(|p| is_transfer_elsewhere(p, tier, bucket, to))
}

fn is_transfer_elsewhere(policy: &Policy, tier: &str, bucket: &str, to: &str) -> bool {
    policy.enabled
        && policy.action != Action::Expire
        && policy.to != to
        && policy.applies_to(tier, bucket)
}

/// The transfers a `move` from `tier` to `to` waits for before it evicts its source: every
/// `copy` or `move` from `tier` to another destination that applies to `object`, one per
/// destination (as [`evaluate_into`] decides them). Transfers to different destinations decide
/// independently (see the module docs), so they are queued side by side; evicting before their
/// copies are verified would leave them nothing to read, and the object with fewer copies than
/// the policies declare. "Applies" is bucket and conditions, not age (a transfer not due yet
/// still gets its copy), and an `idle` condition counts the object as never read, so that the
/// manager and the upload role, which do not see the same reads, agree and none is missed.
/// `expire` policies are left out: they copy nothing.
pub fn transfers_elsewhere<'p>(
    policies: &'p [Policy],
    tier: &str,
    object: &Object<'_>,
    to: &str,
) -> Vec<&'p Policy> {
    let transfers: Vec<&Policy> = policies
        .iter()
        .filter(|p| is_transfer_elsewhere(p, tier, object.bucket, to))
        .collect();
    if transfers.is_empty() {
        return transfers;
    }
    let owned: Vec<Policy> = transfers.iter().map(|p| (*p).clone()).collect();
    let unaged = Object {
        age: Duration::MAX,
        last_read: None,
        ..*object
    };
    let outcomes = evaluate(&owned, tier, &unaged);
    transfers
        .into_iter()
        .zip(outcomes)
        .filter(|(_, outcome)| outcome.decides())
        .map(|(policy, _)| policy)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn transfer(name: &str, to: &str, action: Action, after: u64) -> Policy {
        Policy::new(
            name,
            vec!["*".into()],
            "hub",
            to,
            action,
            Duration::from_secs(after),
        )
        .unwrap()
    }

    fn at_age(secs: u64) -> Object<'static> {
        Object {
            bucket: "b",
            name: "o",
            size: 1,
            age: Duration::from_secs(secs),
            metadata: None,
            headers: None,
            last_read: None,
        }
    }

    #[test]
    fn a_move_waits_for_the_transfers_to_other_tiers_that_apply_due_or_not() {
        let mut cold_only = transfer("cold-backup", "cold", Action::Copy, 0);
        cold_only.conditions.min_size = Some(1_000);
        let mut disabled = transfer("off", "elsewhere", Action::Copy, 0);
        disabled.enabled = false;
        let policies = [
            transfer("backup", "backup", Action::Copy, 30 * 86_400), // not due for a month
            transfer("backup-move", "backup", Action::Move, 0),      // same destination: one
            transfer("tier", "s3", Action::Move, 0),                 // the move asking
            transfer("tier-copy", "s3", Action::Copy, 0),            // its own destination
            cold_only,                                               // a condition that misses
            disabled,
            transfer("gone", "*", Action::Expire, 0),
        ];
        let names = |found: Vec<&Policy>| found.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(transfers_elsewhere(&policies, "hub", &at_age(0), "s3")),
            ["backup-move"]
        );
        assert!(any_transfer_elsewhere(&policies, "hub", "b", "s3"));
        assert!(!any_transfer_elsewhere(&policies, "leaf", "b", "s3"));
        // Only the move's own destination: nothing to wait for.
        assert!(transfers_elsewhere(&policies[2..4], "hub", &at_age(0), "s3").is_empty());
        assert!(!any_transfer_elsewhere(&policies[2..4], "hub", "b", "s3"));
    }

    #[test]
    fn backup_then_tier_uploads_once_then_moves() {
        let policies = [
            transfer("backup", "s3", Action::Copy, 3_600),
            transfer("tier", "s3", Action::Move, 30 * 86_400),
        ];
        assert_eq!(
            evaluate(&policies, "hub", &at_age(10)),
            [
                Outcome::NotYet(Duration::from_secs(3_590)),
                Outcome::NotYet(Duration::from_secs(30 * 86_400 - 10))
            ]
        );
        let day = evaluate(&policies, "hub", &at_age(86_400));
        assert_eq!(day[0], Outcome::Decides);
        let month = evaluate(&policies, "hub", &at_age(31 * 86_400));
        assert_eq!(month, [Outcome::Overruled(1), Outcome::Decides]);
        let age = Duration::from_secs(31 * 86_400);
        assert_eq!(
            describe(&policies, 0, &month[0], age),
            "matches, but \"tier\" decides (a move wins over a copy to the same tier)"
        );
        assert_eq!(
            describe(&policies, 1, &month[1], age),
            "age 31d >= after 30d"
        );
        // Another destination is independent.
        let policies = [
            transfer("backup", "other", Action::Copy, 0),
            transfer("tier", "s3", Action::Move, 0),
        ];
        assert_eq!(
            evaluate(&policies, "hub", &at_age(0)),
            [Outcome::Decides, Outcome::Decides]
        );
        assert_eq!(
            evaluate(&policies, "leaf", &at_age(0)),
            [Outcome::OtherTier, Outcome::OtherTier]
        );
    }

    #[test]
    fn expire_wins_and_disabled_does_nothing() {
        let policies = [
            transfer("tier", "s3", Action::Move, 0),
            Policy::expire("gone", vec!["*".into()], "*", Duration::from_secs(5)).unwrap(),
            transfer("off", "s3", Action::Move, 0).with_enabled(false),
        ];
        assert_eq!(
            evaluate(&policies, "hub", &at_age(4)),
            [
                Outcome::Decides,
                Outcome::NotYet(Duration::from_secs(1)),
                Outcome::Disabled
            ]
        );
        assert_eq!(
            evaluate(&policies, "hub", &at_age(5)),
            [Outcome::Overruled(1), Outcome::Decides, Outcome::Disabled]
        );
    }
}
