//! The policy language in configuration files: conditions, `enabled`, `expire`, tier roles,
//! and the problems of policy sets (cycles, data sent into a leaf, unknown tiers).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::{Config, JetStreamRole};
use crate::error::ConfigError;
use crate::policy::Action;

const TIERS: &str = r#"
[nats]
url = "nats://127.0.0.1:4222"

[tiers.leaf]
kind = "jetstream"
domain = "leaf"
role = "leaf"

[tiers.hub]
kind = "jetstream"
domain = "hub"

[tiers.hub2]
kind = "jetstream"
domain = "hub2"

[tiers.s3]
kind = "s3"
endpoint = "http://127.0.0.1:3900"
region = "garage"
bucket = "cim"
"#;

fn parse(policies: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(&format!("{TIERS}\n{policies}"), "test.toml")
}

fn problems(policies: &str) -> Vec<String> {
    match parse(policies) {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn policy(name: &str, from: &str, to: &str, action: &str, extra: &str) -> String {
    format!(
        "[[policy]]\nname = \"{name}\"\nbuckets = [\"*\"]\nfrom = \"{from}\"\nto = \"{to}\"\n\
         action = \"{action}\"\nafter = \"1h\"\n{extra}\n"
    )
}

#[test]
fn conditions_parse_with_human_sizes() {
    let config = parse(&policy(
        "p",
        "hub",
        "s3",
        "copy",
        "names = [\"*.csv\"]\nprefix = \"reports/\"\nmin_size = \"4 KiB\"\nmax_size = 1000000\n\
         metadata = { class = \"cold\" }\nheaders = { \"Content-Type\" = \"text/csv\" }\n\
         enabled = false",
    ))
    .unwrap();
    let p = &config.policies[0];
    assert!(!p.enabled);
    assert_eq!(p.conditions.names, ["*.csv"]);
    assert_eq!(p.conditions.prefix.as_deref(), Some("reports/"));
    assert_eq!(p.conditions.min_size, Some(4096));
    assert_eq!(p.conditions.max_size, Some(1_000_000));
    assert_eq!(p.conditions.metadata["class"], "cold");
    assert_eq!(p.conditions.headers["Content-Type"], "text/csv");
    assert!(p.conditions.needs_attributes());
    assert_eq!(
        config.tier("leaf").unwrap().as_jetstream().unwrap().role,
        JetStreamRole::Leaf
    );
    assert_eq!(
        config.tier("hub").unwrap().as_jetstream().unwrap().role,
        JetStreamRole::Cluster,
        "the default"
    );
}

#[test]
fn bad_conditions_are_named() {
    assert_eq!(
        problems(&policy(
            "p",
            "hub",
            "s3",
            "copy",
            "min_size = \"4 kb\"\nmax_size = -1\nnames = [\"\"]"
        )),
        [
            r#"policy[0].min_size: "4 kb" is not a size (examples: 4096, "4 KiB", "10 MB", "1.5 GiB")"#,
            "policy[0].max_size: -1 must not be negative",
            "policy[0].names[0]: must not be empty",
        ]
    );
    assert_eq!(
        problems(&policy(
            "p",
            "hub",
            "s3",
            "copy",
            "min_size = \"2 KiB\"\nmax_size = \"1 KiB\""
        )),
        ["policy[0].max_size: 1024 bytes is less than `min_size` (2048 bytes)"]
    );
}

#[test]
fn a_cycle_names_every_policy_in_it() {
    let text = [
        policy("up", "leaf", "hub", "move", ""),
        policy("across", "hub", "hub2", "move", ""),
        policy("back", "hub2", "hub", "copy", ""),
        policy("archive", "hub", "s3", "move", ""),
    ]
    .concat();
    assert_eq!(
        problems(&text),
        [
            "policy[1].to: these policies form a cycle and would move data back and forth for \
             ever: policy[1] \"across\" (hub → hub2), policy[2] \"back\" (hub2 → hub); remove \
             one or set enabled = false"
        ]
    );
    // Disabled, the cycle is gone.
    let text = [
        policy("across", "hub", "hub2", "move", ""),
        policy("back", "hub2", "hub", "copy", "enabled = false"),
    ]
    .concat();
    assert!(parse(&text).is_ok());
}

#[test]
fn data_never_goes_into_a_leaf() {
    assert_eq!(
        problems(&policy("down", "hub", "leaf", "copy", "")),
        [
            "policy[0].to: policy \"down\" sends data from the cluster tier \"hub\" into the leaf \
             tier \"leaf\"; data flows leaf → cluster → S3: name a cluster tier as `to` (or, if \
             \"leaf\" is the cluster, write role = \"cluster\" in [tiers.leaf])"
        ]
    );
    let bad_role = Config::from_toml_str(
        &TIERS.replace("role = \"leaf\"", "role = \"edge\""),
        "test.toml",
    )
    .unwrap_err();
    assert_eq!(
        bad_role.problems()[0].to_string(),
        r#"tiers.leaf.role: "edge" is not a role (use "leaf" or "cluster")"#
    );
}

#[test]
fn unknown_tiers_name_the_policy() {
    assert_eq!(
        problems(&policy("p", "hubb", "s3", "copy", "")),
        [r#"policy[0].from: policy "p": no tier named "hubb" (tiers: hub, hub2, leaf, s3)"#]
    );
}

#[test]
fn expire_from_one_tier_or_all() {
    let expire = |from: &str, after: &str, extra: &str| {
        format!(
            "[[policy]]\nname = \"gone\"\nbuckets = [\"*\"]\nfrom = \"{from}\"\naction = \
             \"expire\"\nafter = \"{after}\"\n{extra}\n"
        )
    };
    let config = parse(&expire("hub", "7d", "")).unwrap();
    let p = &config.policies[0];
    assert_eq!(p.action, Action::Expire);
    assert_eq!(p.to, "");
    assert_eq!(p.after, Duration::from_secs(7 * 86_400));
    assert_eq!(config.route(p), crate::Route::Expire);
    assert!(p.acts_on("hub") && !p.acts_on("leaf"));
    let all = parse(&expire("*", "1y", "")).unwrap();
    assert!(all.policies[0].acts_on("leaf") && all.policies[0].acts_on("s3"));

    for from in ["s3", "*"] {
        assert_eq!(
            problems(&expire(from, "30d", "")),
            [
                r#"policy[0].after: policy "gone" would delete from the s3 tier s3 after "30d", before the 90-day minimum storage (Wasabi bills 90 days anyway): use at least "90d", or add force = true"#
            ],
            "{from}"
        );
        assert!(parse(&expire(from, "30d", "force = true")).is_ok());
        assert!(parse(&expire(from, "90d", "")).is_ok());
    }
    assert_eq!(
        problems(&expire("hub", "1d", "to = \"s3\"")),
        [
            "policy[0].to: an expire policy deletes from `from` (a tier, or \"*\" for every \
             tier) and has no `to`"
        ]
    );
    assert_eq!(
        problems(&policy("p", "hub", "s3", "copy", "force = true")),
        ["policy[0].force: only an expire policy takes `force`"]
    );
    assert_eq!(
        problems(
            "[[policy]]\nname = \"p\"\nbuckets = [\"*\"]\nfrom = \"hub\"\naction = \"move\"\n\
             after = \"1h\"\n"
        ),
        ["policy[0].to: missing: a copy or move policy needs a `to` tier"]
    );
}

#[test]
fn idle_and_the_access_section_parse_and_are_checked() {
    let config = parse(&format!(
        "{}\n[access]\ninterval = \"10m\"\nbucket = \"reads\"\n",
        policy("p", "hub", "s3", "move", "idle = \"30d\"")
    ))
    .unwrap();
    let p = &config.policies[0];
    assert_eq!(p.conditions.idle, Some(Duration::from_secs(30 * 86_400)));
    assert!(p.conditions.needs_access() && !p.conditions.needs_attributes());
    assert_eq!(config.access.interval, Duration::from_secs(600));
    assert_eq!(config.access.bucket, "reads");
    let defaults = parse(&policy("p", "hub", "s3", "move", "")).unwrap();
    assert_eq!(defaults.access.interval, Duration::from_secs(3_600));
    assert_eq!(defaults.access.bucket, "cim_access");
    assert!(!defaults.policies[0].conditions.needs_access());

    let bad = problems(&format!(
        "{}{}\n[access]\ninterval = \"0s\"\nbucket = \"a.b\"\n",
        policy("p", "hub", "s3", "move", "idle = \"soon\""),
        policy("q", "hub", "s3", "copy", "idle = \"0s\""),
    ));
    assert_eq!(bad.len(), 4, "{bad:?}");
    assert!(bad[0].starts_with("policy[0].idle: \"soon\" is not a duration"));
    assert!(bad[1].starts_with("policy[1].idle: must be longer than 0s"));
    assert!(bad.iter().any(|p| p.starts_with("access.interval:")));
    assert!(bad.iter().any(|p| p.starts_with("access.bucket:")));
}
