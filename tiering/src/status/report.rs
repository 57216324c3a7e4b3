//! `cim-storage status`: what every role and tier is doing, read from the status bucket alone
//! (heartbeats, the manager's last summary, the restore runs' counters), so it works from any
//! host that reaches NATS — no role's HTTP endpoint is asked.

use serde::Serialize;
use time::OffsetDateTime;

use super::{Counters, Heartbeat, ManagerSummary, StatusBucket};
use crate::cli::{age, human_bytes, table};
use crate::error::Error;

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// When it was read.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The running roles' heartbeats, by role then host.
    pub roles: Vec<Heartbeat>,
    /// The manager's last pass, if one ever ran.
    pub manager: Option<ManagerSummary>,
    /// What every `cim-gateway restore` run added up so far.
    pub restore: Counters,
}

impl StatusReport {
    /// Reads the status bucket.
    pub async fn read(bucket: &StatusBucket) -> Result<StatusReport, Error> {
        let mut roles = Vec::new();
        for key in bucket.heartbeat_keys().await? {
            if let Some(beat) = bucket.heartbeat(&key).await? {
                roles.push(beat);
            }
        }
        roles.sort_by(|a, b| (&a.role, &a.host, a.pid).cmp(&(&b.role, &b.host, b.pid)));
        Ok(StatusReport {
            at: OffsetDateTime::now_utc(),
            roles,
            manager: bucket.summary().await?,
            restore: bucket.restore_counters().await?,
        })
    }

    /// What `status` shows when no role ever ran against this NATS (no status bucket).
    pub fn empty() -> StatusReport {
        StatusReport {
            at: OffsetDateTime::now_utc(),
            roles: Vec::new(),
            manager: None,
            restore: Counters::default(),
        }
    }

    /// Tables for people: roles, tiers, backlog, recent failures, restore runs.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let since = |t: OffsetDateTime| age(self.at - t);

        out.push_str(&format!("Roles ({} running)\n", self.roles.len()));
        if self.roles.is_empty() {
            out.push_str(&format!(
                "  none: no role has written a heartbeat in the last {} s\n",
                super::HEARTBEAT_TTL.as_secs()
            ));
        } else {
            let rows = self.roles.iter().map(|r| {
                vec![
                    match (r.role.as_str(), r.leader) {
                        ("manager", Some(true)) => "manager (leader)".into(),
                        ("manager", Some(false)) => "manager (standby)".into(),
                        _ => r.role.clone(),
                    },
                    r.host.clone(),
                    r.pid.to_string(),
                    r.version.clone(),
                    since(r.started),
                    r.last_success
                        .map_or("never".into(), |t| format!("{} ago", since(t))),
                    r.last_error
                        .as_ref()
                        .map_or("—".into(), |e| format!("{} ago", since(e.at))),
                ]
            });
            out.push_str(&table(
                &[
                    "ROLE",
                    "HOST",
                    "PID",
                    "VERSION",
                    "UP",
                    "LAST SUCCESS",
                    "LAST ERROR",
                ],
                rows,
            ));
        }
        let managers: Vec<_> = self.roles.iter().filter(|r| r.role == "manager").collect();
        if managers.is_empty() {
            out.push_str("  warning: no manager is running: nothing is being planned\n");
        } else if !managers.iter().any(|r| r.leader != Some(false)) {
            out.push_str(
                "  warning: no manager leads: nothing is being planned until one takes the lease\n",
            );
        }

        match &self.manager {
            None => out.push_str("\nTiers\n  unknown: no manager pass was ever recorded\n"),
            Some(summary) => {
                out.push_str(&format!(
                    "\nTiers (manager pass {} ago on {}, took {:.2} s)\n",
                    since(summary.at),
                    summary.host,
                    summary.pass_seconds
                ));
                let rows = summary.held.iter().map(|h| {
                    vec![
                        h.tier.clone(),
                        h.bucket.clone(),
                        h.objects.to_string(),
                        human_bytes(h.bytes),
                    ]
                });
                out.push_str(&table(&["TIER", "BUCKET", "OBJECTS", "BYTES"], rows));

                out.push_str("\nBacklog (due, not yet done)\n");
                let rows = summary.backlog.iter().map(|b| {
                    vec![
                        b.policy.clone(),
                        b.from.clone(),
                        b.to.clone(),
                        b.objects.to_string(),
                        human_bytes(b.bytes),
                        if b.objects == 0 {
                            "—".into()
                        } else {
                            age(time::Duration::seconds(b.oldest_due_seconds as i64))
                        },
                    ]
                });
                out.push_str(&table(
                    &["POLICY", "FROM", "TO", "OBJECTS", "BYTES", "OLDEST DUE"],
                    rows,
                ));
            }
        }

        let mut failures: Vec<_> = self
            .roles
            .iter()
            .flat_map(|r| r.recent_errors.iter().map(move |e| (e, r)))
            .collect();
        failures.sort_by_key(|(e, _)| std::cmp::Reverse(e.at));
        out.push_str("\nRecent failures\n");
        if failures.is_empty() {
            out.push_str("  none\n");
        } else {
            let rows = failures.iter().map(|(e, r)| {
                vec![
                    format!("{} ago", since(e.at)),
                    r.role.clone(),
                    r.host.clone(),
                    e.reason.clone(),
                ]
            });
            out.push_str(&table(&["WHEN", "ROLE", "HOST", "REASON"], rows));
        }

        out.push_str(&format!("\nRestore runs: {}", self.restore.runs));
        for (tier, outcomes) in &self.restore.objects {
            let counts: Vec<String> = outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect();
            let bytes = self.restore.bytes.get(tier).copied().unwrap_or(0);
            out.push_str(&format!(
                "; into {tier}: {} ({})",
                counts.join(", "),
                human_bytes(bytes)
            ));
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::status::{Held, LastError, PolicyBacklog};

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds).unwrap()
    }

    /// The example in docs/commands.md.
    fn example() -> StatusReport {
        let role = |role: &str, pid, last_error: Option<LastError>| Heartbeat {
            role: role.into(),
            instance: format!("{role}-1"),
            host: "hub-1".into(),
            pid,
            version: "0.1.0".into(),
            started: at(-3723),
            at: at(-2),
            last_success: Some(at(-1)),
            recent_errors: last_error.iter().cloned().collect(),
            last_error,
            leader: (role == "manager").then_some(true),
        };
        let failure = LastError {
            at: at(-40),
            reason: "sensors/a.csv: s3 tier wasabi (https://s3.eu-central-2.wasabisys.com): \
                     unreachable: connection refused"
                .into(),
        };
        StatusReport {
            at: at(0),
            roles: vec![
                role("manager", 811, None),
                role("mirror", 812, None),
                role("upload", 813, Some(failure)),
            ],
            manager: Some(ManagerSummary {
                at: at(-1),
                host: "hub-1".into(),
                pass_seconds: 0.012,
                held: vec![
                    Held {
                        tier: "hub".into(),
                        bucket: "sensors".into(),
                        objects: 12,
                        bytes: 50_331_648,
                    },
                    Held {
                        tier: "wasabi".into(),
                        bucket: "sensors".into(),
                        objects: 1_204,
                        bytes: 5_368_709_120,
                    },
                ],
                backlog: vec![PolicyBacklog {
                    policy: "cluster-to-wasabi".into(),
                    from: "hub".into(),
                    to: "wasabi".into(),
                    objects: 12,
                    bytes: 50_331_648,
                    oldest_due_seconds: 95,
                }],
            }),
            restore: Counters::default(),
        }
    }

    #[test]
    fn the_tables_show_every_part_with_ages_and_sizes() {
        let text = example().render();
        for expected in [
            "Roles (3 running)",
            "manager (leader)  hub-1  811",
            "1h 2m 3s",
            "Tiers (manager pass 1s ago on hub-1, took 0.01 s)",
            "wasabi  sensors  1204     5.0 GiB",
            "cluster-to-wasabi  hub   wasabi  12       48.0 MiB  1m 35s",
            "40s ago  upload  hub-1  sensors/a.csv: s3 tier wasabi",
            "Restore runs: 0",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
        assert!(!text.contains("no manager is running"), "{text}");
    }

    #[test]
    fn standbys_are_told_from_the_leader() {
        let mut report = example();
        report.roles[0].leader = Some(false);
        let text = report.render();
        assert!(text.contains("manager (standby)"), "{text}");
        assert!(text.contains("no manager leads"), "{text}");
    }

    #[test]
    fn nothing_running_says_so() {
        let text = StatusReport::empty().render();
        assert!(text.contains("Roles (0 running)"), "{text}");
        assert!(text.contains("no manager is running"), "{text}");
        assert!(text.contains("no manager pass was ever recorded"), "{text}");
    }
}
