//! `raw copy`: the hub → S3 and S3 → hub copies with nothing of ours in between — the ceiling
//! of `upload` and `restore` on a machine where both servers share the cores.
//!
//! `raw-nats get` and `raw-s3 put` each measure one side with the other side idle. On one
//! machine (the default run: three nats-servers, Garage and the client on 2 cores) both sides
//! are CPU-bound, so a copy that needs both at once cannot reach the lower of the two: each
//! GiB costs the sum of their CPU. These rows measure that sum directly, with the cheapest
//! client: `up` reads an object's chunks from the hub with batched direct gets (no hashing)
//! into memory and sends them as one `UNSIGNED-PAYLOAD` PutObject without checksum headers;
//! `down` reads a GetObject body into memory and publishes it as hub chunks (pipelined acks,
//! SHA-256 for the meta as any writer must), the meta last. No compression, no verification
//! round trip, no catalog: what is left is the servers' own cost. Memory: one whole object per
//! slot (fine for the matrix sizes; the bench's process, not a role).

use anyhow::Context as _;
use async_nats::jetstream;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};

use super::raw_nats::{put_chunks, read_chunks_into, read_meta, CHUNK_SIZE};

/// Copies hub object `name` of `bucket` to S3 as `key`; the bytes read must be `size`.
pub async fn up(
    js: &jetstream::Context,
    s3: &aws_sdk_s3::Client,
    s3_bucket: &str,
    bucket: &str,
    name: &str,
    key: &str,
    size: u64,
) -> anyhow::Result<()> {
    let fail = || format!("raw copy up of {name} to {key}");
    let info = read_meta(js, bucket, name).await.with_context(fail)?;
    let mut body = BytesMut::with_capacity(size as usize);
    let read = read_chunks_into(js, bucket, &info.nuid, size, |chunk| {
        body.extend_from_slice(&chunk)
    })
    .await
    .with_context(fail)?;
    anyhow::ensure!(read == size, "{}: read {read} of {size} bytes", fail());
    s3.put_object()
        .bucket(s3_bucket)
        .key(key)
        .body(ByteStream::from(body.freeze()))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", fail(), DisplayErrorContext(e)))?;
    Ok(())
}

/// Copies S3 object `key` into hub `bucket` as `name`; its body must be `size` bytes.
pub async fn down(
    js: &jetstream::Context,
    s3: &aws_sdk_s3::Client,
    s3_bucket: &str,
    key: &str,
    bucket: &str,
    name: &str,
    size: u64,
) -> anyhow::Result<()> {
    let fail = || format!("raw copy down of {key} to {name}");
    let mut stream = s3
        .get_object()
        .bucket(s3_bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", fail(), DisplayErrorContext(e)))?
        .body;
    let mut body = BytesMut::with_capacity(size as usize);
    while let Some(piece) = stream.try_next().await.with_context(fail)? {
        body.extend_from_slice(&piece);
    }
    let mut body: Bytes = body.freeze();
    let chunks = std::iter::from_fn(move || {
        (!body.is_empty()).then(|| Ok(body.split_to(CHUNK_SIZE.min(body.len()))))
    });
    put_chunks(js, bucket, name, chunks, size)
        .await
        .with_context(fail)
}
