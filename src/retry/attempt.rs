//! Per-call options of the retry layers, which must last across the call's awaits: task-local.
//! (What one attempt carries to the router is [`crate::attempt`].)

tokio::task_local! {
    static CALL: CallOptions;
}

/// Per-call options set by [`RequestBuilder`](crate::client::RequestBuilder).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CallOptions {
    /// Retry this call even if its method is not idempotent.
    pub(crate) retry_non_idempotent: bool,
}

impl CallOptions {
    /// Whether these are the options a call has when none are set.
    pub(crate) fn is_default(&self) -> bool {
        !self.retry_non_idempotent
    }
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
