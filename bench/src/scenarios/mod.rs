//! One module per scenario. Each exposes `run(...) -> anyhow::Result<Run>` (or a pair of runs
//! for put and get), timing only the transfer, never the set-up, and verifying what arrived:
//! a scenario whose objects do not all arrive intact fails instead of reporting a number.

pub mod peer;
pub mod pipeline;
pub mod policy_eval;
pub mod raw_copy;
pub mod raw_nats;
pub mod raw_s3;
