//! `cim-bench`: every stage's throughput beside the S3 server's own ceiling, NATS's and a peer
//! tool's, in the same run (see `docs/benchmarking.md`).
//!
//! * [`measure`] — what a run records ([`measure::Run`]) and the statistics over repeats.
//! * [`procs`] — CPU time and peak memory of our processes, from `/proc`.
//! * [`data`] — deterministic incompressible and corpus data sets on tmpfs.
//! * [`env`] — the servers: the test kit's on loopback, or a given S3 endpoint.
//! * [`scenarios`] — one module per scenario.
//! * [`runner`] — the matrix of cells and their repeats.
//! * [`report`] — the table, JSON, markdown and plot.

pub mod data;
pub mod env;
pub mod measure;
pub mod procs;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod targets;
