//! Typed label values and what a pass reports: the roles, outcomes and backlog the helpers take.

use std::time::Duration;

use crate::work::Role as WorkRole;

/// The process a metric comes from: the `role` label of [`BUILD_INFO`](super::BUILD_INFO) and [`LAST_SUCCESS`](super::LAST_SUCCESS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `cim-storage run`.
    Manager,
    /// `cim-storage mirror`.
    Mirror,
    /// `cim-gateway upload`.
    Upload,
    /// `cim-gateway restore` (one-shot).
    Restore,
    /// `cim-gateway gc` (one-shot).
    Gc,
    /// `cim-gateway scrub` (one-shot).
    Scrub,
    /// `cim-gateway serve` (the `cim.storage.object.ensure` service).
    Serve,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Mirror => "mirror",
            Role::Upload => "upload",
            Role::Restore => "restore",
            Role::Gc => "gc",
            Role::Scrub => "scrub",
            Role::Serve => "serve",
        }
    }
}

impl From<WorkRole> for Role {
    fn from(role: WorkRole) -> Self {
        match role {
            WorkRole::Mirror => Role::Mirror,
            WorkRole::Upload => Role::Upload,
        }
    }
}

/// How a work item's handling ended: the `outcome` label of [`WORK_ITEMS`](super::WORK_ITEMS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkOutcome {
    /// Handled; acked.
    Done,
    /// Failed; offered again after a delay.
    Retry,
    /// Failed `max_deliver` times (or permanently); terminated. The manager queues it again
    /// after the duplicate window.
    GivenUp,
    /// Undecodable; terminated.
    Invalid,
    /// Of a newer format; left for a newer role.
    Newer,
    /// No progress for `ack_wait`; abandoned and retried.
    Stalled,
    /// In flight at shutdown; released for redelivery.
    Released,
}

impl WorkOutcome {
    /// Every outcome, for registering the series at zero.
    pub const ALL: [WorkOutcome; 7] = [
        WorkOutcome::Done,
        WorkOutcome::Retry,
        WorkOutcome::GivenUp,
        WorkOutcome::Invalid,
        WorkOutcome::Newer,
        WorkOutcome::Stalled,
        WorkOutcome::Released,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkOutcome::Done => "done",
            WorkOutcome::Retry => "retry",
            WorkOutcome::GivenUp => "given_up",
            WorkOutcome::Invalid => "invalid",
            WorkOutcome::Newer => "newer",
            WorkOutcome::Stalled => "stalled",
            WorkOutcome::Released => "released",
        }
    }
}

/// What `restore` did with one object: the `outcome` label of [`RESTORE_OBJECTS`](super::RESTORE_OBJECTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// Restored (verified), or already present.
    Restored,
    /// Left alone (a different version on the target, a deleted object, a newer format).
    Skipped,
    /// Could not be restored.
    Failed,
}

impl RestoreOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreOutcome::Restored => "restored",
            RestoreOutcome::Skipped => "skipped",
            RestoreOutcome::Failed => "failed",
        }
    }
}

/// The objects due for one policy and not yet moved, as one pass of the manager saw them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// How many.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// How long the one due longest has been due (zero when none is).
    pub oldest_due: Duration,
}

impl Backlog {
    /// Adds one object of `bytes`, due for `due_for`.
    pub fn add(&mut self, bytes: u64, due_for: Duration) {
        self.objects += 1;
        self.bytes += bytes;
        self.oldest_due = self.oldest_due.max(due_for);
    }
}
