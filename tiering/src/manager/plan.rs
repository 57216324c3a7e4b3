//! `cim-storage plan`: what a manager pass would queue now, object by object, with the policy
//! that decided it and why — from [`super::Manager::planner`], the manager's own evaluation with
//! the queueing left out.

use cim_policies::Action;
use serde::Serialize;

use crate::work::WorkItem;

/// One item a planner's pass would have queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The item, as the manager would queue it (it names the policy).
    pub item: WorkItem,
    /// Why it is due: the deciding policy's age and conditions.
    pub why: String,
}

/// A temporary copy (`restore --for`) whose time is not up: no policy acts on it until then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Temporary {
    /// The JetStream tier holding it.
    pub tier: String,
    /// Object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// When its time is up (RFC 3339).
    pub until: String,
}

/// What `plan` prints after its table for the temporary copies still running (nothing when
/// there are none).
pub fn temporary_table(temporary: &[Temporary]) -> String {
    if temporary.is_empty() {
        return String::new();
    }
    let mut sorted: Vec<&Temporary> = temporary.iter().collect();
    sorted.sort_by(|a, b| (&a.bucket, &a.name, &a.tier).cmp(&(&b.bucket, &b.name, &b.tier)));
    let mut out =
        String::from("\ntemporary copies (restore --for), which no policy acts on until then:\n");
    for t in sorted {
        out.push_str(&format!(
            "  {}/{} on {}: temporary copy until {}\n",
            t.bucket, t.name, t.tier, t.until
        ));
    }
    out
}

/// One row of `plan` (also its JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// What the role will do: `source` (set up leaf → cluster sourcing of a bucket),
    /// `evict` (remove the leaf copy the cluster holds), `copy` (upload to S3), `move` (upload,
    /// then remove the cluster copy), `delete` (carry a user delete to S3), `expire` (delete
    /// from `from`: its copy only when `to` is empty, or as a user delete when `to` is `*`),
    /// `drop-temporary` (remove an expired temporary copy from `from`; `to` is the S3 tier
    /// that keeps it).
    pub action: &'static str,
    /// The policy that decided it.
    pub policy: String,
    /// Source tier.
    pub from: String,
    /// Destination tier.
    pub to: String,
    /// Object-store bucket.
    pub bucket: String,
    /// Object name; `None` for `source`.
    pub name: Option<String>,
    /// Size in bytes, when the item says.
    pub size: Option<u64>,
    /// Why: the deciding policy's age and conditions.
    pub reason: String,
}

impl Planned {
    /// The row `plan` prints.
    pub fn row(&self) -> Row {
        // An expire has no destination: `*` from every tier, nothing from one.
        let expire_to = match &self.item {
            WorkItem::Expire(e) if e.all => cim_policies::ALL_TIERS.to_string(),
            WorkItem::S3Expire(e) if e.all => cim_policies::ALL_TIERS.to_string(),
            _ => String::new(),
        };
        // No policy queues the expiry of a temporary copy: its row names none.
        let no_policy = String::from("-");
        let (action, policy, from, to, bucket, name, size) = match &self.item {
            WorkItem::EnsureSource {
                policy,
                from,
                to,
                bucket,
            } => ("source", policy, from, to, bucket, None, None),
            WorkItem::LeafEvict(m) => (
                "evict",
                &m.policy,
                &m.from,
                &m.to,
                &m.bucket,
                Some(m.name.clone()),
                Some(m.size),
            ),
            WorkItem::Upload(m) => (
                if m.action == Action::Move {
                    "move"
                } else {
                    "copy"
                },
                &m.policy,
                &m.from,
                &m.to,
                &m.bucket,
                Some(m.name.clone()),
                Some(m.size),
            ),
            WorkItem::Delete(d) => (
                "delete",
                &d.policy,
                &d.from,
                &d.to,
                &d.bucket,
                Some(d.name.clone()),
                None,
            ),
            WorkItem::Expire(e) => (
                "expire",
                &e.policy,
                &e.tier,
                &expire_to,
                &e.bucket,
                Some(e.name.clone()),
                Some(e.size),
            ),
            // On an S3 tier: a tombstone there (the upload role).
            WorkItem::S3Expire(e) => (
                "expire",
                &e.policy,
                &e.tier,
                &expire_to,
                &e.bucket,
                Some(e.name.clone()),
                Some(e.size),
            ),
            WorkItem::LeafDropTemporary(t) | WorkItem::DropTemporary(t) => (
                "drop-temporary",
                &no_policy,
                &t.tier,
                &t.kept_on,
                &t.bucket,
                Some(t.name.clone()),
                Some(t.size),
            ),
        };
        Row {
            action,
            policy: policy.clone(),
            from: from.clone(),
            to: to.clone(),
            bucket: bucket.clone(),
            name,
            size,
            reason: self.why.clone(),
        }
    }
}

/// The rows sorted by bucket, object and action (a pass lists them policy by policy).
pub fn rows(planned: &[Planned]) -> Vec<Row> {
    let mut rows: Vec<Row> = planned.iter().map(Planned::row).collect();
    rows.sort_by(|a, b| {
        (&a.bucket, &a.name, a.action, &a.policy).cmp(&(&b.bucket, &b.name, b.action, &b.policy))
    });
    rows
}

/// The table for people: a header, one line per item, and a total.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "ACTION", "POLICY", "FROM", "TO", "BUCKET", "OBJECT", "SIZE", "WHY",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.action.to_owned(),
                r.policy.clone(),
                r.from.clone(),
                if r.to.is_empty() {
                    "-".into()
                } else {
                    r.to.clone()
                },
                r.bucket.clone(),
                r.name.clone().unwrap_or_else(|| "*".into()),
                r.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                r.reason.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for row in &cells {
        out.push_str(&line(row));
    }
    let bytes: u64 = rows.iter().filter_map(|r| r.size).sum();
    out.push_str(&format!("{} items, {bytes} bytes\n", rows.len()));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::digest::Sha256Digest;
    use crate::work::ObjectMove;

    #[test]
    fn rows_and_table() {
        let upload = |name: &str, action| Planned {
            item: WorkItem::Upload(ObjectMove {
                policy: "p".into(),
                from: "hub".into(),
                to: "s3".into(),
                action,
                bucket: "b".into(),
                name: name.into(),
                size: 4096,
                digest: Sha256Digest::of(b"x"),
                nuid: "n".into(),
                seq: 1,
            }),
            why: "age 2h >= after 1h".into(),
        };
        let rows = rows(&[upload("z", Action::Move), upload("a", Action::Copy)]);
        assert_eq!(rows[0].name.as_deref(), Some("a"));
        assert_eq!(rows[0].action, "copy");
        assert_eq!(rows[1].action, "move");
        assert_eq!(
            table(&rows),
            "ACTION  POLICY  FROM  TO  BUCKET  OBJECT  SIZE  WHY\n\
             copy    p       hub   s3  b       a       4096  age 2h >= after 1h\n\
             move    p       hub   s3  b       z       4096  age 2h >= after 1h\n\
             2 items, 8192 bytes\n"
        );
        let json = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(json["action"], "copy");
        assert_eq!(json["reason"], "age 2h >= after 1h");
    }
}
