//! `[[policy]]`: the checks of one policy, then of the set (cycles).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::{Checker, JetStreamRole, TierKind, AFTER_EXAMPLES};
use crate::condition::{parse_size, Conditions};
use crate::config::{defaults, raw};
use crate::policy::{
    check_policy_name, compile_buckets, same_tier_problem, Action, Policy, ALL_TIERS,
};

/// The shortest retention of an S3 tier's `expire` without `force = true`: Wasabi bills every
/// object for at least 90 days, so deleting earlier saves nothing and loses the copy.
const S3_MIN_EXPIRE: Duration = defaults::S3_RETENTION;

impl Checker {
    /// One `[[policy]]` entry. `kinds`: every tier name in the file, with its kind if that was
    /// recognised.
    pub(super) fn policy(
        &mut self,
        index: usize,
        raw: raw::Policy,
        kinds: &BTreeMap<String, Option<TierKind>>,
        seen_names: &mut HashMap<String, usize>,
    ) -> Option<Policy> {
        let at = |field: &str| format!("policy[{index}].{field}");
        let before = self.problems.len();

        check_policy_name(&raw.name, &at("name"), &mut self.problems);
        if !raw.name.is_empty() {
            if let Some(first) = seen_names.get(&raw.name) {
                self.problem(
                    &at("name"),
                    format!(
                        "duplicate policy name {:?} (also used by policy[{first}])",
                        raw.name
                    ),
                );
            } else {
                seen_names.insert(raw.name.clone(), index);
            }
        }

        let matcher = compile_buckets(&raw.buckets, &at("buckets"), &mut self.problems);

        let action = Action::from_name(&raw.action);

        let tier_list = if kinds.is_empty() {
            "no tiers are defined".to_owned()
        } else {
            let names: Vec<&str> = kinds.keys().map(String::as_str).collect();
            format!("tiers: {}", names.join(", "))
        };
        let name = &raw.name;
        let mut lookup = |field: &str, tier: &str| -> Option<Option<TierKind>> {
            let kind = kinds.get(tier).copied();
            if kind.is_none() {
                self.problem(
                    &at(field),
                    format!("policy {name:?}: no tier named {tier:?} ({tier_list})"),
                );
            }
            kind
        };
        let to = raw.to.unwrap_or_default();
        if action == Some(Action::Expire) {
            if raw.from != ALL_TIERS {
                lookup("from", &raw.from);
            }
            if !to.is_empty() {
                self.problem(
                    &at("to"),
                    "an expire policy deletes from `from` (a tier, or \"*\" for every tier) \
                     and has no `to`",
                );
            }
        } else {
            let from_kind = lookup("from", &raw.from);
            let to_kind = if to.is_empty() {
                self.problem(
                    &at("to"),
                    "missing: a copy or move policy needs a `to` tier",
                );
                None
            } else {
                lookup("to", &to)
            };
            if from_kind == Some(Some(TierKind::S3)) {
                self.problem(
                    &at("from"),
                    format!(
                        "tier {:?} is an s3 tier; data leaves S3 only through `cim-gateway restore`",
                        raw.from
                    ),
                );
            }
            if from_kind.is_some() && raw.from == to {
                self.problems.push(same_tier_problem(&at("to"), &to));
            }
            if let (Some(Some(TierKind::JetStream(from_role))), Some(Some(to_kind))) =
                (from_kind, to_kind)
            {
                if to_kind == TierKind::JetStream(JetStreamRole::Leaf) {
                    self.problem(
                        &at("to"),
                        format!(
                            "policy {name:?} sends data from the {} tier {:?} into the leaf tier \
                             {to:?}; data flows leaf → cluster → S3: name a cluster tier as `to` \
                             (or, if {to:?} is the cluster, write role = \"cluster\" in \
                             [tiers.{to}])",
                            from_role.as_str(),
                            raw.from
                        ),
                    );
                }
            }
            if raw.force.is_some() {
                self.problem(&at("force"), "only an expire policy takes `force`");
            }
        }

        if action.is_none() {
            let names: Vec<String> = Action::ALL
                .iter()
                .map(|a| format!("{:?}", a.as_str()))
                .collect();
            self.problem(
                &at("action"),
                format!(
                    "{:?} is not an action (use {})",
                    raw.action,
                    names.join(", ")
                ),
            );
        }

        let after = self.duration(&at("after"), &raw.after, AFTER_EXAMPLES);
        if let (Some(Action::Expire), Some(after)) = (action, after) {
            let s3: Vec<&str> = kinds
                .iter()
                .filter(|(tier, kind)| {
                    **kind == Some(TierKind::S3) && (raw.from == ALL_TIERS || raw.from == **tier)
                })
                .map(|(tier, _)| tier.as_str())
                .collect();
            if after < S3_MIN_EXPIRE && !s3.is_empty() && raw.force != Some(true) {
                self.problem(
                    &at("after"),
                    format!(
                        "policy {name:?} would delete from the s3 tier {} after {:?}, before the \
                         90-day minimum storage (Wasabi bills 90 days anyway): use at least \
                         \"90d\", or add force = true",
                        s3.join(", "),
                        raw.after
                    ),
                );
            }
        }

        let mut size = |field: &str, value: Option<raw::Size>| -> Option<u64> {
            match value? {
                raw::Size::Bytes(n) => match u64::try_from(n) {
                    Ok(n) => Some(n),
                    Err(_) => {
                        self.problem(&at(field), format!("{n} must not be negative"));
                        None
                    }
                },
                raw::Size::Text(text) => {
                    let parsed = parse_size(&text);
                    if parsed.is_none() {
                        self.problem(
                            &at(field),
                            format!(
                                "{text:?} is not a size (examples: 4096, \"4 KiB\", \"10 MB\", \
                                 \"1.5 GiB\")"
                            ),
                        );
                    }
                    parsed
                }
            }
        };
        let min_size = size("min_size", raw.min_size);
        let max_size = size("max_size", raw.max_size);
        let idle = match raw.idle {
            None => Some(None),
            Some(text) => self.duration(&at("idle"), &text, AFTER_EXAMPLES).map(Some),
        };
        let conditions = Conditions::build(
            &format!("policy[{index}]"),
            raw.names.unwrap_or_default(),
            raw.prefix,
            min_size,
            max_size,
            raw.metadata.unwrap_or_default(),
            raw.headers.unwrap_or_default(),
            idle.unwrap_or_default(),
            &mut self.problems,
        );

        if self.problems.len() != before {
            return None;
        }
        Some(Policy::from_parts(
            raw.name,
            raw.buckets,
            matcher?,
            raw.from,
            to,
            action?,
            after?,
            raw.enabled.unwrap_or(true),
            conditions?,
            raw.force.unwrap_or(false),
        ))
    }

    /// Checks the (individually valid) policies together: enabled `copy`/`move` policies must
    /// not form a cycle of tiers (A → B and B → A, or longer), whatever their buckets — data
    /// would go round for ever. One problem per cycle, at the first policy involved, naming
    /// every one.
    pub(super) fn policy_set(&mut self, policies: &[(usize, Policy)]) {
        let edges: Vec<&(usize, Policy)> = policies
            .iter()
            .filter(|(_, p)| p.enabled && p.action.transfers())
            .collect();
        let mut next: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (_, p) in &edges {
            next.entry(p.from.as_str())
                .or_default()
                .insert(p.to.as_str());
        }
        for component in cycles(&next) {
            let involved: Vec<&&(usize, Policy)> = edges
                .iter()
                .filter(|(_, p)| {
                    component.contains(p.from.as_str()) && component.contains(p.to.as_str())
                })
                .collect();
            let Some((first, _)) = involved.first() else {
                continue;
            };
            let named: Vec<String> = involved
                .iter()
                .map(|(i, p)| format!("policy[{i}] {:?} ({} → {})", p.name, p.from, p.to))
                .collect();
            self.problem(
                &format!("policy[{first}].to"),
                format!(
                    "these policies form a cycle and would move data back and forth for ever: \
                     {}; remove one or set enabled = false",
                    named.join(", ")
                ),
            );
        }
    }
}

/// The tier sets of the strongly connected components with more than one tier (every cycle
/// lies within one), in order of their smallest tier name.
fn cycles<'a>(next: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<BTreeSet<&'a str>> {
    // Tiny graphs: reachability by search from every node is plenty.
    let reach = |start: &'a str| -> BTreeSet<&'a str> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start];
        while let Some(node) = stack.pop() {
            for &n in next.get(node).into_iter().flatten() {
                if seen.insert(n) {
                    stack.push(n);
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&str, BTreeSet<&str>> = next.keys().map(|&n| (n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for (&node, from_node) in &reachable {
        if done.contains(node) || !from_node.contains(node) {
            continue;
        }
        let component: BTreeSet<&str> = from_node
            .iter()
            .copied()
            .filter(|&other| reachable.get(other).is_some_and(|r| r.contains(node)))
            .collect();
        done.extend(component.iter().copied());
        out.push(component);
    }
    out
}
