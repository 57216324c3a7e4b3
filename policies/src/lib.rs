//! Declarative tiering policies and the shared configuration file of the
//! multi-tier storage gateway: parse, validate, evaluate.
//!
//! Objects written to JetStream object stores on edge *leaf* nats-servers move
//! to a JetStream cluster (*hub*) and then to S3, driven by `[[policy]]`
//! entries in one TOML (or JSON) file shared by all roles. This crate is pure:
//! no async, no file or network I/O, no clock reads (callers pass object
//! ages).
//!
//! ```
//! let config = cim_policies::Config::from_toml_str(cim_policies::Config::example(), "example.toml")
//!     .expect("the example is valid");
//! assert!(config.tier("hub").is_some());
//! ```
//!
//! # Layout
//!
//! - [`config`]: the raw serde types (private), defaults ([`config::defaults`]),
//!   validation and the validated [`Config`] with its sections and [`Tier`]s.
//! - [`policy`]: [`Policy`], [`Action`], [`Route`] and evaluation
//!   ([`Policy::matches_bucket`], [`Policy::is_due`], [`due_policies`]).
//! - [`error`]: [`ConfigError`] and [`Problem`].

pub mod config;
pub mod error;
pub mod policy;

pub use config::{
    CatalogConfig, Config, Format, JetStreamTier, ManagerConfig, MetricsConfig, NatsConfig,
    RestoreConfig, S3Flavor, S3Tier, S3Verify, Tier, UploadConfig, WorkConfig,
};
pub use error::{ConfigError, Problem};
pub use policy::{due_policies, Action, Policy, Route};
