//! Errors for people (issue 10, item 7): a wrong S3 key, an unreachable endpoint and missing
//! credentials each end `cim-gateway` with one line on stderr that names the tier (its bucket
//! and endpoint) and the cause, with a hint; the SDK's `Debug` dump appears only under
//! `RUST_LOG=debug`. Credentials come only from the tier's `credentials_file` or the `AWS_*`
//! environment (never `~/.aws` or instance metadata for a non-AWS flavor).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use cim_tests::{cim_bin, free_port, Topology};

/// `cim-gateway list --config <config>` with no `AWS_*` credentials in its environment, and
/// `RUST_LOG` as given (unset for `None`).
fn list(config: &Path, rust_log: Option<&str>, env_keys: Option<(&str, &str)>) -> Output {
    let mut command = Command::new(cim_bin("cim-gateway"));
    command
        .args(["list", "--config", config.to_str().unwrap()])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("RUST_LOG")
        // A home without ~/.aws: were the default chain used, it would find nothing there.
        .env("HOME", config.parent().unwrap());
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    if let Some((id, secret)) = env_keys {
        command
            .env("AWS_ACCESS_KEY_ID", id)
            .env("AWS_SECRET_ACCESS_KEY", secret);
    }
    command.output().unwrap()
}

/// The one non-empty stderr line of a failed run, after checking there is exactly one and no
/// SDK dump in it.
fn one_error_line(out: &Output) -> String {
    let described = common::describe(out);
    assert!(!out.status.success(), "{described}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {described}");
    for dump in [
        "DispatchFailure",
        "ConnectorError",
        "ServiceError {",
        "Some(",
    ] {
        assert!(
            !lines[0].contains(dump),
            "an SDK dump ({dump}): {described}"
        );
    }
    assert!(lines[0].starts_with("error: "), "{described}");
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_misconfigurations_end_in_one_line_naming_the_tier_and_the_cause() {
    let topology = Topology::start().await.unwrap();
    let dir = topology.dir().join("errors");
    std::fs::create_dir_all(&dir).unwrap();
    let endpoint = topology.s3.endpoint.clone();
    let write = |name: &str, toml: String| {
        let path = dir.join(name);
        std::fs::write(&path, toml).unwrap();
        path
    };

    // A key the service does not know.
    let wrong = dir.join("wrong-credentials");
    std::fs::write(
        &wrong,
        "[default]\naws_access_key_id = GK0123456789abcdef01234567\n\
         aws_secret_access_key = 0000000000000000000000000000000000000000000000000000000000000000\n",
    )
    .unwrap();
    let config = write(
        "wrong-key.toml",
        topology.config_toml(&format!(
            "[tiers.s3]\ncredentials_file = \"{}\"\n",
            wrong.display()
        )),
    );
    let line = one_error_line(&list(&config, None, None));
    assert!(
        line.contains("\"s3\"") && line.contains(&endpoint),
        "{line}"
    );
    assert!(line.contains("HTTP 403"), "{line}");
    assert!(
        line.contains("hint: check the tier's `credentials_file`"),
        "{line}"
    );
    // The same key from the environment instead of a file: the same cause.
    let no_file: String = topology
        .config_toml("")
        .lines()
        .filter(|l| !l.starts_with("credentials_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let env_config = write("env.toml", no_file);
    let line = one_error_line(&list(
        &env_config,
        None,
        Some(("GK0123456789abcdef01234567", &"0".repeat(64))),
    ));
    assert!(line.contains("HTTP 403"), "{line}");

    // No credentials anywhere: refused before any request, naming both sources.
    let line = one_error_line(&list(&env_config, None, None));
    assert!(line.contains("no credentials"), "{line}");
    assert!(
        line.contains(&endpoint) && line.contains("credentials_file"),
        "{line}"
    );
    assert!(line.contains("AWS_ACCESS_KEY_ID"), "{line}");

    // An endpoint where nothing listens (a free loopback port).
    let closed = format!("http://127.0.0.1:{}", free_port());
    let config = write(
        "unreachable.toml",
        topology.config_toml(&format!("[tiers.s3]\nendpoint = \"{closed}\"\n")),
    );
    let out = list(&config, None, None);
    let line = one_error_line(&out);
    assert!(line.contains(&closed), "{line}");
    assert!(line.contains("cannot reach the endpoint"), "{line}");
    assert!(line.contains("Connection refused"), "{line}");
    // The cause is said once, not once per layer of the error chain.
    assert_eq!(line.matches("Connection refused").count(), 1, "{line}");

    // The whole chain, SDK dump included, is there for who asks for it.
    let out = list(&config, Some("debug"), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("DispatchFailure"), "{stderr}");
}
