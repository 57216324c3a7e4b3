//! `cim-storage explain`: for one object, where its copies are (each JetStream tier, read from
//! its stream leader, and the catalog) and what every policy makes of it on each tier holding
//! it — the manager's own evaluation ([`cim_policies::evaluate`]), with the reason. On an S3
//! tier the copy is the catalog's, aged from its verification (as `expire` on S3 decides).

use std::collections::BTreeMap;

use cim_policies::evaluate::{describe, evaluate, format_duration, transfers_elsewhere};
use cim_policies::{Object, Tier};
use serde::Serialize;

use crate::access::AccessLog;
use crate::error::Error;
use crate::system::System;

/// Everything `explain` shows (also its JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// Object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// One entry per JetStream tier, in tier order.
    pub copies: Vec<Copy>,
    /// The catalog's entry: tiers holding a verified copy, and when each was verified.
    pub catalog: Option<BTreeMap<String, String>>,
    /// For each of those, the version (meta sequence, as in `copies`) the copy was verified
    /// for: a copy verified for an earlier sequence than the cluster's live copy holds the same
    /// content with an older description, metadata or headers, until a `copy` or `move` that
    /// decides updates it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub catalog_seq: BTreeMap<String, u64>,
    /// The object's last read (`get`, the ensure service; RFC 3339, the server's time of its
    /// access record), `never` if it was never read, or `unknown: <why>` if the access records
    /// could not be read.
    pub last_read: String,
    /// Seconds since the last read, when known.
    pub last_read_secs: Option<u64>,
    /// Every policy on every tier that holds the object, in file order per tier.
    pub policies: Vec<Considered>,
}

/// What one JetStream tier holds of the object.
#[derive(Debug, Clone, Serialize)]
pub struct Copy {
    /// Tier name.
    pub tier: String,
    /// `live`, `deleted` (a user delete marker), `absent`, or `unreadable: <why>`.
    pub state: String,
    /// Stream sequence of its meta message.
    pub seq: Option<u64>,
    /// Size recorded at ingest.
    pub size: Option<u64>,
    /// Seconds since the tier stored this version (what `after` is compared with).
    pub age_secs: Option<u64>,
    /// Until when this version is a temporary copy (`restore --for`; RFC 3339), if it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temporary_until: Option<String>,
}

/// One policy's verdict on the object on one tier.
#[derive(Debug, Clone, Serialize)]
pub struct Considered {
    /// The tier holding the copy evaluated.
    pub tier: String,
    /// Policy name.
    pub policy: String,
    /// `copy`, `move` or `expire`.
    pub action: String,
    /// `decides`, `overruled`, `not-yet`, `no-match`, `other-tier`, `disabled`,
    /// `temporary` (a temporary copy, which no policy acts on), or `waiting` (a `move` whose
    /// copy is verified and whose eviction waits for a transfer to another tier).
    pub outcome: &'static str,
    /// Why, for people.
    pub reason: String,
}

/// Reads the object's copies and evaluates every policy on each tier that holds it live.
pub async fn explain(system: &System, bucket: &str, name: &str) -> Result<Explanation, Error> {
    let now = time::OffsetDateTime::now_utc();
    let config = &system.config;
    let read = AccessLog::new(system).last_read(bucket, name).await;
    let since_read = read
        .as_ref()
        .ok()
        .copied()
        .flatten()
        .map(|at| super::decide::since(now, at));
    let last_read = match &read {
        Ok(Some(at)) => crate::temporary::format_time(*at),
        Ok(None) => "never".to_owned(),
        Err(e) => format!("unknown: {e}"),
    };
    let entry = system.catalog.get(bucket, name).await?;
    let mut copies = Vec::new();
    let mut policies = Vec::new();
    for (tier_name, tier) in &config.tiers {
        if !matches!(tier, Tier::JetStream(_)) {
            continue;
        }
        let js = system.jetstream_tier(tier_name)?;
        let latest = match js.latest(bucket, name).await {
            Ok(latest) => latest,
            Err(e) => {
                copies.push(Copy {
                    tier: tier_name.clone(),
                    state: format!("unreadable: {e}"),
                    seq: None,
                    size: None,
                    age_secs: None,
                    temporary_until: None,
                });
                continue;
            }
        };
        let Some(stored) = latest else {
            copies.push(Copy {
                tier: tier_name.clone(),
                state: "absent".into(),
                seq: None,
                size: None,
                age_secs: None,
                temporary_until: None,
            });
            continue;
        };
        let age = stored.age(now);
        let live = !stored.info.deleted;
        copies.push(Copy {
            tier: tier_name.clone(),
            state: if live { "live" } else { "deleted" }.into(),
            seq: Some(stored.seq),
            size: Some(stored.info.size as u64),
            age_secs: Some(age.as_secs()),
            temporary_until: crate::temporary::until_of(&stored).map(crate::temporary::format_time),
        });
        if !live {
            continue;
        }
        let metadata: BTreeMap<String, String> = stored
            .info
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let headers: BTreeMap<String, String> = stored
            .info
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| {
                        let k: &str = k.as_ref();
                        Some((k.to_owned(), v.first()?.as_str().to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let object = Object {
            bucket,
            name,
            size: stored.info.size as u64,
            age,
            metadata: Some(&metadata),
            headers: Some(&headers),
            last_read: since_read,
        };
        let outcomes = evaluate(&config.policies, tier_name, &object);
        let temporary = copies.last().and_then(|c| c.temporary_until.clone());
        for (i, outcome) in outcomes.iter().enumerate() {
            let policy = &config.policies[i];
            let (outcome, reason) = match &temporary {
                // The manager skips a temporary copy before evaluating any policy.
                Some(until) => (
                    "temporary",
                    format!(
                        "temporary copy until {until} (restore --for): no policy acts on it; \
                         removed from {tier_name} then (otherwise: {})",
                        describe(&config.policies, i, outcome, age)
                    ),
                ),
                None => {
                    let reason = describe(&config.policies, i, outcome, age);
                    let wait = outcome
                        .decides()
                        .then(|| waits_for(config, tier_name, &object, i, entry.as_ref(), &stored))
                        .flatten();
                    match wait {
                        Some(wait) if wait.own_copy => (
                            "waiting",
                            format!(
                                "{reason}; its copy on {} is verified, {}",
                                policy.to, wait.what
                            ),
                        ),
                        Some(wait) => (
                            outcome.as_str(),
                            format!("{reason}; once uploaded, {}", wait.what),
                        ),
                        None => (outcome.as_str(), reason),
                    }
                }
            };
            policies.push(Considered {
                tier: tier_name.clone(),
                policy: policy.name.clone(),
                action: policy.action.to_string(),
                outcome,
                reason,
            });
        }
    }
    // S3 tiers: the copies the catalog records, aged as the manager ages them there.
    let on_jetstream = copies.iter().any(|c| c.state == "live");
    for e in entry
        .iter()
        .filter(|e| e.deleted.is_none() && e.damaged.is_none())
    {
        let age = e.verified_age(now);
        let s3_tiers = e
            .locations
            .keys()
            .filter(|t| matches!(config.tier(t), Some(Tier::S3(_))));
        for tier_name in s3_tiers {
            let object = Object {
                bucket,
                name,
                size: e.size,
                age,
                metadata: None,
                headers: None,
                last_read: since_read,
            };
            let outcomes = evaluate(&config.policies, tier_name, &object);
            for (i, outcome) in outcomes.iter().enumerate() {
                let policy = &config.policies[i];
                let mut reason = describe(&config.policies, i, outcome, age);
                if outcome.decides() && policy.from == cim_policies::ALL_TIERS && on_jetstream {
                    reason.push_str(
                        "; a JetStream tier holds it: deleted there, the delete reaches S3",
                    );
                }
                policies.push(Considered {
                    tier: tier_name.clone(),
                    policy: policy.name.clone(),
                    action: policy.action.to_string(),
                    outcome: outcome.as_str(),
                    reason,
                });
            }
        }
    }
    let catalog_seq = entry
        .iter()
        .flat_map(|e| {
            e.locations
                .keys()
                .filter_map(|tier| Some((tier.clone(), e.location_seq(tier)?)))
        })
        .collect();
    let catalog = entry.map(|entry| {
        entry
            .locations
            .into_iter()
            .map(|(tier, location)| (tier, location.verified_at))
            .collect()
    });
    Ok(Explanation {
        bucket: bucket.to_string(),
        name: name.to_string(),
        copies,
        catalog,
        catalog_seq,
        last_read,
        last_read_secs: since_read.map(|d| d.as_secs()),
        policies,
    })
}

/// Why a deciding `move` (policy `position`) keeps its source: the transfers to other tiers
/// that have no verified copy yet, as the manager and the upload role see it
/// ([`cim_policies::evaluate::transfers_elsewhere`]).
struct Wait {
    /// The move's own copy is recorded: nothing is queued until the others land.
    own_copy: bool,
    /// "the eviction waits for policy … (copy to tier …)".
    what: String,
}

fn waits_for(
    config: &cim_policies::Config,
    tier: &str,
    object: &Object<'_>,
    position: usize,
    entry: Option<&crate::catalog::Entry>,
    stored: &crate::jetstream::StoredObject,
) -> Option<Wait> {
    let policy = &config.policies[position];
    if policy.action != cim_policies::Action::Move {
        return None;
    }
    let digest = crate::jetstream::ingest_digest(tier, object.bucket, &stored.info).ok()?;
    let has = |to: &str| entry.is_some_and(|e| e.has_version(to, &digest, stored.seq));
    let missing: Vec<String> = transfers_elsewhere(&config.policies, tier, object, &policy.to)
        .into_iter()
        .filter(|other| !has(&other.to))
        .map(|other| {
            format!(
                "policy {:?} ({} to tier {})",
                other.name, other.action, other.to
            )
        })
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(Wait {
        own_copy: has(&policy.to),
        what: format!(
            "the eviction waits for a verified copy from {}",
            missing.join(", ")
        ),
    })
}

impl Explanation {
    /// The text for people: the copies, the catalog, then one line per policy and tier.
    pub fn text(&self) -> String {
        let mut out = format!("{}/{}\n\ncopies:\n", self.bucket, self.name);
        for c in &self.copies {
            out.push_str(&format!("  {:<10} {}", c.tier, c.state));
            if let (Some(seq), Some(size), Some(age)) = (c.seq, c.size, c.age_secs) {
                out.push_str(&format!(
                    " (seq {seq}, {size} bytes, stored {} ago)",
                    format_duration(std::time::Duration::from_secs(age))
                ));
            }
            if let Some(until) = &c.temporary_until {
                out.push_str(&format!(", temporary copy until {until}"));
            }
            out.push('\n');
        }
        match &self.catalog {
            None => out.push_str("  catalog    no entry\n"),
            Some(locations) => {
                for (tier, verified) in locations {
                    out.push_str(&format!("  catalog    {tier}: verified {verified}"));
                    if let Some(seq) = self.catalog_seq.get(tier) {
                        out.push_str(&format!(" (for seq {seq})"));
                    }
                    out.push('\n');
                }
            }
        }
        match self.last_read_secs {
            Some(secs) => out.push_str(&format!(
                "  reads      last read {} ({} ago)\n",
                self.last_read,
                format_duration(std::time::Duration::from_secs(secs))
            )),
            None if self.last_read == "never" => out.push_str("  reads      never read\n"),
            None => out.push_str(&format!("  reads      last read {}\n", self.last_read)),
        }
        out.push_str("\npolicies:\n");
        if self.policies.is_empty() {
            out.push_str("  (no tier holds a live copy)\n");
        }
        let width = self
            .policies
            .iter()
            .map(|p| p.policy.len())
            .max()
            .unwrap_or(0);
        for p in &self.policies {
            out.push_str(&format!(
                "  on {:<8} {:<width$}  {:<6}  {:<10}  {}\n",
                p.tier, p.policy, p.action, p.outcome, p.reason
            ));
        }
        out
    }
}
