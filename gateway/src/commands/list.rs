//! The `list` command: what an S3 tier holds, from its manifests alone (no NATS needed) — a
//! table with a header and totals for people, one JSON document with `--json` for scripts.
//! An unreadable manifest never hides the others: each is reported (stderr, or the JSON's
//! `problems`) and the listing goes on.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use cim_gateway::format::Manifest;
use cim_policies::Tier;
use cim_tiering::cli;
use clap::Args;
use serde::Serialize;

use crate::{connect_s3, exit_status, s3_tier_name, ConfigArg};

/// Exit status of `list`, in the same scheme as `restore`'s.
pub(crate) const EXIT_STATUS_HELP: &str = "Exit status: 0 every manifest listed; 1 at least one \
manifest could not be read, the listing failed, or --bucket names a bucket the tier does not \
hold; 3 none failed, but at least one manifest has a format this version cannot read (skipped, \
named; left for a newer cim-gateway).";

/// Arguments of `cim-gateway list`.
#[derive(Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only this bucket (an error if the tier holds nothing of it).
    #[arg(long)]
    bucket: Option<String>,
    /// S3 tier to read from (default: the only S3 tier).
    #[arg(long)]
    from: Option<String>,
    /// List deleted objects too (STATE `deleted`: the last version before the delete, kept
    /// for `restore --include-deleted` until the retention ends).
    #[arg(long)]
    include_deleted: bool,
    /// Print one JSON document (objects, totals, problems) instead of the table.
    #[arg(long)]
    json: bool,
}

/// One listed object.
#[derive(Debug, Serialize)]
struct Listed {
    bucket: String,
    name: String,
    /// Content bytes (uncompressed).
    size: u64,
    /// Bytes of its blob on S3 (compressed).
    stored_size: u64,
    /// The ingest digest, NATS form (`SHA-256=…`).
    digest: String,
    /// The same, lowercase hex (what `sha256sum` prints).
    sha256: String,
    /// The NATS modification time, if known (RFC 3339).
    modified: Option<String>,
    /// When this tier received it (RFC 3339).
    uploaded_at: String,
    /// The tier it was copied from.
    source_tier: String,
    /// A tombstone: deleted (listed with --include-deleted only).
    deleted: bool,
}

impl Listed {
    fn of(m: Manifest) -> Listed {
        Listed {
            deleted: m.is_deleted(),
            bucket: m.bucket,
            name: m.name,
            size: m.size,
            stored_size: m.stored_size,
            digest: m.digest.to_string(),
            sha256: m.sha256_hex,
            modified: m.modified,
            uploaded_at: m.uploaded_at,
            source_tier: m.source_tier,
        }
    }
}

/// A manifest that could not be listed.
#[derive(Debug, Serialize)]
struct Problem {
    bucket: String,
    /// The manifest's S3 key.
    key: String,
    /// The object name its key encodes.
    name: String,
    /// `failed` (unreadable) or `skipped` (a format this version cannot read).
    outcome: &'static str,
    error: String,
}

/// What `list --json` prints.
#[derive(Debug, Serialize)]
struct Listing {
    tier: String,
    objects: Vec<Listed>,
    totals: Totals,
    problems: Vec<Problem>,
}

#[derive(Debug, Default, Serialize)]
struct Totals {
    buckets: usize,
    /// Objects listed (deleted ones included only with --include-deleted, not in `bytes`).
    objects: usize,
    deleted: usize,
    /// Content bytes of the live objects.
    bytes: u64,
    /// Their blobs' bytes on S3.
    stored_bytes: u64,
}

/// Runs `list`.
pub(crate) async fn run(args: ListArgs) -> anyhow::Result<ExitCode> {
    let config = cli::load_config(&args.config.config)?;
    let s3_name = s3_tier_name(&config, args.from)?;
    let Some(Tier::S3(s3_config)) = config.tier(&s3_name) else {
        bail!("{s3_name:?} is not an s3 tier");
    };
    let store = connect_s3(&s3_name, s3_config).await?;
    let listing = || format!("listing s3 tier {s3_name:?} at {}", store.endpoint());
    let held = store.list_buckets().await.with_context(listing)?;
    let buckets = match args.bucket {
        Some(b) if held.contains(&b) => vec![b],
        Some(b) => bail!(
            "s3 tier {s3_name:?} holds no bucket {b:?} (it holds: {})",
            if held.is_empty() {
                "nothing".to_string()
            } else {
                held.join(", ")
            }
        ),
        None => held,
    };

    let mut out = Listing {
        tier: s3_name.clone(),
        objects: Vec::new(),
        totals: Totals {
            buckets: buckets.len(),
            ..Totals::default()
        },
        problems: Vec::new(),
    };
    for b in buckets {
        for listed in store.scan_manifests(&b).await.with_context(listing)? {
            let problem = |outcome, e: cim_gateway::Error| Problem {
                bucket: b.clone(),
                key: listed.key.clone(),
                name: listed.name.clone(),
                outcome,
                error: e.to_string(),
            };
            match listed.manifest {
                Ok(m) if m.is_deleted() && !args.include_deleted => {}
                Ok(m) => out.objects.push(Listed::of(m)),
                Err(e @ cim_gateway::Error::UnsupportedFormat { .. }) => {
                    out.problems.push(problem("skipped", e))
                }
                Err(e) => out.problems.push(problem("failed", e)),
            }
        }
    }
    for o in &out.objects {
        out.totals.objects += 1;
        if o.deleted {
            out.totals.deleted += 1;
        } else {
            out.totals.bytes += o.size;
            out.totals.stored_bytes += o.stored_size;
        }
    }
    let failed = out
        .problems
        .iter()
        .filter(|p| p.outcome == "failed")
        .count();
    let skipped = out.problems.len() - failed;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&out, args.include_deleted));
        for p in &out.problems {
            let word = if p.outcome == "failed" {
                "FAILED "
            } else {
                "skipped"
            };
            eprintln!("{word}  {}/{}: {}", p.bucket, p.name, p.error);
        }
    }
    Ok(exit_status(failed, skipped))
}

/// The table and its totals line.
fn render(listing: &Listing, include_deleted: bool) -> String {
    let mut header = vec![
        "BUCKET", "NAME", "SIZE", "STORED", "MODIFIED", "UPLOADED", "SHA-256",
    ];
    if include_deleted {
        header.push("STATE");
    }
    let rows = listing.objects.iter().map(|o| {
        let mut row = vec![
            o.bucket.clone(),
            o.name.clone(),
            cli::human_bytes(o.size),
            cli::human_bytes(o.stored_size),
            o.modified.clone().unwrap_or_else(|| "—".into()),
            o.uploaded_at.clone(),
            // Enough to tell objects apart and to match `sha256sum`'s first characters.
            o.sha256.chars().take(12).collect(),
        ];
        if include_deleted {
            row.push(if o.deleted { "deleted" } else { "" }.into());
        }
        row
    });
    let mut text = if listing.objects.is_empty() {
        String::new()
    } else {
        cli::table(&header, rows)
    };
    let t = &listing.totals;
    text.push_str(&format!(
        "{} object{} in {} bucket{} on s3 tier {}: {} ({} stored)",
        t.objects - t.deleted,
        if t.objects - t.deleted == 1 { "" } else { "s" },
        t.buckets,
        if t.buckets == 1 { "" } else { "s" },
        listing.tier,
        cli::human_bytes(t.bytes),
        cli::human_bytes(t.stored_bytes),
    ));
    if t.deleted > 0 {
        text.push_str(&format!("; {} deleted", t.deleted));
    }
    text.push('\n');
    text
}
