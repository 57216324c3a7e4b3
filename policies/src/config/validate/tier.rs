//! `[tiers.<name>]`: the checks of one tier, by kind.

use super::Checker;
use crate::config::{
    defaults, raw, JetStreamRole, JetStreamTier, S3Flavor, S3Tier, S3Verify, Tier,
};
use crate::policy::is_simple_name;

const RETENTION_EXAMPLES: &str = r#""90d", "180d", "1y""#;
const TIER_KINDS: &str = "jetstream, s3";
const JETSTREAM_KEYS: &str = "kind, url, domain, replicas, credentials_file, role";
const S3_KEYS: &str = "kind, endpoint, region, bucket, prefix, credentials_file, flavor, \
                       force_path_style, retention, verify";

impl Checker {
    pub(super) fn tier(&mut self, name: &str, raw: raw::Tier) -> Option<Tier> {
        let base = format!("tiers.{}", toml_key(name));
        let at = |field: &str| format!("{base}.{field}");
        let name_ok = if is_simple_name(name) {
            true
        } else {
            self.problem(
                &base,
                format!("tier name {name:?} is not valid (use only A-Z a-z 0-9 _ -)"),
            );
            false
        };
        let credentials_file = self.path_buf(&at("credentials_file"), raw.credentials_file);
        let tier = match raw.kind.as_str() {
            "jetstream" => {
                for (key, present) in [
                    ("endpoint", raw.endpoint.is_some()),
                    ("region", raw.region.is_some()),
                    ("bucket", raw.bucket.is_some()),
                    ("prefix", raw.prefix.is_some()),
                    ("flavor", raw.flavor.is_some()),
                    ("force_path_style", raw.force_path_style.is_some()),
                    ("retention", raw.retention.is_some()),
                    ("verify", raw.verify.is_some()),
                ] {
                    if present {
                        self.problem(
                            &at(key),
                            format!("not a key of a jetstream tier (keys: {JETSTREAM_KEYS})"),
                        );
                    }
                }
                let url = match raw.url {
                    None => Some(None),
                    Some(u) => self.nats_url(&at("url"), &u).map(Some),
                };
                let domain = match raw.domain {
                    None => {
                        self.problem(&at("domain"), "missing: a jetstream tier needs a domain");
                        None
                    }
                    Some(d) => self.simple_name(&at("domain"), &d, "JetStream domain"),
                };
                let replicas = match raw.replicas {
                    None => Some(defaults::JETSTREAM_REPLICAS),
                    Some(r) => self.usize_in(&at("replicas"), r, defaults::REPLICAS_RANGE),
                };
                let role = match raw.role {
                    None => Some(JetStreamRole::default()),
                    Some(r) => {
                        let role = JetStreamRole::from_name(&r);
                        if role.is_none() {
                            self.problem(
                                &at("role"),
                                format!("{r:?} is not a role (use \"leaf\" or \"cluster\")"),
                            );
                        }
                        role
                    }
                };
                Some(Tier::JetStream(JetStreamTier {
                    url: url?,
                    domain: domain?,
                    replicas: replicas?,
                    credentials_file: credentials_file?,
                    role: role?,
                }))
            }
            "s3" => {
                for (key, present) in [
                    ("url", raw.url.is_some()),
                    ("domain", raw.domain.is_some()),
                    ("replicas", raw.replicas.is_some()),
                    ("role", raw.role.is_some()),
                ] {
                    if present {
                        self.problem(
                            &at(key),
                            format!("not a key of an s3 tier (keys: {S3_KEYS})"),
                        );
                    }
                }
                let raw_endpoint_missing = raw.endpoint.is_none();
                let endpoint = match raw.endpoint {
                    None => Some(None),
                    Some(e) => {
                        let ok = ["http://", "https://"]
                            .iter()
                            .any(|s| e.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
                        if ok {
                            Some(Some(e))
                        } else {
                            self.problem(
                                &at("endpoint"),
                                format!("{e:?} must start with http:// or https://"),
                            );
                            None
                        }
                    }
                };
                let region = match raw.region {
                    Some(r) if !r.trim().is_empty() => Some(r),
                    Some(_) => {
                        self.problem(&at("region"), "must not be empty");
                        None
                    }
                    None => {
                        self.problem(&at("region"), "missing: an s3 tier needs a region");
                        None
                    }
                };
                let bucket = match raw.bucket {
                    Some(b) if is_s3_bucket_name(&b) => Some(b),
                    Some(b) => {
                        self.problem(
                            &at("bucket"),
                            format!(
                                "{b:?} is not a valid S3 bucket name (3-63 characters: lowercase \
                                 letters, digits, '.' and '-', starting and ending with a letter \
                                 or digit)"
                            ),
                        );
                        None
                    }
                    None => {
                        self.problem(&at("bucket"), "missing: an s3 tier needs a bucket");
                        None
                    }
                };
                let prefix = match raw.prefix.as_deref().unwrap_or(defaults::S3_PREFIX) {
                    p if p.starts_with('/') => {
                        self.problem(&at("prefix"), format!("{p:?} must not start with '/'"));
                        None
                    }
                    "" => Some(String::new()),
                    p if p.ends_with('/') => Some(p.to_owned()),
                    p => Some(format!("{p}/")),
                };
                let flavor = match raw.flavor {
                    None => Some(defaults::S3_FLAVOR),
                    Some(f) => {
                        let flavor = S3Flavor::from_name(&f);
                        if flavor.is_none() {
                            let names: Vec<&str> =
                                S3Flavor::ALL.iter().map(|f| f.as_str()).collect();
                            self.problem(
                                &at("flavor"),
                                format!("unknown flavor {f:?} (flavors: {})", names.join(", ")),
                            );
                        }
                        flavor
                    }
                };
                let retention = match raw.retention.as_deref() {
                    None => Some(defaults::S3_RETENTION),
                    Some(text) => self.duration(&at("retention"), text, RETENTION_EXAMPLES),
                };
                let verify = match raw.verify.as_deref() {
                    None => Some(None),
                    Some(v) => {
                        let verify = S3Verify::from_name(v);
                        if verify.is_none() {
                            let names: Vec<&str> =
                                S3Verify::ALL.iter().map(|v| v.as_str()).collect();
                            self.problem(
                                &at("verify"),
                                format!("unknown verification {v:?} (modes: {})", names.join(", ")),
                            );
                        }
                        verify.map(Some)
                    }
                };
                let flavor = flavor?;
                if raw_endpoint_missing && !matches!(flavor, S3Flavor::Aws | S3Flavor::Wasabi) {
                    self.problem(
                        &at("endpoint"),
                        format!(
                            "missing: flavor {:?} needs an endpoint (only \"aws\" and \"wasabi\" \
                             have a default)",
                            flavor.as_str()
                        ),
                    );
                    return None;
                }
                Some(Tier::S3(S3Tier {
                    endpoint: endpoint?,
                    region: region?,
                    bucket: bucket?,
                    prefix: prefix?,
                    credentials_file: credentials_file?,
                    flavor,
                    force_path_style: raw.force_path_style.unwrap_or(flavor != S3Flavor::Aws),
                    retention: retention?,
                    verify: verify?.unwrap_or(defaults::s3_verify(flavor)),
                }))
            }
            other => {
                self.problem(
                    &at("kind"),
                    format!("unknown tier kind {other:?} (kinds: {TIER_KINDS})"),
                );
                None
            }
        };
        if name_ok {
            tier
        } else {
            None
        }
    }
}

/// A TOML key as it would be written in a dotted path: bare if possible,
/// quoted otherwise.
fn toml_key(key: &str) -> String {
    if is_simple_name(key) {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn is_s3_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;
    use crate::error::ConfigError;

    fn s3_tier(extra: &str) -> Result<S3Tier, ConfigError> {
        let text = format!(
            "[nats]\nurl = \"nats://127.0.0.1:4222\"\n\n[tiers.s3]\nkind = \"s3\"\n\
             endpoint = \"http://127.0.0.1:3900\"\nregion = \"garage\"\nbucket = \"cim\"\n{extra}"
        );
        Config::from_toml_str(&text, "test.toml")
            .map(|c| c.tier("s3").unwrap().as_s3().unwrap().clone())
    }

    #[test]
    fn verification_defaults_by_flavor_and_is_checked() {
        for (flavor, verify) in [
            ("aws", S3Verify::Crc32c),
            ("garage", S3Verify::Crc32c),
            ("minio", S3Verify::Crc32c),
            ("wasabi", S3Verify::Md5),
            ("other", S3Verify::Md5),
        ] {
            let tier = s3_tier(&format!("flavor = \"{flavor}\"\n")).unwrap();
            assert_eq!(tier.verify, verify, "{flavor}");
        }
        assert_eq!(s3_tier("").unwrap().verify, S3Verify::Md5);
        for mode in S3Verify::ALL {
            let tier = s3_tier(&format!("flavor = \"garage\"\nverify = \"{mode}\"\n")).unwrap();
            assert_eq!(tier.verify, mode);
        }
        let Err(ConfigError::Invalid { problems, .. }) = s3_tier("verify = \"sha1\"\n") else {
            panic!("an unknown mode must be refused");
        };
        assert_eq!(problems[0].path, "tiers.s3.verify");
        assert!(
            problems[0].message.contains("md5, crc32c, read-back"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn s3_bucket_names() {
        for ok in ["abc", "cim-archive", "a.b.c", "0bucket9", &"a".repeat(63)] {
            assert!(is_s3_bucket_name(ok), "{ok}");
        }
        for bad in [
            "ab",
            "Abc",
            "-abc",
            "abc-",
            "a_b",
            "a b",
            "",
            &"a".repeat(64),
        ] {
            assert!(!is_s3_bucket_name(bad), "{bad}");
        }
    }
}
