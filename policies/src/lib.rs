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
//! - [`policy`]: [`Policy`], [`Action`], [`Route`] and the checks of one policy
//!   ([`Policy::matches_bucket`], [`Policy::is_due`], [`Policy::check`]).
//! - [`condition`]: the object conditions of a policy ([`Conditions`]) and the
//!   object they test ([`Object`]).
//! - [`evaluate`]: the decision for one object, with the precedence between
//!   policies ([`evaluate::evaluate`]) — shared by the manager, `plan` and
//!   `explain`.
//! - [`error`]: [`ConfigError`] and [`Problem`].

pub mod condition;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod policy;

pub use condition::{Conditions, Miss, Object};
pub use config::{
    parse_duration, AccessConfig, CatalogConfig, Config, Format, JetStreamRole, JetStreamTier,
    ManagerConfig, MetricsConfig, NatsConfig, RestoreConfig, S3Flavor, S3Tier, S3Verify, Tier,
    UploadConfig, WorkConfig,
};
pub use error::{ConfigError, Problem};
pub use evaluate::Outcome;
pub use policy::{due_policies, Action, Policy, Route, ALL_TIERS};
