//! Policies and their evaluation: which objects move where, and when.
//!
//! A [`Policy`] says: objects in JetStream object-store buckets whose names
//! match one of `buckets` (and the policy's object [`Conditions`]), stored on
//! tier `from`, go to tier `to` once they are at least `after` old, either
//! keeping (`copy`) or removing (`move`) the `from` copy; or, for `expire`,
//! are deleted from `from` (or from every tier) once that old. Evaluation is
//! pure: callers pass the object ([`Object`], with its age); which of several
//! matching policies decides is [`crate::evaluate`]'s.

use std::fmt;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::condition::{Conditions, Miss, Object};
use crate::error::Problem;

/// What a policy does to an object: transfer it to the destination tier keeping
/// (`"copy"`) or removing (`"move"`) the source copy, or delete it (`"expire"`).
/// `Display` is lowercase.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Keep the object on the source tier as well.
    Copy,
    /// Remove the object from the source tier once the destination has it.
    Move,
    /// Delete the object from the `from` tier (or every tier: `from = "*"`) once it is `after`
    /// old: a retention. No destination.
    Expire,
}

impl Action {
    /// Every action, in the order they are listed in messages.
    pub const ALL: [Action; 3] = [Action::Copy, Action::Move, Action::Expire];

    /// The TOML spelling: `"copy"`, `"move"` or `"expire"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Copy => "copy",
            Action::Move => "move",
            Action::Expire => "expire",
        }
    }

    /// Whether the action transfers data to a destination tier (`copy`, `move`).
    pub fn transfers(self) -> bool {
        self != Action::Expire
    }

    /// Parse the TOML spelling (exact, lowercase).
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of transfer a policy describes, determined by the kinds of its
/// `from` and `to` tiers (see [`crate::Config::route`]).
///
/// Serializes (serde) as [`Route::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// JetStream tier → JetStream tier (edge leaf → hub cluster): continuous
    /// stream sourcing; `after` decides when a `move` evicts the source copy.
    LeafToCluster,
    /// JetStream tier → S3 tier: objects are uploaded once older than `after`.
    ClusterToS3,
    /// An `expire` policy: no transfer, a deletion after a retention.
    Expire,
}

impl Route {
    /// Every route.
    pub const ALL: [Route; 3] = [Route::LeafToCluster, Route::ClusterToS3, Route::Expire];

    /// A short kebab-case name: `"leaf-to-cluster"`, `"cluster-to-s3"` or `"expire"`
    /// (suitable for logs and metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Route::LeafToCluster => "leaf-to-cluster",
            Route::ClusterToS3 => "cluster-to-s3",
            Route::Expire => "expire",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated `[[policy]]` entry.
///
/// Build one with [`crate::Config::from_toml_str`] or [`Policy::new`]. The
/// bucket globs are compiled at construction: changing the public `buckets`
/// field afterwards does not change what [`Policy::matches_bucket`] matches.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Unique policy name (`[A-Za-z0-9_-]+`).
    pub name: String,
    /// Glob patterns over JetStream object-store bucket names, as written.
    pub buckets: Vec<String>,
    matcher: GlobSet,
    /// Name of the source tier; for `expire`, the tier to delete from, or
    /// [`ALL_TIERS`] (`"*"`).
    pub from: String,
    /// Name of the destination tier; empty for `expire`.
    pub to: String,
    /// Copy, move or expire.
    pub action: Action,
    /// Minimum object age before the policy applies (may be zero); for
    /// `expire`, the retention.
    pub after: Duration,
    /// `false`: validated, shown by `plan` and `explain` as disabled, never
    /// evaluated. Default `true`.
    pub enabled: bool,
    /// What the policy asks of an object besides its bucket and age.
    pub conditions: Conditions,
    /// `expire` only: allow a retention below an S3 tier's 90-day minimum.
    pub force: bool,
}

/// The `from` of an `expire` policy that deletes from every tier.
pub const ALL_TIERS: &str = "*";

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        // `matcher` is a function of `buckets`.
        self.name == other.name
            && self.buckets == other.buckets
            && self.from == other.from
            && self.to == other.to
            && self.action == other.action
            && self.after == other.after
            && self.enabled == other.enabled
            && self.conditions == other.conditions
            && self.force == other.force
    }
}

impl Eq for Policy {}

impl Policy {
    /// Build a policy outside a configuration file (e.g. in tests).
    ///
    /// Checks what can be checked without the tier list: the name, the bucket
    /// globs and that `from` and `to` are non-empty and differ. Problem paths
    /// are relative to the policy (`name`, `buckets[1]`, `to`, ...).
    pub fn new(
        name: impl Into<String>,
        buckets: Vec<String>,
        from: impl Into<String>,
        to: impl Into<String>,
        action: Action,
        after: Duration,
    ) -> Result<Policy, Vec<Problem>> {
        let (name, from, to) = (name.into(), from.into(), to.into());
        let mut problems = Vec::new();
        check_policy_name(&name, "name", &mut problems);
        let matcher = compile_buckets(&buckets, "buckets", &mut problems);
        for (field, tier) in [("from", &from), ("to", &to)] {
            if tier.is_empty() {
                problems.push(Problem::new(field, "must name a tier"));
            }
        }
        if !from.is_empty() && from == to {
            problems.push(same_tier_problem("to", &from));
        }
        match matcher {
            Some(matcher) if problems.is_empty() => Ok(Policy {
                name,
                buckets,
                matcher,
                from,
                to,
                action,
                after,
                enabled: true,
                conditions: Conditions::default(),
                force: false,
            }),
            _ => Err(problems),
        }
    }

    /// An `expire` policy outside a configuration file (e.g. in tests): deletes objects of
    /// `buckets` from tier `from` (or every tier, [`ALL_TIERS`]) once `after` old.
    pub fn expire(
        name: impl Into<String>,
        buckets: Vec<String>,
        from: impl Into<String>,
        after: Duration,
    ) -> Result<Policy, Vec<Problem>> {
        let (name, from) = (name.into(), from.into());
        let mut problems = Vec::new();
        check_policy_name(&name, "name", &mut problems);
        let matcher = compile_buckets(&buckets, "buckets", &mut problems);
        if from.is_empty() {
            problems.push(Problem::new("from", "must name a tier or \"*\""));
        }
        match matcher {
            Some(matcher) if problems.is_empty() => Ok(Policy {
                name,
                buckets,
                matcher,
                from,
                to: String::new(),
                action: Action::Expire,
                after,
                enabled: true,
                conditions: Conditions::default(),
                force: false,
            }),
            _ => Err(problems),
        }
    }

    /// The same policy with these object conditions.
    pub fn with_conditions(mut self, conditions: Conditions) -> Policy {
        self.conditions = conditions;
        self
    }

    /// The same policy, enabled or not.
    pub fn with_enabled(mut self, enabled: bool) -> Policy {
        self.enabled = enabled;
        self
    }

    /// Assemble from already-validated parts (used by the config validator).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        name: String,
        buckets: Vec<String>,
        matcher: GlobSet,
        from: String,
        to: String,
        action: Action,
        after: Duration,
        enabled: bool,
        conditions: Conditions,
        force: bool,
    ) -> Policy {
        Policy {
            name,
            buckets,
            matcher,
            from,
            to,
            action,
            after,
            enabled,
            conditions,
            force,
        }
    }

    /// Whether any of the policy's globs matches the whole bucket name
    /// (case-sensitive).
    pub fn matches_bucket(&self, bucket: &str) -> bool {
        self.matcher.is_match(bucket)
    }

    /// Whether an object of this age is due: `age >= after`.
    pub fn is_due(&self, age: Duration) -> bool {
        age >= self.after
    }

    /// Whether the policy acts on tier `tier`: its `from`, or any tier for an
    /// `expire` from [`ALL_TIERS`].
    pub fn acts_on(&self, tier: &str) -> bool {
        self.from == tier || (self.action == Action::Expire && self.from == ALL_TIERS)
    }

    /// Whether the policy covers objects of `bucket` stored on tier
    /// `from_tier`, regardless of age and object conditions.
    pub fn applies_to(&self, from_tier: &str, bucket: &str) -> bool {
        self.acts_on(from_tier) && self.matches_bucket(bucket)
    }

    /// Whether `object` meets the bucket globs and the object conditions (not the age):
    /// the first condition that fails otherwise.
    pub fn check(&self, object: &Object<'_>) -> Result<(), Miss> {
        if !self.matches_bucket(object.bucket) {
            return Err(Miss::Bucket);
        }
        self.conditions.check(object)
    }
}

/// The due policies from tier `from_tier` that match `bucket`, given the
/// object's age, ignoring object conditions and `enabled` (see
/// [`crate::evaluate`] for the decision on one object). A Move, if any is due,
/// is listed first.
///
/// Precisely: the policies with `from == from_tier`, a glob matching
/// `bucket` and `after <= age`, moves before copies, otherwise in
/// configuration order.
pub fn due_policies<'a>(
    policies: &'a [Policy],
    from_tier: &str,
    bucket: &str,
    age: Duration,
) -> Vec<&'a Policy> {
    let mut due: Vec<&Policy> = policies
        .iter()
        .filter(|p| p.is_due(age) && p.applies_to(from_tier, bucket))
        .collect();
    // Stable sort: `false` (a move) sorts before `true`.
    due.sort_by_key(|p| p.action != Action::Move);
    due
}

/// Characters allowed in a bucket glob besides `[A-Za-z0-9_-]`.
const GLOB_META: &str = "*?[]{},!";

/// Whether `s` is a non-empty `[A-Za-z0-9_-]+` name.
pub(crate) fn is_simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn check_policy_name(name: &str, path: &str, problems: &mut Vec<Problem>) {
    if name.is_empty() {
        problems.push(Problem::new(path, "must not be empty"));
    } else if !is_simple_name(name) {
        problems.push(Problem::new(
            path,
            format!("{name:?} may only contain A-Z a-z 0-9 _ -"),
        ));
    }
}

pub(crate) fn same_tier_problem(path: &str, tier: &str) -> Problem {
    Problem::new(
        path,
        format!("same tier as `from` ({tier:?}); a policy must name two different tiers"),
    )
}

/// Validate and compile bucket globs. `path` is the path of the `buckets`
/// key; problems for single patterns go to `{path}[{j}]`. Returns `None` if
/// there was any problem.
pub(crate) fn compile_buckets(
    buckets: &[String],
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<GlobSet> {
    if buckets.is_empty() {
        problems.push(Problem::new(
            path,
            "must list at least one bucket name or glob (\"*\" matches every bucket)",
        ));
        return None;
    }
    let refuse = |pattern: &str| {
        let bad = pattern.chars().find(|&c| {
            !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || GLOB_META.contains(c))
        })?;
        Some(format!(
            "{pattern:?} contains {bad:?}, which cannot occur in a NATS bucket name \
             (allowed: A-Z a-z 0-9 _ - and the glob characters * ? [ ] {{ }} , !)"
        ))
    };
    compile_globs(buckets, path, false, refuse, problems)
}

/// Compiles `patterns` (the list at `path`) into one set, `*` matching `/` too: each empty
/// pattern, each one `refuse` has a reason against, and each that is no glob is a problem at
/// `{path}[{j}]`. `backslash_escape`: whether `\` escapes a glob character. `None` if there was
/// any problem. The one glob compiler of bucket and object-name globs.
pub(crate) fn compile_globs(
    patterns: &[String],
    path: &str,
    backslash_escape: bool,
    refuse: impl Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<GlobSet> {
    let mut set = GlobSetBuilder::new();
    let mut ok = true;
    for (j, pattern) in patterns.iter().enumerate() {
        let item_path = format!("{path}[{j}]");
        if pattern.is_empty() {
            problems.push(Problem::new(item_path, "must not be empty"));
            ok = false;
            continue;
        }
        if let Some(reason) = refuse(pattern) {
            problems.push(Problem::new(item_path, reason));
            ok = false;
            continue;
        }
        match GlobBuilder::new(pattern)
            .literal_separator(false)
            .backslash_escape(backslash_escape)
            .build()
        {
            Ok(glob) => {
                set.add(glob);
            }
            Err(err) => {
                problems.push(Problem::new(
                    item_path,
                    format!("{pattern:?} is not a valid glob: {}", err.kind()),
                ));
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    match set.build() {
        Ok(set) => Some(set),
        Err(err) => {
            problems.push(Problem::new(
                path,
                format!("cannot compile the globs: {}", err.kind()),
            ));
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(name: &str, buckets: &[&str], from: &str, action: Action, after_secs: u64) -> Policy {
        Policy::new(
            name,
            buckets.iter().map(|b| (*b).to_owned()).collect(),
            from,
            "dest",
            action,
            Duration::from_secs(after_secs),
        )
        .unwrap()
    }

    #[test]
    fn glob_matching() {
        let p = policy("p", &["sensors-*"], "leaf", Action::Move, 0);
        assert!(p.matches_bucket("sensors-a"));
        assert!(p.matches_bucket("sensors-"));
        assert!(!p.matches_bucket("logs"));
        assert!(
            !p.matches_bucket("xsensors-a"),
            "globs match the whole name"
        );
        assert!(!p.matches_bucket("Sensors-a"), "matching is case-sensitive");

        let all = policy("all", &["*"], "leaf", Action::Move, 0);
        for b in ["logs", "sensors-a", "x", "A_b-C", ""] {
            assert!(all.matches_bucket(b), "{b}");
        }

        let several = policy(
            "s",
            &["logs", "cam-{front,back}", "t?", "[!x]y"],
            "leaf",
            Action::Copy,
            0,
        );
        assert!(several.matches_bucket("logs"));
        assert!(!several.matches_bucket("logs2"));
        assert!(several.matches_bucket("cam-front"));
        assert!(several.matches_bucket("cam-back"));
        assert!(!several.matches_bucket("cam-side"));
        assert!(several.matches_bucket("t1"));
        assert!(!several.matches_bucket("t12"));
        assert!(several.matches_bucket("ay"));
        assert!(!several.matches_bucket("xy"));
    }

    #[test]
    fn new_reports_every_problem() {
        let problems = Policy::new(
            "",
            vec![
                "ok-*".into(),
                "bad.name".into(),
                "[unclosed".into(),
                String::new(),
            ],
            "hub",
            "hub",
            Action::Move,
            Duration::ZERO,
        )
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["name", "buckets[1]", "buckets[2]", "buckets[3]", "to"]
        );
        assert!(problems[1].message.contains("'.'"), "{}", problems[1]);

        let problems = Policy::new("p", vec![], "", "x", Action::Copy, Duration::ZERO).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["buckets", "from"]);
    }

    #[test]
    fn action_and_route_names() {
        assert_eq!(Action::Copy.to_string(), "copy");
        assert_eq!(Action::Move.to_string(), "move");
        assert_eq!(Action::from_name("move"), Some(Action::Move));
        assert_eq!(Action::from_name("Move"), None);
        assert_eq!(Route::LeafToCluster.to_string(), "leaf-to-cluster");
        assert_eq!(Route::ClusterToS3.to_string(), "cluster-to-s3");
        assert_eq!(Action::from_name("expire"), Some(Action::Expire));
        assert_eq!(Route::Expire.to_string(), "expire");
    }

    #[test]
    fn serde_names_match_display() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Doc {
            action: Action,
            route: Route,
        }
        for action in Action::ALL {
            for route in Route::ALL {
                let doc = Doc { action, route };
                let text = toml::to_string(&doc).unwrap();
                assert_eq!(
                    text,
                    format!("action = \"{action}\"\nroute = \"{route}\"\n")
                );
                assert_eq!(toml::from_str::<Doc>(&text).unwrap(), doc);
            }
        }
    }

    #[test]
    fn due_policies_orders_moves_first() {
        let policies = vec![
            policy("copy-early", &["*"], "hub", Action::Copy, 10),
            policy("move-late", &["logs"], "hub", Action::Move, 100),
            policy("other-tier", &["*"], "leaf", Action::Move, 0),
            policy("copy-2", &["log?"], "hub", Action::Copy, 0),
        ];
        let names = |age: u64, bucket: &str| -> Vec<String> {
            due_policies(&policies, "hub", bucket, Duration::from_secs(age))
                .into_iter()
                .map(|p| p.name.clone())
                .collect()
        };
        assert_eq!(names(5, "logs"), ["copy-2"]);
        assert_eq!(names(10, "logs"), ["copy-early", "copy-2"]);
        assert_eq!(names(100, "logs"), ["move-late", "copy-early", "copy-2"]);
        assert_eq!(names(100, "metrics"), ["copy-early"]);
        assert!(due_policies(&policies, "nowhere", "logs", Duration::MAX).is_empty());
    }

    const TIERS: [&str; 3] = ["leaf", "hub", "edge"];
    const GLOBS: [&str; 6] = ["*", "logs", "sensors-*", "s?", "{a,b}-*", "[a-c]*"];
    const BUCKETS: [&str; 8] = ["logs", "sensors-1", "s1", "a-x", "b-", "c", "zzz", ""];

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (
            0..TIERS.len(),
            proptest::collection::vec(0..GLOBS.len(), 1..3),
            any::<bool>(),
            0u64..1_000,
        )
            .prop_map(|(tier, globs, is_move, after)| {
                Policy::new(
                    format!("p{tier}{after}"),
                    globs.into_iter().map(|g| GLOBS[g].to_owned()).collect(),
                    TIERS[tier],
                    "dest",
                    if is_move { Action::Move } else { Action::Copy },
                    Duration::from_secs(after),
                )
                .unwrap()
            })
    }

    proptest! {
        #[test]
        fn is_due_is_age_at_least_after(age_ns in any::<u64>(), after_ns in any::<u64>(),
                                        age_s in any::<u32>(), after_s in any::<u32>()) {
            for (age, after) in [
                (Duration::from_nanos(age_ns), Duration::from_nanos(after_ns)),
                (Duration::from_secs(age_s.into()), Duration::from_secs(after_s.into())),
                (Duration::from_nanos(age_ns), Duration::from_nanos(age_ns)),
            ] {
                let p = Policy::new("p", vec!["*".into()], "a", "b", Action::Move, after).unwrap();
                prop_assert_eq!(p.is_due(age), age >= after);
            }
        }

        #[test]
        fn due_policies_invariants(policies in proptest::collection::vec(arb_policy(), 0..8),
                                   tier in 0..TIERS.len(), bucket in 0..BUCKETS.len(),
                                   age in 0u64..1_200) {
            let (tier, bucket, age) = (TIERS[tier], BUCKETS[bucket], Duration::from_secs(age));
            let due = due_policies(&policies, tier, bucket, age);
            for p in &due {
                prop_assert_eq!(p.from.as_str(), tier);
                prop_assert!(p.matches_bucket(bucket));
                prop_assert!(p.is_due(age));
            }
            // Nothing applicable is left out.
            let expected = policies.iter()
                .filter(|p| p.from == tier && p.matches_bucket(bucket) && p.is_due(age))
                .count();
            prop_assert_eq!(due.len(), expected);
            // A due move, if any, comes first; all moves precede all copies.
            if due.iter().any(|p| p.action == Action::Move) {
                prop_assert_eq!(due[0].action, Action::Move);
            }
            let first_copy = due.iter().position(|p| p.action == Action::Copy).unwrap_or(due.len());
            prop_assert!(due[first_copy..].iter().all(|p| p.action == Action::Copy));
        }
    }
}
