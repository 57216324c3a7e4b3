//! The NixOS module's contract (issue 6): evaluated offline with nixpkgs' `lib` and stand-ins
//! for the NixOS options it sets (`nixos/tests/stubs.nix`), the examples render configurations
//! that `cim-storage check-config` accepts, each role and container receives exactly its own
//! secrets, a broken policy fails evaluation naming the policy, the module's duration type and
//! the Rust parser agree on one list of examples, and `docs/example.toml` goes through the
//! module options and comes back as the same configuration.
//!
//! Needs `nix-instantiate` (Debian's `nix-bin`; `scripts/install-tools.sh` installs it) and
//! nixpkgs' `lib/`: `$NIXPKGS_LIB`, else `../shared/nixpkgs-lib/lib` beside the checkout, else
//! `<nixpkgs/lib>` from `NIX_PATH`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cim_tests::cim_bin;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Nix expression that imports nixpkgs' lib, or a panic saying exactly what is missing.
fn nixpkgs_lib() -> String {
    if let Ok(dir) = std::env::var("NIXPKGS_LIB") {
        return format!("import {dir}");
    }
    let shared = repo().join("../shared/nixpkgs-lib/lib");
    if shared.join("default.nix").exists() {
        return format!("import {}", shared.canonicalize().unwrap().display());
    }
    let from_nix_path = Command::new("nix-instantiate")
        .args(["--eval", "-E", "<nixpkgs/lib>"])
        .output();
    if from_nix_path.is_ok_and(|o| o.status.success()) {
        return "import <nixpkgs/lib>".to_string();
    }
    panic!(
        "nixpkgs' lib/ not found: set NIXPKGS_LIB to a nixpkgs lib/ directory (one with \
         default.nix), or put it at {}, or add nixpkgs to NIX_PATH",
        shared.display()
    );
}

/// `nix-instantiate --eval --strict --json <file> --arg lib … <args>`: Ok(JSON) or Err(stderr).
fn nix_eval(file: &str, args: &[(&str, &str)]) -> Result<Value, String> {
    let mut command = Command::new("nix-instantiate");
    command
        .current_dir(repo())
        .args(["--eval", "--strict", "--json", file])
        .args(["--arg", "lib", &nixpkgs_lib()]);
    for (name, value) in args {
        command.args(["--arg", name, value]);
    }
    let out = command.output().unwrap_or_else(|e| {
        panic!("cannot run nix-instantiate ({e}): install Debian's nix-bin (scripts/install-tools.sh does)")
    });
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn contract(example: &str, extra: Option<&str>) -> Result<Value, String> {
    let example = format!("./nixos/examples/{example}.nix");
    let mut args = vec![("example", example.as_str())];
    if let Some(extra) = extra {
        args.push(("extra", extra));
    }
    nix_eval("nixos/tests/contract.nix", &args)
}

/// Runs `cim-storage check-config` on `json`, written as `<dir>/<name>.json`.
fn check_config(dir: &Path, name: &str, json: &str) {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, json).unwrap();
    let out = Command::new(cim_bin("cim-storage"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cim-storage check-config refused the {name} configuration the module rendered:\n{}{}\n{json}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strings(value: &Value) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn examples_render_configurations_cim_accepts_each_role_with_only_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let mut roles_seen = Vec::new();
    for example in ["hub", "leaf"] {
        let host = contract(example, None).unwrap_or_else(|e| panic!("{example}.nix: {e}"));
        assert_eq!(
            host["failedAssertions"],
            serde_json::json!([]),
            "{example}.nix"
        );
        let rendered = host["renderedConfigs"].as_object().unwrap();
        for (role, json) in rendered {
            check_config(
                dir.path(),
                &format!("{example}-{role}"),
                json.as_str().unwrap(),
            );
        }
        let secrets = host["roleSecrets"].as_object().unwrap();
        for (role, given) in secrets {
            roles_seen.push(role.clone());
            let config: Value = serde_json::from_str(rendered[role].as_str().unwrap()).unwrap();
            let s3_credentials = config["tiers"]["wasabi"].get("credentials_file");
            if role == "upload" {
                // The S3 credentials reach the upload role, as a systemd credential.
                assert_eq!(
                    given.get("tier-wasabi").and_then(Value::as_str),
                    Some("/run/secrets/wasabi-credentials")
                );
                assert_eq!(
                    s3_credentials.and_then(Value::as_str),
                    Some("/run/credentials/cim-upload.service/tier-wasabi")
                );
            } else {
                assert!(
                    given.get("tier-wasabi").is_none(),
                    "{role} got the S3 credentials: {given}"
                );
                assert!(
                    s3_credentials.is_none(),
                    "{role}'s configuration names the S3 credentials"
                );
            }
            assert_eq!(
                given.get("nats").and_then(Value::as_str),
                Some(format!("/run/secrets/cim-{role}.creds").as_str()),
                "{role}'s own NATS credentials"
            );
            // Its container: only its own role, only its own secrets, bind-mounted read-only.
            let container = &host["containers"][format!("cim-{role}")];
            let services: Vec<&String> =
                container["services"].as_object().unwrap().keys().collect();
            if role == "upload" {
                // Garbage collection runs beside the upload role, daily, with its secrets (its
                // configuration, rendered["gc"], was checked above).
                assert_eq!(services, ["cim-gc", "cim-upload"], "{example}.nix");
                assert_eq!(container["timers"]["cim-gc"]["OnCalendar"], "daily");
                let gc = &container["services"]["cim-gc"];
                assert!(
                    gc["execStart"].as_str().unwrap().contains("cim-gateway gc"),
                    "{gc}"
                );
                assert_eq!(
                    gc["loadCredential"],
                    container["services"]["cim-upload"]["loadCredential"]
                );
                assert!(rendered["gc"]
                    .as_str()
                    .unwrap()
                    .contains("cim-gc.service/tier-wasabi"));
            } else {
                assert_eq!(services, [&format!("cim-{role}")], "{example}.nix");
            }
            let mounted: BTreeMap<String, Value> = container["bindMounts"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let hosts: Vec<String> = {
                let mut h: Vec<String> = mounted
                    .values()
                    .map(|m| m["hostPath"].as_str().unwrap().to_string())
                    .collect();
                h.sort();
                h
            };
            assert_eq!(
                hosts,
                strings(given),
                "{role}'s container mounts exactly its secrets"
            );
            assert!(mounted.values().all(|m| m["isReadOnly"] == true));
            let unit = &container["services"][format!("cim-{role}")];
            assert_eq!(unit["dynamicUser"], true);
            assert_eq!(
                host["hostServices"],
                serde_json::json!({}),
                "roles run in containers"
            );
        }
        assert_eq!(
            host["packages"],
            serde_json::json!(["cim-storage", "cim-gateway"]),
            "operator wrappers on the host"
        );
    }
    roles_seen.sort();
    assert_eq!(roles_seen, ["manager", "mirror", "upload"]);

    // NATS on the hosts: the hub clusters and listens for leaves; the leaf denies $O.> both ways.
    let hub = contract("hub", None).unwrap();
    let leaf = contract("leaf", None).unwrap();
    assert_eq!(hub["nats"]["settings"]["jetstream"]["domain"], "hub");
    assert_eq!(
        hub["nats"]["settings"]["cluster"]["routes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(hub["nats"]["settings"]["leafnodes"]["listen"].is_string());
    let remote = &leaf["nats"]["settings"]["leafnodes"]["remotes"][0];
    assert_eq!(remote["deny_imports"], serde_json::json!(["$O.>"]));
    assert_eq!(remote["deny_exports"], serde_json::json!(["$O.>"]));
    assert_eq!(leaf["nats"]["settings"]["jetstream"]["domain"], "leaf");
    // The host's Prometheus scrapes every enabled role.
    let targets: Vec<String> = hub["scrapeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|j| j["targets"].as_array().unwrap().clone())
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(targets, ["127.0.0.1:9464", "127.0.0.1:9466"]);
}

#[test]
fn a_broken_policy_fails_evaluation_naming_the_policy() {
    let policy = |to: &str, after: &str| {
        format!(
            r#"{{ services.cim-storage.policies.typo = {{ buckets = [ "*" ]; from = "hub"; to = "{to}"; action = "move"; after = "{after}"; }}; }}"#
        )
    };
    // An unknown tier: an assertion naming the policy and the tier.
    let host = contract("hub", Some(&policy("wasabbi", "1d"))).unwrap();
    let failed = host["failedAssertions"].to_string();
    assert!(
        failed.contains("policy \\\"typo\\\"") && failed.contains("wasabbi"),
        "{failed}"
    );
    let host = contract("hub", Some(&policy("hub", "1d"))).unwrap();
    assert!(
        host["failedAssertions"].to_string().contains("from and to"),
        "{host}"
    );
    // A bad duration: evaluation fails, naming the option path of that policy.
    let error = contract("hub", Some(&policy("wasabi", "3x"))).unwrap_err();
    assert!(
        error.contains("services.cim-storage.policies.typo.after") && error.contains("3x"),
        "{error}"
    );
    // A secret given as a store path.
    let host = contract(
        "hub",
        Some(
            r#"{ lib, ... }: { services.cim-storage.tiers.wasabi.credentialsFile = lib.mkForce "/nix/store/abc-creds"; }"#,
        ),
    )
    .unwrap();
    let failed = host["failedAssertions"].to_string();
    assert!(
        failed.contains("tiers.wasabi.credentialsFile") && failed.contains("Nix store"),
        "{failed}"
    );
}

#[test]
fn the_module_and_the_rust_parser_accept_the_same_durations() {
    let mismatches = nix_eval("nixos/tests/durations.nix", &[]).unwrap();
    assert_eq!(
        mismatches,
        serde_json::json!({ "validRejected": [], "invalidAccepted": [] }),
        "the module's duration type disagrees with nixos/durations.json"
    );
    // The Rust side of the same list is tested in cim-policies; make sure it is not empty.
    let examples: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("nixos/durations.json")).unwrap(),
    )
    .unwrap();
    assert!(examples["valid"].as_array().unwrap().len() >= 5);
    assert!(examples["invalid"].as_array().unwrap().len() >= 5);
}

#[test]
fn docs_example_toml_through_the_module_is_the_same_configuration() {
    let rendered = nix_eval("nixos/tests/from-toml.nix", &[]).unwrap_or_else(|e| {
        panic!("docs/example.toml does not map onto the module's options (a key the module lacks?):\n{e}")
    });
    assert_eq!(rendered["failedAssertions"], serde_json::json!([]));
    let json = rendered["operator"].as_str().unwrap();
    let toml = std::fs::read_to_string(repo().join("docs/example.toml")).unwrap();
    let mut from_toml = cim_policies::Config::from_toml_str(&toml, "docs/example.toml").unwrap();
    let mut from_module = cim_policies::Config::from_json_str(json, "module.json")
        .unwrap_or_else(|e| panic!("{e}\n{json}"));
    // The module keys policies by name (so errors name them and modules can add to them), and
    // renders them in name order; their order carries no meaning.
    for config in [&mut from_toml, &mut from_module] {
        config.policies.sort_by(|a, b| a.name.cmp(&b.name));
    }
    assert_eq!(
        from_module, from_toml,
        "the module renders docs/example.toml differently"
    );
}

/// The VM test (nixos/tests/vm.nix) needs KVM and cannot run here; its nodes' use of the module
/// is evaluated and their configurations checked on every run, so it cannot drift silently.
#[test]
fn the_vm_tests_nodes_use_the_module_as_it_is() {
    let nodes = nix_eval("nixos/tests/vm-nodes.nix", &[])
        .unwrap_or_else(|e| panic!("nixos/tests/vm.nix no longer fits the module:\n{e}"));
    let dir = tempfile::tempdir().unwrap();
    for (name, node) in nodes.as_object().unwrap() {
        assert_eq!(node["failedAssertions"], serde_json::json!([]), "{name}");
        for (role, json) in node["renderedConfigs"].as_object().unwrap() {
            check_config(
                dir.path(),
                &format!("vm-{name}-{role}"),
                json.as_str().unwrap(),
            );
        }
    }
    let services = |node: &str| nodes[node]["services"].to_string();
    assert!(services("hub1").contains("cim-manager") && services("hub1").contains("cim-upload"));
    assert!(services("leaf").contains("cim-mirror"));
    assert!(!services("hub2").contains("cim-"), "{}", services("hub2"));
    assert_eq!(
        nodes["leaf"]["nats"]["leafnodes"]["remotes"][0]["deny_imports"],
        serde_json::json!(["$O.>"])
    );
}

#[test]
fn the_serve_role_runs_in_its_container_with_the_s3_credentials() {
    let host = contract(
        "hub",
        Some("{ services.cim-storage.roles.serve.enable = true; }"),
    )
    .unwrap();
    assert_eq!(host["failedAssertions"], serde_json::json!([]));
    let dir = tempfile::tempdir().unwrap();
    let rendered = host["renderedConfigs"]["serve"].as_str().unwrap();
    check_config(dir.path(), "hub-serve", rendered);
    // It restores from S3: it gets the S3 credentials, as the upload role does.
    let config: Value = serde_json::from_str(rendered).unwrap();
    assert_eq!(
        config["tiers"]["wasabi"]["credentials_file"],
        "/run/credentials/cim-serve.service/tier-wasabi"
    );
    assert_eq!(
        host["roleSecrets"]["serve"]["tier-wasabi"],
        "/run/secrets/wasabi-credentials"
    );
    let unit = &host["containers"]["cim-serve"]["services"]["cim-serve"];
    let exec = unit["execStart"].as_str().unwrap();
    assert!(exec.contains("cim-gateway serve"), "{unit}");
    assert_eq!(config["metrics"]["listen"], "127.0.0.1:9467");
}
