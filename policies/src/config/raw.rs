//! Raw serde types: the shape of the file (TOML or JSON), with anything that
//! can be semantically wrong kept as strings and integers.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Config {
    pub nats: Nats,
    #[serde(deserialize_with = "unique_keys")]
    pub tiers: BTreeMap<String, Tier>,
    #[serde(default)]
    pub policy: Vec<Policy>,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub manager: Manager,
    #[serde(default)]
    pub work: Work,
    #[serde(default)]
    pub upload: Upload,
    #[serde(default)]
    pub restore: Restore,
    #[serde(default)]
    pub catalog: Catalog,
    #[serde(default)]
    pub access: Access,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Nats {
    pub url: String,
    pub credentials_file: Option<String>,
    pub replicas: Option<i64>,
}

/// Both tier kinds' keys; which ones are allowed depends on `kind` and is
/// checked during validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Tier {
    pub kind: String,
    pub credentials_file: Option<String>,
    // jetstream
    pub url: Option<String>,
    pub domain: Option<String>,
    pub replicas: Option<i64>,
    pub role: Option<String>,
    // s3
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub flavor: Option<String>,
    pub force_path_style: Option<bool>,
    pub verify: Option<String>,
    pub retention: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Policy {
    pub name: String,
    pub buckets: Vec<String>,
    pub from: String,
    pub to: Option<String>,
    pub action: String,
    pub after: String,
    pub enabled: Option<bool>,
    pub names: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub min_size: Option<Size>,
    pub max_size: Option<Size>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub headers: Option<BTreeMap<String, String>>,
    pub idle: Option<String>,
    pub force: Option<bool>,
}

/// A size: a whole number of bytes, or a string with a unit (`"4 KiB"`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Size {
    Bytes(i64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Metrics {
    pub listen: Option<String>,
    pub pushgateway: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Manager {
    pub interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Work {
    pub stream: Option<String>,
    pub ack_wait: Option<String>,
    pub max_deliver: Option<i64>,
    pub concurrency: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Upload {
    pub part_size_mib: Option<i64>,
    pub multipart_threshold_mib: Option<i64>,
    pub zstd_level: Option<i64>,
    pub memory_budget_mib: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Restore {
    pub staging_dir: Option<String>,
    pub concurrency: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Catalog {
    pub bucket: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Access {
    pub bucket: Option<String>,
    pub interval: Option<String>,
}

/// A map whose keys must be unique. TOML parsers reject a duplicate key
/// themselves; serde_json would silently keep the last one.
fn unique_keys<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(A::Error::custom(format!("duplicate key `{key}`")));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_map(Unique(PhantomData))
}
