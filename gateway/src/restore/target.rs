//! The target bucket as restore sees it: what does not change per object, looked up once per
//! bucket, and an in-process reservation of the room concurrent restores are about to fill.

use std::sync::{Arc, Mutex};

use async_nats::jetstream::stream::StorageType;
use cim_tiering::jetstream::write::BucketWriter;
use cim_tiering::jetstream::{JetStreamTier, StoredObject};
use cim_tiering::retry::{retry, Backoff};
use cim_tiering::System;
use tokio::sync::OnceCell;

use super::room::{room, stored_size_estimate, StreamUse};
use crate::format::Manifest;
use crate::Error;

/// One target bucket of a restore run.
pub(super) struct TargetBucket {
    tier: JetStreamTier,
    bucket: String,
    /// The bucket opened for writing; created on the first write when it did not exist.
    writer: OnceCell<BucketWriter>,
    /// What the target could still store when the run first touched the bucket, and the limit
    /// that decides it; `None` when nothing limits it.
    room: Option<(u64, String)>,
    /// Bytes reserved by this run's restores since (in progress or done).
    reserved: Mutex<u64>,
}

impl TargetBucket {
    /// Looks the bucket up (its stream, its limits, the account's) once.
    pub(super) async fn open(
        system: &System,
        tier: &JetStreamTier,
        bucket: &str,
    ) -> Result<TargetBucket, Error> {
        let name = tier.name();
        // Once per bucket, so worth riding out a leader election or a loaded server.
        let opened = retry("open target bucket", Backoff::STARTUP, || async {
            if !tier.stream_exists(bucket).await? {
                return Ok(None);
            }
            let opened = tier.bucket_writer(bucket).await?;
            let info = opened.info().await?;
            Ok(Some((opened, info)))
        })
        .await?;
        let writer = OnceCell::new();
        let info = opened.map(|(opened, info)| {
            let _ = writer.set(opened);
            info
        });
        let account = retry("read account info", Backoff::STARTUP, || async {
            tier.context()
                .query_account()
                .await
                .map_err(|e| cim_tiering::Error::bucket_op("read account info", name, bucket, e))
        })
        .await?;
        let replicas = match &info {
            Some(info) => info.config.num_replicas,
            None => match system.config.tier(name) {
                Some(cim_policies::Tier::JetStream(t)) => t.replicas,
                _ => 1,
            },
        };
        let stream = StreamUse {
            name: cim_tiering::jetstream::stream_name(bucket),
            max_bytes: info.as_ref().map_or(-1, |i| i.config.max_bytes),
            bytes: info.as_ref().map_or(0, |i| i.state.bytes),
            memory: info
                .as_ref()
                .is_some_and(|i| i.config.storage == StorageType::Memory),
            replicas: replicas.max(1),
        };
        Ok(TargetBucket {
            tier: tier.clone(),
            bucket: bucket.to_string(),
            writer,
            room: room(&stream, &account),
            reserved: Mutex::new(0),
        })
    }

    /// The object's latest meta on the target (live, a delete marker, or a link).
    ///
    /// `None` without asking while the bucket did not exist when the run opened it and this run
    /// has not created it yet: asking a stream that another task is creating right now can go
    /// unanswered until its leader is elected (seen: 10 s timeouts). Safe, because the commit
    /// requires the object to have no meta (expected last subject sequence 0): an object written
    /// or deleted there meanwhile is never replaced.
    pub(super) async fn latest(&self, name: &str) -> Result<Option<StoredObject>, Error> {
        Ok(match self.writer.get() {
            Some(writer) => writer.latest(name).await?,
            None => None,
        })
    }

    /// The bucket opened for writing (created if it does not exist).
    pub(super) async fn writer(&self) -> Result<&BucketWriter, Error> {
        Ok(self
            .writer
            .get_or_try_init(|| {
                retry("create target bucket", Backoff::STARTUP, || {
                    self.tier.bucket_writer(&self.bucket)
                })
            })
            .await?)
    }

    /// Reserves the room the object `m` declares, or refuses it ([`Error::NoRoom`]) when the
    /// target cannot store it beside what this run already reserved — so a decompression bomb
    /// (or concurrent restores that together overflow) fills nothing.
    pub(super) fn reserve(self: &Arc<Self>, m: &Manifest) -> Result<Reservation, Error> {
        let needed = stored_size_estimate(m.size);
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((room, limit)) = &self.room {
            let left = room.saturating_sub(*reserved);
            if needed > left {
                let limit = if *reserved > 0 {
                    format!("{limit}; {} reserved by this restore", *reserved)
                } else {
                    limit.clone()
                };
                return Err(Error::NoRoom {
                    bucket: self.bucket.clone(),
                    name: m.name.clone(),
                    tier: self.tier.name().to_string(),
                    size: m.size,
                    room: left,
                    limit,
                });
            }
        }
        *reserved += needed;
        Ok(Reservation {
            bucket: self.clone(),
            bytes: needed,
            kept: false,
        })
    }
}

/// Room reserved for one object; given back when dropped unless [`Reservation::keep`] says the
/// object now fills it.
pub(super) struct Reservation {
    bucket: Arc<TargetBucket>,
    bytes: u64,
    kept: bool,
}

impl Reservation {
    /// The object was written: its bytes are in the stream now.
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept {
            let mut reserved = self
                .bucket
                .reserved
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *reserved = reserved.saturating_sub(self.bytes);
        }
    }
}
