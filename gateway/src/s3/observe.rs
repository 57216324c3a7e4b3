//! What operators see of the S3 client: the readiness probe.

use std::sync::Arc;
use std::time::Duration;

use cim_tiering::http::{cached, Check};

use super::S3Store;

/// How long the answer of the readiness probe is reused: `/readyz` may be asked every second
/// by several probes; S3 is asked at most once per this.
pub const READY_PROBE_TTL: Duration = Duration::from_secs(3);

impl S3Store {
    /// A readiness check: the tier's bucket answers a HeadBucket (deadline
    /// [`cim_tiering::http::PROBE_DEADLINE`], answer reused for [`READY_PROBE_TTL`]).
    pub fn ready_check(&self) -> Check {
        let store = self.clone();
        cached(
            READY_PROBE_TTL,
            Arc::new(move || {
                let store = store.clone();
                Box::pin(async move {
                    store.check_bucket().await.map_err(|e| {
                        format!(
                            "s3 tier {} ({}) unreachable: {e}",
                            store.tier_name(),
                            store.endpoint()
                        )
                    })
                })
            }),
        )
    }
}
