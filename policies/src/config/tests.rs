//! Parsing and validation of whole configuration files.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::{
    defaults, CatalogConfig, Config, JetStreamRole, ManagerConfig, MetricsConfig, RestoreConfig,
    S3Flavor, UploadConfig, WorkConfig,
};
use crate::error::{ConfigError, Problem};
use crate::policy::{Action, Route};

const MINIMAL: &str = r#"
[nats]
url = "nats://127.0.0.1:4222"

[tiers.hub]
kind = "jetstream"
domain = "hub"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "test.toml")
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn paths(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.path.as_str()).collect()
}

#[test]
fn example_parses_and_validates() {
    assert_eq!(
        Config::example(),
        include_str!("../../../docs/example.toml")
    );
    let config = parse(Config::example()).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
    assert_eq!(config.nats.replicas, defaults::NATS_REPLICAS);
    assert_eq!(config.tiers.len(), 3);
    let leaf = config.tier("leaf").unwrap().as_jetstream().unwrap();
    assert_eq!(leaf.url.as_deref(), Some("nats://127.0.0.1:4333"));
    assert_eq!(leaf.domain, "leaf");
    assert_eq!(leaf.replicas, 1);
    assert_eq!(leaf.role, JetStreamRole::Leaf);
    let hub = config.tier("hub").unwrap().as_jetstream().unwrap();
    assert_eq!(hub.url, None);
    assert_eq!(hub.effective_url(&config.nats), "nats://127.0.0.1:4222");
    assert_eq!(hub.replicas, 3);
    let wasabi = config.tier("wasabi").unwrap();
    assert_eq!(wasabi.kind_name(), "s3");
    let wasabi = wasabi.as_s3().unwrap();
    assert_eq!(wasabi.flavor, S3Flavor::Wasabi);
    assert_eq!(wasabi.prefix, "prod/");
    assert_eq!(wasabi.bucket, "cim-archive");
    assert!(wasabi.force_path_style);
    assert_eq!(wasabi.retention, Duration::from_secs(90 * 86_400));
    assert_eq!(wasabi.credentials_file, None);

    assert_eq!(config.policies.len(), 2);
    let edge = &config.policies[0];
    assert_eq!(edge.name, "edge-to-cluster");
    assert_eq!(edge.action, Action::Move);
    assert_eq!(edge.after, Duration::from_secs(600));
    assert_eq!(config.route(edge), Route::LeafToCluster);
    let archive = &config.policies[1];
    assert_eq!(archive.after, Duration::from_secs(30 * 86_400));
    assert_eq!(config.route(archive), Route::ClusterToS3);
    let on = |r| {
        config
            .policies_on(r)
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(on(Route::LeafToCluster), ["edge-to-cluster"]);
    assert_eq!(on(Route::ClusterToS3), ["cluster-to-wasabi"]);

    // The optional sections in the example show exactly the defaults.
    assert_eq!(config.metrics, MetricsConfig::default());
    assert_eq!(config.manager, ManagerConfig::default());
    assert_eq!(config.work, WorkConfig::default());
    assert_eq!(config.upload, UploadConfig::default());
    assert_eq!(config.restore, RestoreConfig::default());
    assert_eq!(config.catalog, CatalogConfig::default());
}

#[test]
fn minimal_config_gets_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.nats.replicas, 3);
    assert_eq!(config.nats.credentials_file, None);
    assert!(config.policies.is_empty());
    assert_eq!(config.metrics.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(config.metrics.pushgateway, None);
    assert_eq!(config.manager.interval, Duration::from_secs(1));
    assert_eq!(config.work.stream, "CIM_WORK");
    assert_eq!(config.work.ack_wait, Duration::from_secs(60));
    assert_eq!(config.work.max_deliver, 20);
    assert_eq!(config.work.concurrency, 8);
    assert_eq!(config.upload.part_size, 16 * 1024 * 1024);
    assert_eq!(config.upload.multipart_threshold, 16 * 1024 * 1024);
    assert_eq!(config.upload.zstd_level, 3);
    assert_eq!(config.restore.staging_dir, None);
    assert_eq!(config.catalog.bucket, "cim_catalog");
    let hub = config.tier("hub").unwrap().as_jetstream().unwrap();
    assert_eq!(hub.replicas, 1);
}

#[test]
fn s3_defaults_and_prefix_normalisation() {
    let text = format!(
        "{MINIMAL}
[tiers.aws]
kind = \"s3\"
region = \"us-east-1\"
bucket = \"my.bucket-1\"
flavor = \"aws\"
prefix = \"a/b\"

[tiers.garage]
kind = \"s3\"
endpoint = \"http://127.0.0.1:3900\"
region = \"garage\"
bucket = \"cim\"
credentials_file = \"/run/secrets/garage\"
retention = \"2h\"
"
    );
    let config = parse(&text).unwrap();
    let aws = config.tier("aws").unwrap().as_s3().unwrap();
    assert_eq!(aws.endpoint, None);
    assert_eq!(aws.prefix, "a/b/");
    assert!(!aws.force_path_style);
    let garage = config.tier("garage").unwrap().as_s3().unwrap();
    assert_eq!(garage.flavor, S3Flavor::Other);
    assert_eq!(garage.prefix, "");
    assert!(garage.force_path_style);
    assert_eq!(garage.retention, Duration::from_secs(7200));
    assert_eq!(aws.retention, Duration::from_secs(90 * 86_400), "default");
    assert_eq!(
        garage.credentials_file.as_deref(),
        Some(std::path::Path::new("/run/secrets/garage"))
    );
}

const THREE_MISTAKES: &str = r#"
[nats]
url = "nats://127.0.0.1:4222"

[tiers.leaf]
kind = "jetstream"
domain = "leaf"

[tiers.hub]
kind = "jetstream"
domain = "hub"

[tiers.wasabi]
kind = "s3"
region = "eu-central-2"
bucket = "cim-archive"
flavor = "wasabi"

[[policy]]
name = "edge-to-cluster"
buckets = ["*"]
from = "leaf"
to = "hubb"
action = "move"
after = "10m"

[[policy]]
name = "cluster-to-wasabi"
buckets = ["*"]
from = "hub"
to = "wasabi"
action = "mvoe"
after = "3x"
"#;

#[test]
fn three_mistakes_three_problems() {
    let text = THREE_MISTAKES;
    let err = parse(text).unwrap_err();
    let problems = err.problems();
    assert_eq!(
        paths(problems),
        ["policy[0].to", "policy[1].action", "policy[1].after"]
    );
    assert_eq!(
        err.to_string(),
        r#"test.toml: 3 problems
  policy[0].to: policy "edge-to-cluster": no tier named "hubb" (tiers: hub, leaf, wasabi)
  policy[1].action: "mvoe" is not an action (use "copy", "move", "expire")
  policy[1].after: "3x" is not a duration (examples: "10m", "30d", "0s")"#
    );
}

#[test]
fn one_problem_is_singular() {
    let err =
        parse(&MINIMAL.replace("domain = \"hub\"", "domain = \"hub\"\nreplicas = 7")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "test.toml: 1 problem\n  tiers.hub.replicas: 7 is out of range 1..=5"
    );
}

#[test]
fn unknown_field_is_a_syntax_error_with_line() {
    let text = "[nats]\nurl = \"nats://127.0.0.1:4222\"\nreplicaz = 3\n\n[tiers.hub]\nkind = \"jetstream\"\ndomain = \"hub\"\n";
    let err = parse(text).unwrap_err();
    let ConfigError::Syntax {
        source_name,
        message,
    } = &err
    else {
        panic!("expected Syntax, got {err:?}");
    };
    assert_eq!(source_name, "test.toml");
    assert!(message.contains("replicaz"), "{message}");
    assert!(message.contains("line 3"), "{message}");
    assert!(err.to_string().starts_with("test.toml: "), "{err}");
    assert!(err.problems().is_empty());

    // Unknown keys inside tiers and policies are syntax errors too.
    let text = format!("{MINIMAL}bukket = \"x\"\n");
    let err = parse(&text).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("bukket"), "{err}");
}

#[test]
fn syntax_errors() {
    // Missing required section.
    let err = parse("[nats]\nurl = \"nats://x:4222\"\n").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("tiers"), "{err}");
    // Wrong type.
    let err = parse(&MINIMAL.replace("domain = \"hub\"", "domain = \"hub\"\nreplicas = \"3\""))
        .unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    // Not TOML.
    let err = parse("[nats\n").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
}

const EVERY_PROBLEM: &str = r#"
[nats]
url = "http://127.0.0.1:4222"
credentials_file = ""
replicas = 0

[tiers."bad name"]
kind = "jetstream"
domain = "x"

[tiers.leaf]
kind = "jetstream"
url = "nats://a:1, localhost:2"
domain = "le.af"
replicas = 6
bucket = "oops"

[tiers.tape]
kind = "tape"

[tiers.s3]
kind = "s3"
endpoint = "s3.example.com"
region = ""
bucket = "Bad_Bucket"
prefix = "/abs"
flavor = "ceph"
domain = "d"

[tiers.s3b]
kind = "s3"

[[policy]]
name = ""
buckets = []
from = "s3"
to = "leaf"
action = "copy"
after = "0s"

[[policy]]
name = "dup"
buckets = ["ok", "no.dots", "[open"]
from = "leaf"
to = "leaf"
action = "Move"
after = "10"

[[policy]]
name = "dup"
buckets = ["*"]
from = "nowhere"
to = "tape"
action = "copy"
after = "1d"

[metrics]
listen = "localhost:9464"
pushgateway = "pushgateway:9091"

[manager]
interval = "0s"

[work]
stream = "CIM.WORK"
ack_wait = "soon"
max_deliver = 0
concurrency = 0

[upload]
part_size_mib = 4
multipart_threshold_mib = 0
zstd_level = 20

[restore]
staging_dir = ""
concurrency = 0

[catalog]
bucket = "cim catalog"
"#;

#[test]
fn every_problem_is_reported() {
    let text = EVERY_PROBLEM;
    let problems = problems(text);
    let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let rendered = rendered.join("\n");
    assert_eq!(
        paths(&problems),
        [
            "nats.url",
            "nats.credentials_file",
            "nats.replicas",
            "tiers.\"bad name\"",
            "tiers.leaf.bucket",
            "tiers.leaf.url",
            "tiers.leaf.domain",
            "tiers.leaf.replicas",
            "tiers.s3.domain",
            "tiers.s3.endpoint",
            "tiers.s3.region",
            "tiers.s3.bucket",
            "tiers.s3.prefix",
            "tiers.s3.flavor",
            "tiers.s3b.region",
            "tiers.s3b.bucket",
            "tiers.s3b.endpoint",
            "tiers.tape.kind",
            "policy[0].name",
            "policy[0].buckets",
            "policy[0].from",
            "policy[1].buckets[1]",
            "policy[1].buckets[2]",
            "policy[1].to",
            "policy[1].action",
            "policy[1].after",
            "policy[2].name",
            "policy[2].from",
            "metrics.listen",
            "metrics.pushgateway",
            "manager.interval",
            "work.stream",
            "work.ack_wait",
            "work.max_deliver",
            "work.concurrency",
            "upload.part_size_mib",
            "upload.multipart_threshold_mib",
            "upload.zstd_level",
            "restore.staging_dir",
            "restore.concurrency",
            "catalog.bucket",
        ],
        "{rendered}"
    );
    for expected in [
        r#"policy[0].from: tier "s3" is an s3 tier; data leaves S3 only through `cim-gateway restore`"#,
        r#"policy[2].name: duplicate policy name "dup" (also used by policy[1])"#,
        r#"policy[2].from: policy "dup": no tier named "nowhere" (tiers: bad name, leaf, s3, s3b, tape)"#,
        r#"tiers.tape.kind: unknown tier kind "tape" (kinds: jetstream, s3)"#,
        r#"tiers.leaf.url: "localhost:2" is not a NATS server URL"#,
        r#"policy[1].after: "10" is not a duration (examples: "10m", "30d", "0s")"#,
        r#"manager.interval: "0s" must be greater than zero"#,
        r#"upload.part_size_mib: 4 is out of range 5..=5120"#,
        r#"work.max_deliver: 0 is invalid"#,
    ] {
        assert!(
            rendered.contains(expected),
            "missing {expected:?} in\n{rendered}"
        );
    }
}

#[test]
fn pushgateway_urls() {
    let with = |url: &str| format!("{MINIMAL}\n[metrics]\npushgateway = {url:?}\n");
    for (url, kept) in [
        ("http://127.0.0.1:9091", "http://127.0.0.1:9091"),
        (
            "http://pushgateway.example:9091/",
            "http://pushgateway.example:9091",
        ),
        ("http://[::1]:9091/prefix/", "http://[::1]:9091/prefix"),
    ] {
        let config = parse(&with(url)).unwrap();
        assert_eq!(config.metrics.pushgateway.as_deref(), Some(kept), "{url}");
    }
    for (url, why) in [
        ("https://pg:9091", "https is not supported"),
        ("pg:9091", "must start with http://"),
        ("http://", "has no host"),
        ("http://:9091", "has no host"),
        ("http://pg:9091/?x=1", "must not contain a query"),
        ("http://pg:9091/a b", "must not contain a query"),
    ] {
        let found = problems(&with(url));
        assert_eq!(paths(&found), ["metrics.pushgateway"], "{url}: {found:?}");
        assert!(found[0].to_string().contains(why), "{url}: {}", found[0]);
    }
}

#[test]
fn policy_route_rules() {
    let base = r#"
[nats]
url = "nats://hub:4222,tls://hub2:4222"

[tiers.leaf]
kind = "jetstream"
domain = "leaf"
url = "ws://leaf:8080"

[tiers.hub]
kind = "jetstream"
domain = "hub"

[tiers.s3]
kind = "s3"
region = "r"
bucket = "bkt"
flavor = "aws"
"#;
    let policy = |from: &str, to: &str| {
        format!(
            "{base}\n[[policy]]\nname = \"p\"\nbuckets = [\"*\"]\nfrom = \"{from}\"\nto = \"{to}\"\naction = \"copy\"\nafter = \"0s\"\n"
        )
    };
    let config = parse(&policy("leaf", "hub")).unwrap();
    assert_eq!(config.route(&config.policies[0]), Route::LeafToCluster);
    assert_eq!(config.policies[0].after, Duration::ZERO);
    let config = parse(&policy("leaf", "s3")).unwrap();
    assert_eq!(config.route(&config.policies[0]), Route::ClusterToS3);
    assert_eq!(config.policies_on(Route::LeafToCluster).count(), 0);

    assert_eq!(paths(&problems(&policy("s3", "hub"))), ["policy[0].from"]);
    assert_eq!(paths(&problems(&policy("hub", "hub"))), ["policy[0].to"]);
    assert_eq!(
        paths(&problems(&policy("x", "y"))),
        ["policy[0].from", "policy[0].to"]
    );
}

#[test]
fn s3_endpoint_required_unless_aws_or_wasabi() {
    let tier = |extra: &str| {
        format!("{MINIMAL}\n[tiers.s3]\nkind = \"s3\"\nregion = \"r\"\nbucket = \"bkt\"\n{extra}")
    };
    assert!(parse(&tier("flavor = \"aws\"")).is_ok());
    assert!(parse(&tier("flavor = \"wasabi\"")).is_ok());
    assert!(parse(&tier(
        "flavor = \"garage\"\nendpoint = \"http://garage:3900\""
    ))
    .is_ok());
    for flavor in ["", "flavor = \"other\"", "flavor = \"minio\""] {
        let problems = problems(&tier(flavor));
        assert_eq!(paths(&problems), ["tiers.s3.endpoint"], "{flavor}");
    }
}

#[test]
fn no_tiers() {
    let problems = problems("[nats]\nurl = \"nats://x:4222\"\n[tiers]\n");
    assert_eq!(paths(&problems), ["tiers"]);
}

#[test]
fn max_deliver_unlimited() {
    let config = parse(&format!("{MINIMAL}\n[work]\nmax_deliver = -1\n")).unwrap();
    assert_eq!(config.work.max_deliver, -1);
}

#[test]
fn a_retention_that_is_not_a_duration_is_named() {
    let text = r#"
[nats]
url = "nats://127.0.0.1:4222"

[tiers.wasabi]
kind = "s3"
region = "eu-central-2"
bucket = "cim-archive"
flavor = "wasabi"
retention = "ninety days"
"#;
    let err = parse(text).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"test.toml: 1 problem
  tiers.wasabi.retention: "ninety days" is not a duration (examples: "90d", "180d", "1y")"#
    );
}

// ---------------------------------------------------------------------------
// JSON files.

/// `toml_text` as JSON: the same document, through `toml::Value`.
fn to_json(toml_text: &str) -> String {
    let value: toml::Value = toml::from_str(toml_text).unwrap();
    serde_json::to_string_pretty(&value).unwrap()
}

fn parse_json(text: &str) -> Result<Config, ConfigError> {
    Config::from_json_str(text, "test.json")
}

#[test]
fn example_as_json_is_the_same_config() {
    let json = to_json(Config::example());
    // Numbers and booleans stay numbers and booleans.
    assert!(json.contains(r#""replicas": 3"#), "{json}");
    assert!(json.contains(r#""force_path_style": true"#), "{json}");
    assert!(json.contains(r#""max_deliver": 20"#), "{json}");
    let from_json = parse_json(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_json, parse(Config::example()).unwrap());
}

#[test]
fn json_problems_are_the_toml_problems() {
    for toml_text in [THREE_MISTAKES, EVERY_PROBLEM] {
        let from_toml = parse(toml_text).unwrap_err();
        let from_json = parse_json(&to_json(toml_text)).unwrap_err();
        assert!(
            matches!(from_json, ConfigError::Invalid { .. }),
            "{from_json}"
        );
        assert_eq!(from_json.problems(), from_toml.problems());
    }
    assert_eq!(
        parse_json(&to_json(THREE_MISTAKES))
            .unwrap_err()
            .to_string(),
        r#"test.json: 3 problems
  policy[0].to: policy "edge-to-cluster": no tier named "hubb" (tiers: hub, leaf, wasabi)
  policy[1].action: "mvoe" is not an action (use "copy", "move", "expire")
  policy[1].after: "3x" is not a duration (examples: "10m", "30d", "0s")"#
    );
}

#[test]
fn a_small_json_file() {
    let text = r#"{
  "nats": { "url": "nats://127.0.0.1:4222", "replicas": 1 },
  "tiers": {
    "hub": { "kind": "jetstream", "domain": "hub" },
    "garage": {
      "kind": "s3",
      "endpoint": "http://127.0.0.1:3900",
      "region": "garage",
      "bucket": "cim",
      "flavor": "garage",
      "force_path_style": false,
      "prefix": null
    }
  },
  "policy": [
    { "name": "archive", "buckets": ["*"], "from": "hub", "to": "garage",
      "action": "move", "after": "30d" }
  ],
  "work": { "max_deliver": -1 }
}"#;
    let config = parse_json(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.nats.replicas, 1);
    let garage = config.tier("garage").unwrap().as_s3().unwrap();
    assert!(!garage.force_path_style);
    // null is the same as leaving an optional key out.
    assert_eq!(garage.prefix, "");
    assert_eq!(config.policies[0].after, Duration::from_secs(30 * 86_400));
    assert_eq!(config.work.max_deliver, -1);
}

#[test]
fn json_syntax_errors_have_line_and_column() {
    // Unknown key: a syntax error, like in TOML.
    let text = "{\n  \"nats\": {\n    \"url\": \"nats://127.0.0.1:4222\",\n    \"replicaz\": 3\n  },\n  \"tiers\": {}\n}\n";
    let err = parse_json(text).unwrap_err();
    let ConfigError::Syntax {
        source_name,
        message,
    } = &err
    else {
        panic!("expected Syntax, got {err:?}");
    };
    assert_eq!(source_name, "test.json");
    assert!(
        message.starts_with("JSON parse error at line 4, column 14\n"),
        "{message}"
    );
    assert!(message.contains("4 |     \"replicaz\": 3\n"), "{message}");
    assert!(message.contains("unknown field `replicaz`"), "{message}");
    assert!(err
        .to_string()
        .starts_with("test.json: JSON parse error at line 4"));
    assert!(err.problems().is_empty());

    // Not JSON.
    let err = parse_json("{\n  \"nats\": {\n    \"url\": \"nats://x:4222\"\n  \"tiers\": {}\n}\n")
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("test.json: JSON parse error at line 4, column 3"),
        "{err}"
    );
    // Wrong type, and a missing section.
    let err = parse_json(r#"{"nats": {"url": "nats://x:4222", "replicas": "3"}, "tiers": {}}"#)
        .unwrap_err();
    assert!(err.to_string().contains("line 1, column 49"), "{err}");
    let err = parse_json(r#"{"nats": {"url": "nats://x:4222"}}"#).unwrap_err();
    assert!(err.to_string().contains("missing field `tiers`"), "{err}");
    // A number where TOML would have an integer must be one.
    let err = parse_json(
        &to_json(MINIMAL).replace(r#""domain": "hub""#, r#""domain": "hub", "replicas": 1.5"#),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
}

#[test]
fn json_duplicate_tier_is_a_syntax_error() {
    let text = r#"{"nats": {"url": "nats://x:4222"}, "tiers": {
        "hub": {"kind": "jetstream", "domain": "a"},
        "hub": {"kind": "jetstream", "domain": "b"}}}"#;
    let err = parse_json(text).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("duplicate key `hub`"), "{err}");
    assert!(err.to_string().contains("line 3"), "{err}");
    // A duplicate key inside a section, too.
    let err =
        parse_json(r#"{"nats": {"url": "nats://x:4222", "url": "nats://y:4222"}, "tiers": {}}"#)
            .unwrap_err();
    assert!(err.to_string().contains("duplicate field `url`"), "{err}");
}

#[test]
fn format_by_extension() {
    use super::Format;
    use std::path::Path;

    assert_eq!(
        Format::from_path(Path::new("/etc/cim/cim.toml")),
        Ok(Format::Toml)
    );
    assert_eq!(
        Format::from_path(Path::new("/etc/cim/manager.json")),
        Ok(Format::Json)
    );
    for name in [
        "/etc/cim/cim.conf",
        "/etc/cim/cim",
        "cim.TOML",
        "cim.json.bak",
        "toml",
    ] {
        let err = Format::from_path(Path::new(name)).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownFormat { .. }), "{err}");
        assert_eq!(err.source_name(), name);
        assert!(err.problems().is_empty());
        assert_eq!(
            err.to_string(),
            format!(
                "{name}: unknown configuration file type (the name must end in .toml or .json)"
            )
        );
    }
    assert_eq!(
        Config::from_str_in(Format::Json, &to_json(MINIMAL), "x.json").unwrap(),
        parse(MINIMAL).unwrap()
    );
}

// ---------------------------------------------------------------------------
// Durations: `nixos/durations.json` is the contract, shared with the NixOS
// module.

/// MINIMAL plus a leaf tier, an S3 tier and a policy; `{after}`,
/// `{retention}`, `{interval}` and `{ack_wait}` are TOML strings.
fn with_durations(after: &str, retention: &str, interval: &str, ack_wait: &str) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    format!(
        "{MINIMAL}
[tiers.wasabi]
kind = \"s3\"
region = \"eu-central-2\"
bucket = \"cim-archive\"
flavor = \"wasabi\"
retention = {}

[[policy]]
name = \"p\"
buckets = [\"*\"]
from = \"hub\"
to = \"wasabi\"
action = \"copy\"
after = {}

[manager]
interval = {}

[work]
ack_wait = {}
",
        quote(retention),
        quote(after),
        quote(interval),
        quote(ack_wait)
    )
}

#[test]
fn the_listed_durations_and_only_those_are_accepted() {
    let grammar = &*super::duration::GRAMMAR;
    assert!(!grammar.valid.is_empty() && !grammar.invalid.is_empty());
    for text in &grammar.valid {
        // The expression alone (all the Nix module checks) accepts it ...
        assert!(super::duration::PATTERN.is_match(text), "{text:?}");
        // ... and so does every duration key, with humantime's value.
        let expected = humantime::parse_duration(text).unwrap();
        let config = parse(&with_durations(text, text, "1s", "1s"))
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(config.policies[0].after, expected, "{text:?}");
        let wasabi = config.tier("wasabi").unwrap().as_s3().unwrap();
        assert_eq!(wasabi.retention, expected, "{text:?}");
        if !expected.is_zero() {
            let config = parse(&with_durations("0s", "1d", text, text)).unwrap();
            assert_eq!(config.manager.interval, expected, "{text:?}");
            assert_eq!(config.work.ack_wait, expected, "{text:?}");
        }
        // Through JSON too.
        let config = parse_json(&to_json(&with_durations(text, "1d", "1s", "1s"))).unwrap();
        assert_eq!(config.policies[0].after, expected, "{text:?}");
    }
    for text in &grammar.invalid {
        // The Nix module rejects it ...
        assert!(!super::duration::PATTERN.is_match(text), "{text:?}");
        // ... and so does every duration key, whatever humantime thinks.
        let problems = problems(&with_durations(text, text, text, text));
        let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                format!(
                    r#"tiers.wasabi.retention: {text:?} is not a duration (examples: "90d", "180d", "1y")"#
                ),
                format!(
                    r#"policy[0].after: {text:?} is not a duration (examples: "10m", "30d", "0s")"#
                ),
                format!(
                    r#"manager.interval: {text:?} is not a duration (examples: "10s", "1m", "500ms")"#
                ),
                format!(
                    r#"work.ack_wait: {text:?} is not a duration (examples: "10s", "1m", "500ms")"#
                ),
            ],
            "{text:?}"
        );
    }
}

#[test]
fn the_duration_list_has_the_required_examples() {
    let grammar = &*super::duration::GRAMMAR;
    for text in ["10m", "30d", "0s", "1h 30m", "1h30m", "90d", "1y", "500ms"] {
        assert!(grammar.valid.iter().any(|v| v == text), "{text:?}");
    }
    for text in [
        "",
        "3x",
        "10",
        "1.5h",
        "-1s",
        " 10m",
        "10m ",
        "10 m",
        "1M",
        "ten minutes",
    ] {
        assert!(grammar.invalid.iter().any(|v| v == text), "{text:?}");
    }
    // Some of them humantime alone would take: the expression is what keeps
    // Rust and Nix in step.
    for text in ["1.5h", "10 m", "1M", "0"] {
        assert!(humantime::parse_duration(text).is_ok(), "{text:?}");
    }
}
