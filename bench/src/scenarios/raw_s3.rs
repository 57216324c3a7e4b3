//! `raw-s3`: the S3 side's ceiling — plain PutObject and GetObject of the data set straight at
//! the endpoint, with no compression, no hashing and no verification round trip of ours.
//!
//! What it sends: one PutObject per file, its body streamed from the tmpfs file (so the AWS SDK
//! signs it `UNSIGNED-PAYLOAD` and hashes nothing), no checksum headers (the client computes
//! checksums only when an operation requires one, and PutObject does not). Objects of every
//! size, 16 MiB and above included, go up as one single PUT: that is the baseline measured, the
//! cheapest way to move an object. Objects above 5 GiB (S3's largest single PUT) are out of
//! scope and refused. Then one GetObject per object, its body read and discarded; the bytes
//! counted must equal the object's size. Both directions keep `concurrency` requests in flight.
//! The objects are deleted afterwards (not timed).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use futures::{StreamExt as _, TryStreamExt as _};

use crate::data::DataSet;
use crate::env::S3Target;
use crate::measure::Run;

/// S3's largest single PutObject; larger objects are out of this baseline's scope.
pub const MAX_SINGLE_PUT: u64 = 5 * 1024 * 1024 * 1024;

/// Puts every file of `set` as `<prefix><name>`, then gets every object back, `concurrency`
/// requests in flight; returns (put run, get run). The objects are deleted afterwards, also
/// when a direction failed.
pub async fn run(
    s3: &S3Target,
    set: &DataSet,
    prefix: &str,
    concurrency: usize,
) -> anyhow::Result<(Run, Run)> {
    anyhow::ensure!(
        set.size <= MAX_SINGLE_PUT,
        "raw-s3: objects of {} bytes exceed S3's largest single PUT (5 GiB): out of scope",
        set.size
    );
    let client = s3.client();
    let keys: Vec<String> = (0..set.files.len())
        .map(|i| format!("{prefix}{}", set.name(i)))
        .collect();
    let runs = async {
        let put = put_all(&client, &s3.bucket, set, &keys, concurrency).await?;
        let get = get_all(&client, &s3.bucket, set, &keys, concurrency).await?;
        anyhow::Ok((put, get))
    }
    .await;
    let cleanup = s3.delete_objects(&keys).await;
    let runs = runs.context("raw-s3")?;
    cleanup.context("raw-s3: deleting the objects afterwards")?;
    Ok(runs)
}

/// PutObject of every file; the run's clock spans the first start to the last end.
async fn put_all(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    set: &DataSet,
    keys: &[String],
    concurrency: usize,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let latencies = futures::stream::iter(set.files.iter().zip(keys))
        .map(|(path, key)| async move {
            let start = Instant::now();
            let body = ByteStream::from_path(path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("PUT {key}: {}", DisplayErrorContext(e)))?;
            anyhow::Ok(start.elapsed())
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<Duration>>()
        .await?;
    Ok(Run::stored_as_is(set, started.elapsed(), latencies))
}

/// GetObject of every key, the body read to its end and discarded; a body of the wrong length
/// fails the run, naming the key.
async fn get_all(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    set: &DataSet,
    keys: &[String],
    concurrency: usize,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let latencies = futures::stream::iter(keys)
        .map(|key| async move {
            let start = Instant::now();
            let mut body = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("GET {key}: {}", DisplayErrorContext(e)))?
                .body;
            let mut received = 0u64;
            while let Some(chunk) = body
                .try_next()
                .await
                .with_context(|| format!("GET {key}: reading the body"))?
            {
                received += chunk.len() as u64;
            }
            anyhow::ensure!(
                received == set.size,
                "GET {key}: received {received} bytes, the object has {}",
                set.size
            );
            anyhow::Ok(start.elapsed())
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<Duration>>()
        .await?;
    Ok(Run::stored_as_is(set, started.elapsed(), latencies))
}
