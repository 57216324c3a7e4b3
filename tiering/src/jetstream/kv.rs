//! Opening the KV buckets a role keeps its state in (catalog, leases, write journal, access
//! records, status), creating one the first time.
//!
//! One way to do it for every bucket: a bucket is created only when JetStream says it does not
//! exist. Any other failure to open it (a timeout, a cluster still electing its leader) is
//! returned as it is — creating on those would race an existing bucket, and with a different
//! configuration fail confusingly — and the caller decides whether to ask again (at a role's
//! start, [`crate::retry::retry`] with [`crate::retry::Backoff::STARTUP`] does).

use async_nats::jetstream::{
    self,
    context::{GetStreamError, GetStreamErrorKind},
    kv,
};

use crate::error::BoxError;

/// Opens KV bucket `config.bucket`, creating it with `config` if it does not exist. An
/// existing bucket is used as it is (its configuration is neither compared nor changed). Two
/// processes creating the same bucket at once both succeed: JetStream accepts a create
/// identical to the existing stream.
pub async fn open_or_create(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, BoxError> {
    match js.get_key_value(&config.bucket).await {
        Ok(store) => Ok(store),
        Err(e) if is_not_found(&e) => Ok(js.create_key_value(config).await?),
        Err(e) => Err(e.into()),
    }
}

/// Whether opening failed because the bucket's stream does not exist (anywhere in the error's
/// source chain: async-nats wraps the stream lookup's error).
fn is_not_found(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<GetStreamError>() {
            if let GetStreamErrorKind::JetStream(js) = e.kind() {
                return super::is_stream_not_found(&js);
            }
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{
        KeyValueError, KeyValueErrorKind, RequestError, RequestErrorKind,
    };

    fn api_error(code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 503, "err_code": code, "description": "test"
        }))
        .unwrap()
    }

    #[test]
    fn only_a_missing_stream_is_created() {
        let missing = GetStreamError::new(GetStreamErrorKind::JetStream(api_error(10059)));
        // As get_key_value returns it.
        let wrapped = KeyValueError::with_source(KeyValueErrorKind::GetBucket, missing);
        assert!(is_not_found(&wrapped));
        // JetStream temporarily unavailable; a timed-out lookup.
        let unavailable = GetStreamError::new(GetStreamErrorKind::JetStream(api_error(10008)));
        assert!(!is_not_found(&KeyValueError::with_source(
            KeyValueErrorKind::GetBucket,
            unavailable
        )));
        let timed_out = GetStreamError::with_source(
            GetStreamErrorKind::Request,
            RequestError::new(RequestErrorKind::TimedOut),
        );
        assert!(!is_not_found(&KeyValueError::with_source(
            KeyValueErrorKind::GetBucket,
            timed_out
        )));
    }
}
