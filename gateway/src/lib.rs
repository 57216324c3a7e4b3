//! The S3 tier of the storage system: moves objects from NATS JetStream object stores to
//! S3-compatible storage (Wasabi in production, Garage in tests) and restores them.
//!
//! The S3 side is self-describing: every object becomes a content-addressed, zstd-compressed blob
//! plus a JSON manifest carrying its NATS name, metadata and SHA-256 digest, so S3 alone is enough
//! to list and restore everything (see `docs/s3-format.md`).
//!
//! Invariants this crate upholds:
//!
//! * **Nothing is lost.** A blob only becomes visible once its uploaded content hashed to the
//!   digest recorded at NATS ingest; the manifest (the commit point) is written after the blob.
//! * **Integrity end to end.** Uploads and every restore check size and SHA-256 of the whole
//!   uncompressed content; a mismatch is an [`Error::Integrity`] naming the object, plus a
//!   `cim_integrity_failures_total{tier}` metric and an error log line, and never replaces a good
//!   copy.
//! * **Crash-safe.** A killed uploader can leave at most an unfinished multipart upload, which is
//!   invisible and is aborted by the next attempt at the same blob (or, if none comes, by the
//!   start-up sweep [`s3::S3Store::abort_stale_uploads`]).
//! * **Bounded memory.** Content is streamed; at most about three part buffers are held.
//!
//! # Layout
//!
//! * [`error`] — the crate's [`Error`] type and its retry classification.
//! * [`format`](mod@format) — the S3 key scheme and the [`format::Manifest`]; pure, no I/O.
//! * [`s3`] — [`s3::S3Store`]: client construction from the tier config, verified blob upload
//!   (single or multipart), manifests, listing, verified streaming reads.
//! * [`upload`] — the upload worker (NATS cluster → S3), built on [`s3`].
//! * [`restore`] — the restore path (S3 → NATS, streamed, several objects at once), built on
//!   [`s3`] and `cim_tiering::jetstream::write`.
//! * [`versions`] — which version is current on S3: publishing the catalog's choice, tombstones
//!   for deletes, `delete` of objects only S3 holds.
//! * [`expire`] — `expire` policies on S3 tiers: tombstones written by the upload role.
//! * [`gc`] — removing what deletes and overwrites leave behind, after the tier's retention.
//! * [`reconcile`] — catalog repair: the catalog against what the tiers hold.
//! * [`scrub`] — reading back and verifying what an S3 tier stores (all of it or a sample).
//! * [`ensure`] — the `cim.storage.object.ensure` NATS service (`cim-gateway serve`): makes one
//!   object ready on the hub, restoring it with [`restore`] when only S3 holds it.
//!
//! The read path serving objects no longer held by NATS comes next; the `cim-gateway` binary
//! (`main.rs`) wires the roles together.

// `Error::Integrity` carries six owned strings (bucket, name, tier, what, expected, actual) so that
// the report is complete without a lookup; errors are the cold path, so its size is accepted.
#![allow(clippy::result_large_err)]

pub mod ensure;
pub mod error;
pub mod expire;
pub mod format;
pub mod gc;
pub mod reconcile;
pub mod restore;
pub mod s3;
pub mod scrub;
pub mod upload;
pub mod versions;

pub use error::Error;
