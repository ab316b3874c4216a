//! What one logical call knows across its attempts, shared with the layers below the retry
//! layer through task-local storage (a `reqwest::Request` carries no extensions of its own).
//!
//! The retry layer lends the list of endpoints tried to the layers below only while it calls
//! them, which is when a balance layer picks: no scope is entered on each poll.

use std::cell::RefCell;

use crate::endpoint::EndpointAddr;

tokio::task_local! {
    static ATTEMPTS: Attempts;
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

/// The endpoints a call has tried so far, while the retry layer calls the layers below.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    tried: RefCell<Tried>,
}

/// A short list kept inline for the first attempt, which is all most calls make.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    first: Option<EndpointAddr>,
    rest: Vec<EndpointAddr>,
}

impl Tried {
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(crate) fn contains(&self, endpoint: &EndpointAddr) -> bool {
        self.first.as_ref() == Some(endpoint) || self.rest.contains(endpoint)
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn push(&mut self, endpoint: &EndpointAddr) {
        match self.first {
            None => self.first = Some(endpoint.clone()),
            Some(_) => self.rest.push(endpoint.clone()),
        }
    }
}

impl Attempts {
    /// Chooses the next attempt's endpoint with `choose`, which sees those tried so far,
    /// and records it; returns it and the attempt's number (1 for the first).
    pub(crate) fn next<'a>(
        &self,
        choose: impl FnOnce(&Tried) -> usize,
        addr: impl FnOnce(usize) -> &'a EndpointAddr,
    ) -> (usize, usize) {
        let mut tried = self.tried.borrow_mut();
        let index = choose(&tried);
        tried.push(addr(index));
        (index, tried.len())
    }
}

/// Runs `call`, which calls the layers below a retry layer, with `tried` lent to them; what
/// they record is in `tried` afterwards.
pub(crate) fn tracked<R>(tried: &mut Tried, call: impl FnOnce() -> R) -> R {
    let attempts = Attempts {
        tried: RefCell::new(std::mem::take(tried)),
    };
    ATTEMPTS.sync_scope(attempts, || {
        let result = call();
        *tried = ATTEMPTS.with(|attempts| attempts.tried.take());
        result
    })
}

/// Runs `f` on the current call's attempts, inside a retry layer.
pub(crate) fn with_current<R>(f: impl FnOnce(&Attempts) -> R) -> Option<R> {
    ATTEMPTS.try_with(|attempts| f(attempts)).ok()
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
