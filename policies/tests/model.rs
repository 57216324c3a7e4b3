//! Property tests of the policy language against a small reference model of the rules, written
//! here independently of the crate: generated policy sets (multi-hop chains, `expire`, disabled
//! policies, object conditions, `idle` against generated last reads) are written as configuration text; the validator must accept
//! exactly the sets the model accepts, and for accepted sets the crate's evaluation must make the
//! model's decisions for generated objects on every tier. Simulating the decisions along the
//! chain, a `move` never leaves an object without a copy and nothing goes round for ever.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use cim_policies::evaluate::evaluate;
use cim_policies::{Config, ConfigError, Object};
use proptest::prelude::*;

/// (name, kind line); `leaf` is marked as a leaf.
const TIERS: [(&str, &str); 4] = [
    (
        "leaf",
        "kind = \"jetstream\"\ndomain = \"leaf\"\nrole = \"leaf\"",
    ),
    ("hub", "kind = \"jetstream\"\ndomain = \"hub\""),
    (
        "hub2",
        "kind = \"jetstream\"\ndomain = \"hub2\"\nrole = \"cluster\"",
    ),
    (
        "s3",
        "kind = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\nregion = \"r\"\nbucket = \"cim\"",
    ),
];
const BUCKET_GLOBS: [&str; 3] = ["*", "logs", "s*"];
const BUCKETS: [&str; 3] = ["logs", "sensors", "x"];
const PREFIXES: [&str; 2] = ["a/", "b"];
const NAMES: [&str; 4] = ["a/1", "a/2", "b", "c"];
/// Days.
const AFTERS: [u64; 5] = [0, 1, 30, 90, 400];
const SIZES: [u64; 4] = [0, 10, 1_000, 5_000];
/// Days of `idle`.
const IDLES: [u64; 3] = [1, 30, 90];
const DAY: u64 = 86_400;

#[derive(Debug, Clone)]
struct ModelPolicy {
    from: usize, // TIERS index, or TIERS.len() for "*"
    to: usize,
    action: &'static str,
    after_days: u64,
    bucket: usize,
    prefix: Option<usize>,
    min_size: Option<u64>,
    max_size: Option<u64>,
    idle_days: Option<u64>,
    enabled: bool,
    force: bool,
}

impl ModelPolicy {
    fn is_expire(&self) -> bool {
        self.action == "expire"
    }

    fn source_name(&self) -> &'static str {
        TIERS.get(self.from).map_or("*", |t| t.0)
    }

    fn toml(&self, i: usize) -> String {
        let mut out = format!(
            "[[policy]]\nname = \"p{i}\"\nbuckets = [\"{}\"]\nfrom = \"{}\"\naction = \"{}\"\n\
             after = \"{}d\"\n",
            BUCKET_GLOBS[self.bucket],
            self.source_name(),
            self.action,
            self.after_days
        );
        if !self.is_expire() {
            out += &format!("to = \"{}\"\n", TIERS[self.to].0);
        } else if self.force {
            out += "force = true\n";
        }
        if let Some(p) = self.prefix {
            out += &format!("prefix = \"{}\"\n", PREFIXES[p]);
        }
        if let Some(s) = self.min_size {
            out += &format!("min_size = {s}\n");
        }
        if let Some(s) = self.max_size {
            out += &format!("max_size = \"{s} B\"\n");
        }
        if let Some(d) = self.idle_days {
            out += &format!("idle = \"{d}d\"\n");
        }
        if !self.enabled {
            out += "enabled = false\n";
        }
        out
    }

    /// The model's rules for one object on tier `tier` (index): bucket, conditions, age.
    fn matches(&self, tier: usize, o: &ModelObject) -> bool {
        let bucket = BUCKETS[o.bucket];
        let bucket_ok = match BUCKET_GLOBS[self.bucket] {
            "*" => true,
            "s*" => bucket.starts_with('s'),
            exact => bucket == exact,
        };
        self.enabled
            && (self.from == tier || (self.is_expire() && self.from == TIERS.len()))
            && bucket_ok
            && self
                .prefix
                .is_none_or(|p| NAMES[o.name].starts_with(PREFIXES[p]))
            && self.min_size.is_none_or(|m| o.size >= m)
            && self.max_size.is_none_or(|m| o.size <= m)
            // Unread since the later of the last read and the store (never read: the age).
            && self
                .idle_days
                .is_none_or(|d| o.last_read_days.map_or(o.age_days, |r| r.min(o.age_days)) >= d)
            && o.age_days >= self.after_days
    }
}

#[derive(Debug, Clone)]
struct ModelObject {
    bucket: usize,
    name: usize,
    size: u64,
    age_days: u64,
    /// Days since the last read; `None` = never read.
    last_read_days: Option<u64>,
}

fn is_s3(tier: usize) -> bool {
    TIERS
        .get(tier)
        .is_some_and(|t| t.1.starts_with("kind = \"s3\""))
}

/// The model's validity: every rule of the language, by hand.
fn model_accepts(policies: &[ModelPolicy]) -> bool {
    for p in policies {
        if let (Some(min), Some(max)) = (p.min_size, p.max_size) {
            if min > max {
                return false;
            }
        }
        if p.is_expire() {
            let on_s3 = p.from == TIERS.len() || is_s3(p.from);
            if on_s3 && p.after_days < 90 && !p.force {
                return false;
            }
        } else if is_s3(p.from) || p.from == p.to || TIERS[p.to].0 == "leaf" {
            return false;
        }
    }
    // No cycle among the enabled transfers: depth-first search for a back edge.
    let edges: Vec<(usize, usize)> = policies
        .iter()
        .filter(|p| p.enabled && !p.is_expire())
        .map(|p| (p.from, p.to))
        .collect();
    fn cyclic(node: usize, edges: &[(usize, usize)], path: &mut Vec<usize>) -> bool {
        if path.contains(&node) {
            return true;
        }
        path.push(node);
        let found = edges
            .iter()
            .filter(|(f, _)| *f == node)
            .any(|(_, t)| cyclic(*t, edges, path));
        path.pop();
        found
    }
    !(0..TIERS.len()).any(|start| cyclic(start, &edges, &mut Vec::new()))
}

/// The model's decisions for one object on one tier: the indexes of the deciding policies.
fn model_decides(policies: &[ModelPolicy], tier: usize, o: &ModelObject) -> BTreeSet<usize> {
    let matching: Vec<usize> = (0..policies.len())
        .filter(|&i| policies[i].matches(tier, o))
        .collect();
    if let Some(&expire) = matching.iter().find(|&&i| policies[i].is_expire()) {
        return [expire].into();
    }
    let mut out = BTreeSet::new();
    for to in 0..TIERS.len() {
        let to_here: Vec<usize> = matching
            .iter()
            .copied()
            .filter(|&i| policies[i].to == to)
            .collect();
        let first_move = to_here.iter().find(|&&i| policies[i].action == "move");
        if let Some(&winner) = first_move.or(to_here.first()) {
            out.insert(winner);
        }
    }
    out
}

fn config_text(policies: &[ModelPolicy]) -> String {
    let mut text = "[nats]\nurl = \"nats://127.0.0.1:4222\"\n".to_owned();
    for (name, body) in TIERS {
        text += &format!("[tiers.{name}]\n{body}\n");
    }
    for (i, p) in policies.iter().enumerate() {
        text += &p.toml(i);
    }
    text
}

fn arb_policy() -> impl Strategy<Value = ModelPolicy> {
    (
        (0..=TIERS.len(), 0..TIERS.len(), 0..3usize, 0..AFTERS.len()),
        (
            0..BUCKET_GLOBS.len(),
            proptest::option::of(0..PREFIXES.len()),
            proptest::option::of(0..SIZES.len()),
            proptest::option::of(0..SIZES.len()),
        ),
        (
            proptest::bool::weighted(0.85),
            any::<bool>(),
            proptest::option::weighted(0.3, 0..IDLES.len()),
        ),
    )
        .prop_map(
            |((from, to, action, after), (bucket, prefix, min, max), (enabled, force, idle))| {
                let action = ["copy", "move", "expire"][action];
                // "*" only for expire; other actions pick a real tier.
                let from = if action != "expire" && from == TIERS.len() {
                    0
                } else {
                    from
                };
                ModelPolicy {
                    from,
                    to,
                    action,
                    after_days: AFTERS[after],
                    bucket,
                    prefix,
                    min_size: min.map(|i| SIZES[i]),
                    max_size: max.map(|i| SIZES[i]),
                    idle_days: idle.map(|i| IDLES[i]),
                    enabled,
                    force,
                }
            },
        )
}

fn arb_object() -> impl Strategy<Value = ModelObject> {
    (
        0..BUCKETS.len(),
        0..NAMES.len(),
        0..SIZES.len(),
        0u64..500,
        // Often longer ago than the age: read before this tier stored it.
        proptest::option::of(0u64..600),
    )
        .prop_map(
            |(bucket, name, size, age_days, last_read_days)| ModelObject {
                bucket,
                name,
                size: SIZES[size],
                age_days,
                last_read_days,
            },
        )
}

/// A leaf → hub → S3 chain with a backup copy: always valid, so the decisions are exercised.
fn chain() -> Vec<ModelPolicy> {
    let base = ModelPolicy {
        from: 0,
        to: 1,
        action: "move",
        after_days: 0,
        bucket: 0,
        prefix: None,
        min_size: None,
        max_size: None,
        idle_days: None,
        enabled: true,
        force: false,
    };
    vec![
        base.clone(),
        ModelPolicy {
            from: 1,
            to: 3,
            action: "copy",
            after_days: 0,
            ..base.clone()
        },
        ModelPolicy {
            from: 1,
            to: 3,
            action: "move",
            after_days: 30,
            ..base.clone()
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn validation_and_decisions_match_the_model(
        extra in proptest::collection::vec(arb_policy(), 0..6),
        with_chain in any::<bool>(),
        objects in proptest::collection::vec(arb_object(), 1..8),
    ) {
        let mut policies = if with_chain { chain() } else { Vec::new() };
        policies.extend(extra);
        let text = config_text(&policies);
        let parsed = Config::from_toml_str(&text, "model.toml");
        let accepted = model_accepts(&policies);
        match &parsed {
            Ok(_) => prop_assert!(accepted, "accepted, the model refuses:\n{text}"),
            Err(ConfigError::Invalid { problems, .. }) => {
                prop_assert!(!accepted, "refused ({problems:?}), the model accepts:\n{text}");
            }
            Err(e) => prop_assert!(false, "{e}\n{text}"),
        }
        let Ok(config) = parsed else { return Ok(()); };
        prop_assert_eq!(config.policies.len(), policies.len());

        for o in &objects {
            for (tier, (tier_name, _)) in TIERS.iter().enumerate() {
                let object = Object {
                    bucket: BUCKETS[o.bucket],
                    name: NAMES[o.name],
                    size: o.size,
                    age: Duration::from_secs(o.age_days * DAY),
                    metadata: None,
                    headers: None,
                    last_read: o.last_read_days.map(|d| Duration::from_secs(d * DAY)),
                };
                let outcomes = evaluate(&config.policies, tier_name, &object);
                let decided: BTreeSet<usize> =
                    (0..outcomes.len()).filter(|&i| outcomes[i].decides()).collect();
                prop_assert_eq!(&decided, &model_decides(&policies, tier, o),
                    "object {:?} on {}\n{}", o, tier_name, text);
            }

            // Follow the object from the leaf: each decision fires once (a transfer puts a copy
            // at `to` before a move takes the source's); only an expire may leave no copy, and
            // the chain ends (no cycles).
            let mut holders: BTreeSet<usize> = [0].into();
            let mut fired = BTreeSet::new();
            let mut steps = 0;
            loop {
                let mut next = None;
                'find: for &tier in &holders {
                    for i in model_decides(&policies, tier, o) {
                        if fired.insert((i, tier)) {
                            next = Some((i, tier));
                            break 'find;
                        }
                    }
                }
                let Some((i, tier)) = next else { break };
                let p = &policies[i];
                match p.action {
                    "copy" => { holders.insert(p.to); }
                    "move" => {
                        holders.insert(p.to);
                        holders.remove(&tier);
                        prop_assert!(!holders.is_empty(), "a move left no copy");
                    }
                    _ => {
                        if p.from == TIERS.len() { holders.clear() } else { holders.remove(&tier); }
                    }
                }
                steps += 1;
                prop_assert!(steps <= policies.len() * TIERS.len(), "no end:\n{}", text);
            }
        }
    }
}
