//! Work items: what they say, their subjects and their format versions (see [`super`]).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cim_policies::Action;
use serde::{Deserialize, Serialize};

use super::SUBJECT_PREFIX;
use crate::digest::Sha256Digest;

/// The work-item format this version writes (subject `cim.work.v<N>.…`, JSON field `"v"`).
/// Version 0 is the unversioned layout of earlier releases (`cim.work.<role>.…`); 2 added
/// [`WorkItem::Delete`].
pub const FORMAT_VERSION: u32 = 2;

/// Formats a role reads: its own and the one before, so that a role upgraded before the
/// manager still serves the older manager's items.
pub const READ_VERSIONS: [u32; 2] = [FORMAT_VERSION - 1, FORMAT_VERSION];

/// Last subject token of a [`WorkItem::EnsureSource`]. Never the base64url (no padding) of an
/// object name: a canonical encoding of six characters ends in a character whose low four bits
/// are zero, and `e` is not one.
pub(super) const ENSURE_SOURCE_TOKEN: &str = "source";

/// The `to` token of a [`WorkItem::DropTemporary`]'s subject (it goes to no tier).
pub(super) const TEMPORARY_TOKEN: &str = "temporary";

/// The role that consumes an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Leaf → cluster: sets up sourcing, evicts leaf copies (`cim-storage mirror`).
    Mirror,
    /// Cluster → S3: uploads, verifies, evicts hub copies (`cim-gateway upload`).
    Upload,
}

impl Role {
    /// Name used in subjects, consumer names and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mirror => "mirror",
            Role::Upload => "upload",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One version of one object to move from tier `from` to tier `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMove {
    /// The policy that asked for the move.
    pub policy: String,
    /// Source tier name.
    pub from: String,
    /// Destination tier name.
    pub to: String,
    /// Copy keeps the source copy; move evicts it once the destination is verified.
    pub action: Action,
    /// Object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// Size recorded at ingest.
    pub size: u64,
    /// Digest recorded at ingest.
    pub digest: Sha256Digest,
    /// The version (object-store nuid) the manager saw; a different current nuid means the
    /// object changed and the manager will re-evaluate it.
    pub nuid: String,
    /// Sequence of the meta message the manager saw (0 from managers before it was sent). A
    /// metadata update keeps the nuid but writes a new meta: with the sequence in the item's
    /// [`WorkItem::id`], the item for the updated object is queued at once instead of being
    /// dropped as a duplicate of the last one for the next duplicate window.
    #[serde(default)]
    pub seq: u64,
}

/// A user delete of one object, to carry from tier `from` (where the delete marker is) to the
/// S3 tier `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectDelete {
    /// The policy whose route the delete follows.
    pub policy: String,
    /// The JetStream tier holding the delete marker.
    pub from: String,
    /// The S3 tier the delete goes to.
    pub to: String,
    /// Object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// Stream sequence of the delete marker on `from`: orders the delete among the versions.
    pub seq: u64,
    /// The nuid the delete marker names: the deleted version, whose chunks `from` may still
    /// hold (a delete on the leaf purges the leaf's chunks only).
    pub nuid: String,
}

/// An `expire` policy's deletion of one version of one object from one JetStream tier (see
/// `docs/architecture.md`, "Expire").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectExpire {
    /// The `expire` policy that decided it.
    pub policy: String,
    /// The JetStream tier it goes from.
    pub tier: String,
    /// `true` for `from = "*"`: a delete like a user's (a delete marker, carried on to the
    /// cluster and to S3 by the delete path); `false`: only this tier's copy goes, like an
    /// eviction (a purge, no marker).
    pub all: bool,
    /// Object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// Size of the version, for `plan`.
    pub size: u64,
    /// Stream sequence of the version's meta on `tier`: anything written later is newer and
    /// is never deleted.
    pub seq: u64,
    /// The version (nuid) the manager decided on.
    pub nuid: String,
}

/// Subject token in the `to` place of an [`WorkItem::Expire`]: `~` is in no tier name.
const EXPIRE_TOKEN: &str = "~expire";

/// An `expire` policy's deletion of one version of one object from one S3 tier: a tombstone
/// there, written by the upload role (see `docs/architecture.md`, "Expire").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Expire {
    /// The `expire` policy that decided it.
    pub policy: String,
    /// The S3 tier the object goes from.
    pub tier: String,
    /// `true` for `from = "*"` (an object only S3 holds: a tombstone on every S3 tier holding
    /// it, one item per tier); `false`: `from` is this tier.
    pub all: bool,
    /// The JetStream tier whose bucket stream orders the object's versions (the catalog's
    /// `seq`): the tombstone is ordered after everything it holds, so a version written there
    /// later wins over it.
    pub source: String,
    /// Object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// Size of the version, for `plan`.
    pub size: u64,
    /// The catalog's sequence of the version decided on: a newer one is never expired.
    pub seq: u64,
    /// Digest of the version decided on.
    pub digest: Sha256Digest,
}

/// An expired temporary copy (`cim-gateway restore --for`, see [`crate::temporary`]) to remove
/// from the JetStream tier `tier`, while the S3 tier `kept_on` keeps a verified copy of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemporaryCopy {
    /// The JetStream tier holding the temporary copy.
    pub tier: String,
    /// The S3 tier the catalog records a verified copy of the same digest on.
    pub kept_on: String,
    /// Object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// Size recorded at ingest.
    pub size: u64,
    /// Digest recorded at ingest.
    pub digest: Sha256Digest,
    /// The temporary version (object-store nuid); a different current nuid is a new version,
    /// which is not temporary.
    pub nuid: String,
}

/// A unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkItem {
    /// Make the `to` tier's bucket source the `from` tier's bucket of the same name.
    EnsureSource {
        /// The policy that asked.
        policy: String,
        /// Leaf tier.
        from: String,
        /// Cluster tier.
        to: String,
        /// Bucket name.
        bucket: String,
    },
    /// Verify the cluster copy of a leaf object and, for `move`, evict the leaf copy.
    LeafEvict(ObjectMove),
    /// Upload a cluster object to S3, verify it and, for `move`, evict the cluster copy.
    Upload(ObjectMove),
    /// Carry a user delete to S3: a tombstone manifest, and the catalog entry a tombstone.
    Delete(ObjectDelete),
    /// Delete an expired object from one JetStream tier, or from all (`expire`).
    Expire(ObjectExpire),
    /// Tombstone an expired object on one S3 tier (`expire` from that tier, or from every
    /// tier for an object only S3 holds).
    S3Expire(S3Expire),
    /// Remove an expired temporary copy from a leaf tier (the mirror role evicts there).
    LeafDropTemporary(TemporaryCopy),
    /// Remove an expired temporary copy from a cluster tier (the upload role evicts there).
    DropTemporary(TemporaryCopy),
}

impl WorkItem {
    /// The role that handles this item.
    pub fn role(&self) -> Role {
        match self {
            WorkItem::EnsureSource { .. }
            | WorkItem::LeafEvict(_)
            | WorkItem::Expire(_)
            | WorkItem::LeafDropTemporary(_) => Role::Mirror,
            WorkItem::Upload(_)
            | WorkItem::Delete(_)
            | WorkItem::DropTemporary(_)
            | WorkItem::S3Expire(_) => Role::Upload,
        }
    }

    /// The bucket the item concerns.
    pub fn bucket(&self) -> &str {
        match self {
            WorkItem::EnsureSource { bucket, .. } => bucket,
            WorkItem::LeafEvict(m) | WorkItem::Upload(m) => &m.bucket,
            WorkItem::Delete(d) => &d.bucket,
            WorkItem::Expire(e) => &e.bucket,
            WorkItem::S3Expire(e) => &e.bucket,
            WorkItem::LeafDropTemporary(t) | WorkItem::DropTemporary(t) => &t.bucket,
        }
    }

    /// The tier pair the item moves between, `(from, to)`.
    pub fn tiers(&self) -> (&str, &str) {
        match self {
            WorkItem::EnsureSource { from, to, .. } => (from, to),
            WorkItem::LeafEvict(m) | WorkItem::Upload(m) => (&m.from, &m.to),
            WorkItem::Delete(d) => (&d.from, &d.to),
            WorkItem::Expire(e) => (&e.tier, if e.all { cim_policies::ALL_TIERS } else { "" }),
            WorkItem::S3Expire(e) => (&e.tier, if e.all { cim_policies::ALL_TIERS } else { "" }),
            // The copy's tier, and the S3 tier whose verified copy lets it go.
            WorkItem::LeafDropTemporary(t) | WorkItem::DropTemporary(t) => (&t.tier, &t.kept_on),
        }
    }

    /// The object the item concerns; `None` for a whole-bucket item.
    pub fn object(&self) -> Option<&str> {
        match self {
            WorkItem::EnsureSource { .. } => None,
            WorkItem::LeafEvict(m) | WorkItem::Upload(m) => Some(&m.name),
            WorkItem::Delete(d) => Some(&d.name),
            WorkItem::Expire(e) => Some(&e.name),
            WorkItem::S3Expire(e) => Some(&e.name),
            WorkItem::LeafDropTemporary(t) | WorkItem::DropTemporary(t) => Some(&t.name),
        }
    }

    /// Subject the item is published on: one per object and step (see the module docs), so the
    /// stream's per-subject limit keeps at most one pending item for each. A delete shares its
    /// object's upload subject: it is the same step, and the handler re-reads the object's
    /// current state whichever item it gets.
    ///
    /// Every token is a valid subject token: bucket names are stream-name suffixes and tier
    /// names are `[A-Za-z0-9_-]+` (checked by the configuration), object names are base64url.
    pub fn subject(&self) -> String {
        let (from, to, last): (&str, &str, String) = match self {
            WorkItem::EnsureSource { from, to, .. } => (from, to, ENSURE_SOURCE_TOKEN.to_string()),
            WorkItem::LeafEvict(m) | WorkItem::Upload(m) => {
                (&m.from, &m.to, URL_SAFE_NO_PAD.encode(&m.name))
            }
            WorkItem::Delete(d) => (&d.from, &d.to, URL_SAFE_NO_PAD.encode(&d.name)),
            WorkItem::Expire(e) => (&e.tier, EXPIRE_TOKEN, URL_SAFE_NO_PAD.encode(&e.name)),
            WorkItem::S3Expire(e) => (&e.tier, EXPIRE_TOKEN, URL_SAFE_NO_PAD.encode(&e.name)),
            // Its own step: never waits behind an upload or eviction item of the object.
            WorkItem::LeafDropTemporary(t) | WorkItem::DropTemporary(t) => {
                (&t.tier, TEMPORARY_TOKEN, URL_SAFE_NO_PAD.encode(&t.name))
            }
        };
        format!(
            "{}.{}.{from}.{to}.{last}",
            role_prefix(FORMAT_VERSION, self.role()),
            self.bucket()
        )
    }

    /// De-duplication id: the same logical work gets the same id.
    pub fn id(&self) -> String {
        match self {
            WorkItem::EnsureSource {
                from, to, bucket, ..
            } => {
                format!("ensure-source:{from}:{to}:{bucket}")
            }
            // A move is other work than a copy of the same version (it also evicts): with
            // one id, the move that follows a copy within the duplicate window was dropped.
            WorkItem::LeafEvict(m) | WorkItem::Upload(m) => format!(
                "{}:{}:{}:{}:{}:{}:{}{}",
                self.role(),
                m.from,
                m.to,
                m.bucket,
                URL_SAFE_NO_PAD.encode(&m.name),
                m.nuid,
                m.seq,
                if m.action == Action::Move {
                    ":move"
                } else {
                    ""
                }
            ),
            WorkItem::Delete(d) => format!(
                "delete:{}:{}:{}:{}:{}",
                d.from,
                d.to,
                d.bucket,
                URL_SAFE_NO_PAD.encode(&d.name),
                d.seq
            ),
            WorkItem::Expire(e) => format!(
                "expire:{}:{}:{}:{}:{}",
                e.tier,
                if e.all { "all" } else { "one" },
                e.bucket,
                URL_SAFE_NO_PAD.encode(&e.name),
                e.seq
            ),
            WorkItem::S3Expire(e) => format!(
                "s3-expire:{}:{}:{}:{}:{}",
                e.tier,
                if e.all { "all" } else { "one" },
                e.bucket,
                URL_SAFE_NO_PAD.encode(&e.name),
                e.seq
            ),
            WorkItem::LeafDropTemporary(t) | WorkItem::DropTemporary(t) => format!(
                "drop-temporary:{}:{}:{}:{}",
                t.tier,
                t.bucket,
                URL_SAFE_NO_PAD.encode(&t.name),
                t.nuid
            ),
        }
    }
}

/// Subject prefix of `role`'s items of format `version` (see the module docs).
pub(super) fn role_prefix(version: u32, role: Role) -> String {
    match version {
        0 => format!("{SUBJECT_PREFIX}.{role}"),
        v => format!("{SUBJECT_PREFIX}.v{v}.{role}"),
    }
}

/// Durable consumer of `role`'s items of format `version`.
pub(super) fn consumer_name(role: Role, version: u32) -> String {
    match version {
        0 => role.as_str().to_string(),
        v => format!("{role}-v{v}"),
    }
}

/// An item as published: its JSON with the format version `"v"`.
pub(super) fn encode(item: &WorkItem) -> Result<Vec<u8>, serde_json::Error> {
    let mut value = serde_json::to_value(item)?;
    if let serde_json::Value::Object(fields) = &mut value {
        fields.insert("v".into(), FORMAT_VERSION.into());
    }
    serde_json::to_vec(&value)
}

/// What a delivered payload turned out to be.
#[derive(Debug)]
pub(super) enum Decoded {
    /// An item of a version this role reads.
    Item(WorkItem),
    /// An item stating a newer format version: left for a newer role.
    Newer(u64),
    /// Neither: does not decode and states no newer version.
    Garbage(serde_json::Error),
}

pub(super) fn decode(payload: &[u8]) -> Decoded {
    /// Only the version, whatever else the item holds (version 0 has no `"v"`).
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        v: u64,
    }
    if let Ok(Version { v }) = serde_json::from_slice::<Version>(payload) {
        if v > u64::from(FORMAT_VERSION) {
            return Decoded::Newer(v);
        }
    }
    match serde_json::from_slice::<WorkItem>(payload) {
        Ok(item) => Decoded::Item(item),
        Err(e) => Decoded::Garbage(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn job(name: &str, nuid: &str) -> ObjectMove {
        ObjectMove {
            policy: "p".into(),
            from: "hub".into(),
            to: "s3".into(),
            action: Action::Move,
            bucket: "sensors".into(),
            name: name.into(),
            size: 3,
            digest: Sha256Digest::of(b"abc"),
            nuid: nuid.into(),
            seq: 7,
        }
    }

    #[test]
    fn items_route_to_their_role_and_round_trip_as_json() {
        let upload = WorkItem::Upload(job("a b/c", "N1"));
        assert_eq!(upload.role(), Role::Upload);
        assert_eq!(
            upload.subject(),
            "cim.work.v2.upload.sensors.hub.s3.YSBiL2M"
        );
        let evict = WorkItem::LeafEvict(job("x", "N1"));
        assert_eq!(evict.subject(), "cim.work.v2.mirror.sensors.hub.s3.eA");
        let source = WorkItem::EnsureSource {
            policy: "p".into(),
            from: "leaf".into(),
            to: "hub".into(),
            bucket: "sensors".into(),
        };
        assert_eq!(
            source.subject(),
            "cim.work.v2.mirror.sensors.leaf.hub.source"
        );
        let json = String::from_utf8(encode(&upload).unwrap()).unwrap();
        assert!(json.contains("\"kind\":\"upload\""), "{json}");
        assert!(json.contains("\"action\":\"move\""), "{json}");
        assert!(json.contains("\"v\":2"), "{json}");
        assert!(matches!(decode(json.as_bytes()), Decoded::Item(i) if i == upload));
    }

    #[test]
    fn a_delete_takes_its_objects_upload_subject_and_is_its_own_work() {
        let upload = WorkItem::Upload(job("a b/c", "N1"));
        let delete = |seq| {
            WorkItem::Delete(ObjectDelete {
                policy: "p".into(),
                from: "hub".into(),
                to: "s3".into(),
                bucket: "sensors".into(),
                name: "a b/c".into(),
                seq,
                nuid: "N1".into(),
            })
        };
        assert_eq!(delete(9).role(), Role::Upload);
        assert_eq!(delete(9).subject(), upload.subject());
        assert_ne!(delete(9).id(), upload.id());
        assert_ne!(delete(9).id(), delete(10).id());
        let json = encode(&delete(9)).unwrap();
        assert!(matches!(decode(&json), Decoded::Item(i) if i == delete(9)));
    }

    #[test]
    fn an_expire_is_the_mirror_roles_own_step_per_version() {
        let expire = |all, seq| {
            WorkItem::Expire(ObjectExpire {
                policy: "retention".into(),
                tier: "hub".into(),
                all,
                bucket: "sensors".into(),
                name: "a b/c".into(),
                size: 3,
                seq,
                nuid: "N1".into(),
            })
        };
        assert_eq!(expire(true, 9).role(), Role::Mirror);
        assert_eq!(
            expire(true, 9).subject(),
            "cim.work.v2.mirror.sensors.hub.~expire.YSBiL2M"
        );
        assert_ne!(expire(true, 9).id(), expire(false, 9).id());
        assert_ne!(expire(true, 9).id(), expire(true, 10).id());
        assert_eq!(expire(true, 9).tiers(), ("hub", "*"));
        let json = encode(&expire(false, 9)).unwrap();
        assert!(matches!(decode(&json), Decoded::Item(i) if i == expire(false, 9)));
    }

    #[test]
    fn an_s3_expire_is_the_upload_roles_own_step_per_version() {
        let expire = |all, seq| {
            WorkItem::S3Expire(S3Expire {
                policy: "retention".into(),
                tier: "s3".into(),
                all,
                source: "hub".into(),
                bucket: "sensors".into(),
                name: "a b/c".into(),
                size: 3,
                seq,
                digest: Sha256Digest::of(b"abc"),
            })
        };
        assert_eq!(expire(true, 9).role(), Role::Upload);
        assert_eq!(
            expire(true, 9).subject(),
            "cim.work.v2.upload.sensors.s3.~expire.YSBiL2M"
        );
        assert_ne!(expire(true, 9).id(), expire(false, 9).id());
        assert_ne!(expire(true, 9).id(), expire(true, 10).id());
        assert_eq!(expire(false, 9).tiers(), ("s3", ""));
        let json = encode(&expire(true, 9)).unwrap();
        assert!(matches!(decode(&json), Decoded::Item(i) if i == expire(true, 9)));
    }

    #[test]
    fn ids_identify_one_version_of_one_object() {
        let a1 = WorkItem::Upload(job("a", "N1")).id();
        assert_eq!(a1, WorkItem::Upload(job("a", "N1")).id());
        assert_ne!(
            a1,
            WorkItem::Upload(job("a", "N2")).id(),
            "a new version is new work"
        );
        assert_ne!(a1, WorkItem::Upload(job("b", "N1")).id());
        let mut updated = job("a", "N1");
        updated.seq += 1;
        assert_ne!(
            a1,
            WorkItem::Upload(updated).id(),
            "a metadata update (same nuid, new meta) is new work"
        );
        assert_ne!(a1, WorkItem::LeafEvict(job("a", "N1")).id());
        let mut copy = job("a", "N1");
        copy.action = Action::Copy;
        assert_ne!(
            a1,
            WorkItem::Upload(copy).id(),
            "a move after a copy of the same version is new work"
        );
        // Names with dots, spaces or slashes never leak into the id's structure.
        assert!(!WorkItem::Upload(job("x.y z/w", "N")).id().contains(' '));
    }

    #[test]
    fn subjects_are_one_per_object_and_step_whatever_the_version() {
        let a1 = WorkItem::Upload(job("a", "N1")).subject();
        assert_eq!(a1, WorkItem::Upload(job("a", "N2")).subject());
        assert_ne!(a1, WorkItem::Upload(job("b", "N1")).subject());
        let mut other_step = job("a", "N1");
        other_step.from = "hub2".into();
        assert_ne!(a1, WorkItem::Upload(other_step).subject());
        // Dots, spaces and wildcards in names stay inside one token.
        let subject = WorkItem::Upload(job("x.y z/*>", "N")).subject();
        assert_eq!(subject.split('.').count(), 8, "{subject}");
        assert!(!subject.contains([' ', '*', '>']), "{subject}");
        // No object name can take the ensure-source token.
        assert!(URL_SAFE_NO_PAD.decode(ENSURE_SOURCE_TOKEN).is_err());
    }

    #[test]
    fn items_of_the_previous_version_decode_newer_ones_are_left_and_garbage_is_garbage() {
        let item = WorkItem::Upload(job("a", "N1"));
        // A newer version is left alone even when it would decode.
        let mut newer = serde_json::to_value(&item).unwrap();
        newer["v"] = 3.into();
        assert!(matches!(
            decode(newer.to_string().as_bytes()),
            Decoded::Newer(3)
        ));
        // The previous version (1) is read too.
        let mut v1 = serde_json::to_value(&item).unwrap();
        v1["v"] = 1.into();
        assert!(matches!(decode(v1.to_string().as_bytes()), Decoded::Item(i) if i == item));
        let future = br#"{"v": 7, "kind": "batch", "objects": []}"#;
        assert!(matches!(decode(future), Decoded::Newer(7)));
        // Garbage states no newer version.
        for garbage in [
            &b"not json"[..],
            br#"{"kind": "nonsense"}"#,
            br#"{"v": "x"}"#,
        ] {
            assert!(matches!(decode(garbage), Decoded::Garbage(_)));
        }
    }

    #[test]
    fn versions_have_subjects_and_consumers_that_never_overlap() {
        assert_eq!(role_prefix(0, Role::Upload), "cim.work.upload");
        assert_eq!(role_prefix(1, Role::Upload), "cim.work.v1.upload");
        assert_eq!(role_prefix(2, Role::Upload), "cim.work.v2.upload");
        assert_eq!(consumer_name(Role::Upload, 0), "upload");
        assert_eq!(consumer_name(Role::Mirror, 1), "mirror-v1");
        // `cim.work.upload.>` cannot match `cim.work.v1.upload.…`: token 3 differs.
        for role in [Role::Mirror, Role::Upload] {
            assert!(!role.as_str().starts_with('v'));
        }
    }
}
