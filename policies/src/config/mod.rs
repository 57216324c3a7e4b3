//! The configuration file: raw serde types, defaults, validation and the
//! validated [`Config`].
//!
//! The file is TOML or JSON ([`Format`], told by the file name's
//! extension); both are read into the same structs and validated the same
//! way, so they accept the same keys and report the same problems.
//!
//! Parsing is two-stage. The text is first deserialized into private
//! *raw* structs (unknown keys rejected) that keep anything that can be
//! semantically wrong as plain strings and integers; a syntax or shape
//! error becomes [`ConfigError::Syntax`]. The raw structs are then checked
//! field by field, collecting every [`Problem`]; if there is any, the result
//! is [`ConfigError::Invalid`] listing all of them.
//!
//! Layout, one file per seam, so that a new key touches small files: its
//! default in [`defaults`], its validated field in `sections.rs` (or
//! `tiers.rs`; both re-exported here), its TOML/JSON field in `raw.rs`, its
//! check in `validate.rs` (or `validate/tier.rs`), its test in `tests.rs`.
//! `format.rs` tells TOML from JSON; `duration.rs` holds the duration
//! grammar shared with the NixOS module.
//!
//! [`Problem`]: crate::error::Problem

use std::collections::BTreeMap;

use crate::error::ConfigError;
use crate::policy::{Policy, Route};

pub mod defaults;
mod duration;
mod format;
#[cfg(test)]
mod policy_tests;
mod raw;
mod sections;
#[cfg(test)]
mod tests;
mod tiers;
mod validate;

pub use sections::{
    AccessConfig, CatalogConfig, ManagerConfig, MetricsConfig, NatsConfig, RestoreConfig,
    UploadConfig, WorkConfig,
};
pub use tiers::{JetStreamRole, JetStreamTier, S3Flavor, S3Tier, S3Verify, Tier};

pub use format::Format;

/// `text` as a duration, in the grammar of the configuration's durations (`"7d"`, `"12h"`,
/// `"1h 30m"`; see `nixos/durations.json`), for command-line options that take one the same way.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    duration::parse(text)
}

use format::json_message;
use validate::validate;

/// Bytes per MiB.
const MIB: u64 = 1024 * 1024;

/// The validated configuration, shared by all roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[nats]`: the NATS connection used for the control plane.
    pub nats: NatsConfig,
    /// `[tiers.<name>]`: storage tiers by name (at least one).
    pub tiers: BTreeMap<String, Tier>,
    /// `[[policy]]`: policies in file order (may be empty).
    pub policies: Vec<Policy>,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[manager]`.
    pub manager: ManagerConfig,
    /// `[work]`.
    pub work: WorkConfig,
    /// `[upload]`.
    pub upload: UploadConfig,
    /// `[restore]`.
    pub restore: RestoreConfig,
    /// `[catalog]`.
    pub catalog: CatalogConfig,
    /// `[access]`.
    pub access: AccessConfig,
}

impl Config {
    /// Parse + validate TOML text. `source_name` (usually the file path) is
    /// used in error messages.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let raw: raw::Config = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            source_name: source_name.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
        Self::validated(raw, source_name)
    }

    /// Parse + validate JSON text: the same keys, rules and problems as
    /// [`Config::from_toml_str`], with JSON objects for tables and an array
    /// of objects for `policy`.
    pub fn from_json_str(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let raw: raw::Config = serde_json::from_str(text).map_err(|err| ConfigError::Syntax {
            source_name: source_name.to_owned(),
            message: json_message(text, &err),
        })?;
        Self::validated(raw, source_name)
    }

    /// Parse + validate `text` written in `format`.
    pub fn from_str_in(
        format: Format,
        text: &str,
        source_name: &str,
    ) -> Result<Config, ConfigError> {
        match format {
            Format::Toml => Self::from_toml_str(text, source_name),
            Format::Json => Self::from_json_str(text, source_name),
        }
    }

    fn validated(raw: raw::Config, source_name: &str) -> Result<Config, ConfigError> {
        validate(raw).map_err(|problems| ConfigError::Invalid {
            source_name: source_name.to_owned(),
            problems,
        })
    }

    /// The tier called `name`.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.get(name)
    }

    /// The route a (validated) policy takes, from the kinds of its tiers.
    ///
    /// An `expire` policy gives [`Route::Expire`]. For a policy that did not
    /// come from this configuration: an S3 `to` tier gives
    /// [`Route::ClusterToS3`], anything else [`Route::LeafToCluster`].
    pub fn route(&self, policy: &Policy) -> Route {
        if policy.action == crate::Action::Expire {
            return Route::Expire;
        }
        match self.tier(&policy.to) {
            Some(Tier::S3(_)) => Route::ClusterToS3,
            _ => Route::LeafToCluster,
        }
    }

    /// Policies whose route is `route`, in file order.
    pub fn policies_on(&self, route: Route) -> impl Iterator<Item = &Policy> {
        self.policies.iter().filter(move |p| self.route(p) == route)
    }

    /// The complete documented example configuration (`docs/example.toml`).
    pub fn example() -> &'static str {
        include_str!("../../../docs/example.toml")
    }
}
