//! Multipart upload of a compressed blob: the stream cut into parts, sent several at a time
//! within the memory budget, and completed only once the content checked out.

use std::io;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use cim_policies::S3Verify;
use tokio::io::AsyncRead;
use tokio::task::JoinSet;

use super::blob_upload::{
    compress_bound, confirm, fill, hashing_result, usize_of, BlobWrite, Encoder, MAX_PARTS,
};
use super::budget::{Charge, CodecSlot, MemoryBudget};
use super::checksums::BodyChecksum;
use super::deadlines;
use crate::Error;

/// Most parts of one object uploading at once while the next one is compressed; the memory of
/// all of them, across all uploads, is bounded by [`super::UploadOptions::budget`].
const MAX_PARTS_IN_FLIGHT: usize = 4;

impl BlobWrite<'_> {
    /// Multipart upload of the compressed stream, `first` being what was read so far; returns
    /// the stored size and the confirmed checksum of each part, in order (none for read-back).
    pub(super) async fn multipart<R: AsyncRead + Unpin + Send>(
        &self,
        compressing: (Encoder<R>, CodecSlot),
        first: (BytesMut, bool),
        charge: &mut Charge,
        budget: &MemoryBudget,
        part_size: usize,
    ) -> Result<(u64, Vec<String>), Error> {
        let (client, bucket, key) = (&self.store.client, &self.store.bucket, self.key);
        self.store.abort_uploads_for(key).await?;
        let mut create = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type("application/zstd");
        for (k, v) in self.metadata() {
            create = create.metadata(k, v);
        }
        if self.store.verify == S3Verify::Crc32c {
            // AWS requires the algorithm of the parts' checksums to be declared up front.
            create = create.checksum_algorithm(ChecksumAlgorithm::Crc32C);
        }
        let upload_id = create
            .send()
            .await
            .map_err(|e| Error::s3("create_multipart_upload", key, e))?
            .upload_id()
            .map(str::to_string)
            .ok_or_else(|| Error::S3 {
                op: "create_multipart_upload",
                key: key.to_string(),
                object: None,
                cause: "response has no upload id".into(),
            })?;
        tracing::debug!(upload_id, part_size, "multipart upload started");

        let mut tasks = JoinSet::new();
        let result = match self
            .stream_parts(
                compressing,
                first,
                (charge, budget),
                part_size,
                &upload_id,
                &mut tasks,
            )
            .await
        {
            Ok(parts) => self.complete(&upload_id, parts).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Stop parts still uploading before aborting, so none lands after the abort.
            tasks.shutdown().await;
            match self.store.abort_upload(key, &upload_id).await {
                Ok(_) => tracing::info!(upload_id, "multipart upload aborted"),
                Err(e) => tracing::warn!(
                    upload_id,
                    error = %e,
                    "could not abort multipart upload; the next upload of this blob retries"
                ),
            }
        }
        result
    }

    /// Cuts the compressed stream into parts and uploads them, at most
    /// [`MAX_PARTS_IN_FLIGHT`] at a time and within the memory budget (`held` is what the
    /// buffer being filled is charged; each part takes its share along); checks the content at
    /// EOF, and then drops the encoder and its codec slot before the last parts are sent.
    /// Returns the parts in order.
    async fn stream_parts<R: AsyncRead + Unpin + Send>(
        &self,
        compressing: (Encoder<R>, CodecSlot),
        (mut pending, mut reusable): (BytesMut, bool),
        (held, budget): (&mut Charge, &MemoryBudget),
        part_size: usize,
        upload_id: &str,
        tasks: &mut JoinSet<Result<UploadedPart, Error>>,
    ) -> Result<Vec<UploadedPart>, Error> {
        let mut compressing = Some(compressing);
        let mut done = Vec::new();
        let mut part_number: u64 = 0;
        // Compressed bytes cut into parts so far: what is left to come is at most the
        // object's bound minus this, so a short last part is charged only what it may hold.
        let mut cut: u64 = 0;
        let mut eof = false;
        loop {
            if let Some((encoder, _)) = compressing.as_mut() {
                if pending.len() < part_size {
                    let left = usize_of(compress_bound(self.expected_size).saturating_sub(cut));
                    let room = part_size.min(left.max(1));
                    if pending.is_empty() {
                        // The previous buffer went out with the parts cut from it. Waits while
                        // other uploads' parts hold the budget; this one holds no unsent bytes.
                        drop(std::mem::take(held));
                        let buffer = budget.buffer(room).await;
                        (pending, *held, reusable) = (buffer.bytes, buffer.charge, buffer.reusable);
                    } else if held.bytes() < room as u64 {
                        // Never reached with the first buffer (charged a whole part up front).
                        held.merge(budget.charge(room as u64 - held.bytes()).await);
                        pending.reserve(room - pending.len());
                    }
                    eof = fill(encoder, &mut pending, part_size)
                        .await
                        .map_err(|e| self.read_error(encoder, e))?;
                }
                if eof {
                    // Verify before the last part goes out; a bad source never completes.
                    self.check(hashing_result(encoder))?;
                    // Frees the encoder's state and the reader's read-ahead, and the slot.
                    compressing = None;
                }
            }
            while pending.len() >= part_size || (eof && (!pending.is_empty() || part_number == 0)) {
                let body = if pending.len() >= part_size {
                    pending.split_to(part_size).freeze()
                } else {
                    pending.split().freeze()
                };
                cut += body.len() as u64;
                part_number += 1;
                if part_number > MAX_PARTS {
                    return Err(Error::config(format!(
                        "blob {} needs more than {MAX_PARTS} parts of {part_size} bytes",
                        self.key
                    )));
                }
                while tasks.len() >= MAX_PARTS_IN_FLIGHT {
                    done.push(self.part_sent(join_part(tasks).await?));
                }
                // The last part takes all that is left, so that its buffer can be reused.
                let charge = if eof && pending.is_empty() {
                    std::mem::take(held)
                } else {
                    held.split(body.len() as u64)
                };
                // Only a part cut from the start of a reusable buffer goes back to the pool.
                let recycle = std::mem::take(&mut reusable).then(|| budget.clone());
                tasks.spawn(upload_part(
                    self.store.client.clone(),
                    self.store.bucket.clone(),
                    self.key.to_string(),
                    upload_id.to_string(),
                    part_number as i32,
                    (body, charge, recycle),
                    self.store.verify,
                ));
            }
            if eof {
                break;
            }
        }
        while !tasks.is_empty() {
            done.push(self.part_sent(join_part(tasks).await?));
        }
        done.sort_by_key(|p| p.part.part_number());
        Ok(done)
    }

    /// Counts a part the service took.
    fn part_sent(&self, part: UploadedPart) -> UploadedPart {
        cim_tiering::metrics::s3_sent(&self.store.tier_name, part.len, true);
        part
    }

    async fn complete(
        &self,
        upload_id: &str,
        parts: Vec<UploadedPart>,
    ) -> Result<(u64, Vec<String>), Error> {
        let stored: u64 = parts.iter().map(|p| p.len).sum();
        let count = parts.len();
        let checksums = parts.iter().filter_map(|p| p.checksum.clone()).collect();
        let parts = parts.into_iter().map(|p| p.part).collect();
        self.store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(self.key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .customize()
            .config_override(deadlines::with_timeouts(deadlines::complete_timeouts()))
            .send()
            .await
            .map_err(|e| Error::s3("complete_multipart_upload", self.key, e))?;
        tracing::debug!(
            upload_id,
            parts = count,
            stored,
            "multipart upload completed"
        );
        Ok((stored, checksums))
    }
}

/// One uploaded part: what CompleteMultipartUpload lists, its length, and the checksum the
/// service confirmed (none for read-back).
struct UploadedPart {
    part: CompletedPart,
    len: u64,
    checksum: Option<String>,
}

async fn join_part(
    tasks: &mut JoinSet<Result<UploadedPart, Error>>,
) -> Result<UploadedPart, Error> {
    match tasks.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(join)) => Err(Error::io(
            "multipart part upload task",
            io::Error::other(join.to_string()),
        )),
        None => Err(Error::io(
            "multipart part upload task",
            io::Error::other("no part in flight"),
        )),
    }
}

async fn upload_part(
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    part_number: i32,
    (body, charge, recycle): (Bytes, Charge, Option<MemoryBudget>),
    verify: S3Verify,
) -> Result<UploadedPart, Error> {
    let len = body.len() as u64;
    let checksum = BodyChecksum::of_body(verify, &body).await;
    let mut request = client
        .upload_part()
        .bucket(bucket)
        .key(&key)
        .upload_id(upload_id)
        .part_number(part_number)
        .content_length(len as i64)
        .body(ByteStream::from(body.clone()));
    match &checksum {
        Some(BodyChecksum::Md5 { base64, .. }) => request = request.content_md5(base64),
        Some(BodyChecksum::Crc32c { base64 }) => request = request.checksum_crc32_c(base64),
        None => {}
    }
    let mut request = request
        .customize()
        .config_override(deadlines::with_timeouts(deadlines::upload_timeouts(len)));
    if checksum.is_some() {
        // As for PutObject: the service checks our checksum, so no SHA-256 of the payload.
        request = request.disable_payload_signing();
    }
    let output = request
        .send()
        .await
        .map_err(|e| Error::s3("upload_part", &key, e))?;
    tracing::trace!(part_number, len, "part uploaded");
    if let Some(budget) = recycle {
        budget.recycle(body, charge);
    }
    if let Some(checksum) = &checksum {
        confirm(
            checksum,
            verify,
            "upload_part",
            &key,
            output.e_tag(),
            output.checksum_crc32_c(),
        )?;
    }
    let crc32c = match &checksum {
        Some(BodyChecksum::Crc32c { base64 }) => Some(base64.clone()),
        _ => None,
    };
    let part = CompletedPart::builder()
        .part_number(part_number)
        .set_e_tag(output.e_tag().map(str::to_string))
        .set_checksum_crc32_c(crc32c)
        .build();
    Ok(UploadedPart {
        part,
        len,
        checksum: checksum.map(|c| c.value().to_string()),
    })
}
