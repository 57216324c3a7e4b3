//! Manager high availability: several `cim-storage run` may run; one plans at a time.
//!
//! Leadership is a lease ([`crate::lease`]) on the key [`LEADER_KEY`] in its own KV bucket
//! [`LEADER_BUCKET`] on the control plane, whose `max_age` is [`LEADER_TTL`] (the server's
//! clock): shorter than the blob leases' 30 s, so a standby takes over within seconds of the
//! leader's death. The holder renews it every third of that; the others try to take it every
//! [`STANDBY_POLL`].
//!
//! # Why a double dispatch is harmless
//! A leader that dies after queueing items and a standby that takes over and queues them again
//! meet the work queue's guards: an item still pending (queued or in flight) is refused by the
//! stream (one message per subject, `discard_new_per_subject`), one done within the last 10
//! minutes by its `Nats-Msg-Id` (the duplicate window), and anything that gets through anyway is
//! re-checked by its handler against the object's current state before it acts (a version
//! already moved is skipped, an upload already recorded is not repeated). So the new leader
//! starts with an empty memory, scans every bucket from sequence 1 once, and queues what is due.
//!
//! # Stopping before the lease could have expired
//! The lease is good until the time its last renewal (or creation) was *sent* plus the TTL,
//! less a margin ([`crate::lease::Lease::is_held`]): the server's expiry counts from when it
//! stored the write, which is later. A leader whose renewals fail stops planning at that
//! moment — a pass under way is dropped (safe: a pass only queues items) — and stands by;
//! a renewal refused because the key changed (someone else took it) stops it at once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::lease::{Lease, Leases};
use crate::System;

/// The KV bucket holding the manager's leadership lease.
pub const LEADER_BUCKET: &str = "cim_leader";
/// The leadership lease's key.
pub const LEADER_KEY: &str = "manager";
/// A leader not renewing for this long loses leadership (the bucket's `max_age`). Long enough
/// for one control-plane leader election (6–8 s) not to cost the lease.
pub const LEADER_TTL: Duration = Duration::from_secs(10);
/// How often a standby tries to take the lease.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);

/// This manager's claim to leadership.
pub struct Leadership {
    leases: Leases,
    /// Who we are, as the lease's value: host, pid and a nuid per start.
    holder: String,
}

impl Leadership {
    /// Opens (creating if needed) the leadership bucket on `system`'s control plane.
    pub async fn open(system: &System) -> Result<Self, Error> {
        let leases = Leases::open_bucket(
            system.control(),
            LEADER_BUCKET,
            "cim manager leadership: one manager plans at a time",
            LEADER_TTL,
            system.config.nats.replicas,
        )
        .await?;
        let holder = format!(
            "{}:{}:{}",
            crate::push::host_name(),
            std::process::id(),
            nuid::next()
        );
        Ok(Self { leases, holder })
    }

    /// Who this manager is in the lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Waits until this manager holds the lease; `None` on `shutdown`.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Option<Lease> {
        let mut logged = false;
        loop {
            match self.leases.try_acquire(LEADER_KEY, &self.holder).await {
                Ok(Some(lease)) => return Some(lease),
                Ok(None) => {
                    if !logged {
                        let leader = self.leases.holder(LEADER_KEY).await.ok().flatten();
                        tracing::info!(leader = ?leader, "another manager leads; standing by");
                        logged = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the leadership lease; trying again")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(STANDBY_POLL) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }
}

/// Completes when `lease` is no longer surely held (lost, or its renewals failed for too long).
pub async fn lost(lease: &Lease) {
    loop {
        match lease.held_until() {
            None => return,
            Some(until) if tokio::time::Instant::now() >= until => return,
            Some(until) => {
                // Wake at the deadline, or sooner to see a renewal move it or a loss.
                let next = until.min(tokio::time::Instant::now() + Duration::from_millis(200));
                tokio::time::sleep_until(next).await;
            }
        }
    }
}

/// Records whether this manager leads: the `cim_manager_leader` gauge and its heartbeat.
pub fn set_leading(leading: bool) {
    crate::metrics::manager_leader(leading);
    crate::status::leading(leading);
}
