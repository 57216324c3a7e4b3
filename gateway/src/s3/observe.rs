//! What operators see of the S3 client: request metrics and the readiness probe.
//!
//! Every request attempt any S3 call makes (each retry too) passes through [`RequestMetrics`],
//! an SDK interceptor installed on the client once ([`S3Store::connect`]): this is the single
//! place where `cim_s3_requests_total`, `cim_s3_retries_total` and `cim_s3_throttled_total` are
//! counted, so no call site counts requests itself.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use cim_tiering::http::{cached, Check};

use super::S3Store;

/// How long the answer of the readiness probe is reused: `/readyz` may be asked every second
/// by several probes; S3 is asked at most once per this.
pub const READY_PROBE_TTL: Duration = Duration::from_secs(3);

/// Counts each S3 request attempt by tier, operation and HTTP status (see the module doc).
///
/// The tier label is shared by the clones of a store (they share the client); it is set once
/// by [`S3Store::with_tier_name`], before the store is cloned.
#[derive(Debug, Clone)]
pub(crate) struct RequestMetrics {
    tier: Arc<RwLock<String>>,
}

impl RequestMetrics {
    pub(crate) fn new(tier: &str) -> Self {
        Self {
            tier: Arc::new(RwLock::new(tier.to_string())),
        }
    }

    /// Labels every request from now on with `tier`.
    pub(crate) fn set_tier(&self, tier: &str) {
        *self.tier.write().unwrap_or_else(|e| e.into_inner()) = tier.to_string();
        cim_tiering::metrics::s3_tier_named(tier);
    }
}

impl Intercept for RequestMetrics {
    fn name(&self) -> &'static str {
        "cim-s3-request-metrics"
    }

    /// Called once per attempt, whether it got a response or not. The operation's name is the
    /// `Metadata` each operation puts in the config bag (`PutObject`, `UploadPart`, ...); the
    /// orchestrator numbers attempts from 1 in `RequestAttempts`.
    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
        let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        let status = context.response().map(|r| r.status().as_u16());
        let tier = self.tier.read().unwrap_or_else(|e| e.into_inner());
        cim_tiering::metrics::s3_attempt(&tier, operation, status, attempt);
        Ok(())
    }
}

impl S3Store {
    /// A readiness check: the tier's bucket answers a HeadBucket (deadline
    /// [`cim_tiering::http::PROBE_DEADLINE`], answer reused for [`READY_PROBE_TTL`]).
    pub fn ready_check(&self) -> Check {
        let store = self.clone();
        cached(
            READY_PROBE_TTL,
            format!(
                "s3 tier {} ({}) unreachable",
                self.tier_name(),
                self.endpoint()
            ),
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
