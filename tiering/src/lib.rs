//! Storage manager, catalog, JetStream tiers and leaf mirroring.
//!
//! # Layout
//! - [`digest`]: the SHA-256 digest taken at ingest, in NATS and hex forms.
//! - [`jetstream`]: JetStream object-store tiers — listing, verified reads, sourcing a leaf
//!   bucket into the cluster, eviction by purge (never a user-visible delete); `jetstream::write`
//!   puts verified bytes as an object (pipelined chunks, meta last) with a crash-safe journal.
//! - [`catalog`]: where verified copies live, in a KV bucket, updated by compare-and-set.
//! - [`lease`]: leases in a KV bucket, so one worker at a time does a piece of work (an S3 blob).
//! - [`work`]: the work-queue stream between the manager and the roles, and the worker loop.
//! - [`progress`]: how a handler shows it is moving bytes (stalled handlers are abandoned).
//! - [`manager`]: the storage manager: evaluates policies, queues work.
//! - [`mirror`]: the mirror role: sets up sourcing, evicts verified leaf copies.
//! - [`retry`]: the one retry helper (jittered backoff, attempt and deadline bounds).
//! - [`system`]: the connections one role holds.
//! - [`status`]: state shared in NATS: role heartbeats, one-shot commands' counters.
//! - [`metrics`]: every metric name, and the Prometheus recorder.
//! - [`http`]: the roles' HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
//! - [`push`]: one-shot commands push their metrics to a Prometheus Pushgateway.
//! - [`cli`]: what both binaries share: logging, config loading, metrics endpoint, signals.
//! - [`error`]: the crate's error type.
//!
//! The binary `cim-storage` (`src/main.rs`) runs `check-config`, `run` (manager) and `mirror`.

pub mod access;
pub mod catalog;
pub mod cli;
pub mod digest;
pub mod error;
pub mod http;
pub mod jetstream;
pub mod lease;
pub mod manager;
pub mod memory;
pub mod metrics;
pub mod mirror;
pub mod progress;
pub mod push;
pub mod retry;
pub mod status;
pub mod system;
pub mod temporary;
pub mod work;

pub use error::Error;
pub use system::System;
