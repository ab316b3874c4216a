//! What one logical call knows across its attempts, shared with the layers below the retry
//! layer through task-local storage (a `reqwest::Request` carries no extensions of its own).

use std::sync::{Arc, Mutex, PoisonError};

use crate::endpoint::EndpointAddr;

tokio::task_local! {
    static ATTEMPTS: Arc<Attempts>;
    static CALL: CallOptions;
}

/// Per-call options set by [`RequestBuilder`](crate::client::RequestBuilder).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CallOptions {
    /// Retry this call even if its method is not idempotent.
    pub(crate) retry_non_idempotent: bool,
}

/// The endpoints a call has tried so far.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    tried: Mutex<Vec<EndpointAddr>>,
}

impl Attempts {
    pub(crate) fn record(&self, endpoint: &EndpointAddr) {
        self.tried
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(endpoint.clone());
    }

    pub(crate) fn tried(&self, endpoint: &EndpointAddr) -> bool {
        self.tried
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(endpoint)
    }

    /// How many endpoints have been tried.
    pub(crate) fn count(&self) -> usize {
        self.tried
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub(crate) fn any(&self) -> bool {
        !self
            .tried
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// Runs `future` as one logical call whose attempts are tracked.
pub(crate) async fn track<F: std::future::Future>(attempts: Arc<Attempts>, future: F) -> F::Output {
    ATTEMPTS.scope(attempts, future).await
}

/// The current call's attempts, inside a retry layer.
pub(crate) fn current() -> Option<Arc<Attempts>> {
    ATTEMPTS.try_with(Arc::clone).ok()
}

/// Runs `future` with per-call options.
pub(crate) async fn with_options<F: std::future::Future>(
    options: CallOptions,
    future: F,
) -> F::Output {
    CALL.scope(options, future).await
}

pub(crate) fn options() -> CallOptions {
    CALL.try_with(|o| *o).unwrap_or_default()
}

/// Lets the retry layers inside `future` retry calls whose method is not idempotent (a
/// `POST` whose server de-duplicates, say). [`RequestBuilder::retry_non_idempotent`] does
/// this for one request of a [`MeshClient`](crate::MeshClient).
///
/// [`RequestBuilder::retry_non_idempotent`]: crate::client::RequestBuilder::retry_non_idempotent
pub async fn allow_non_idempotent_retries<F: std::future::Future>(future: F) -> F::Output {
    with_options(
        CallOptions {
            retry_non_idempotent: true,
        },
        future,
    )
    .await
}
