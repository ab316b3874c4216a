//! One attempt of a call, as the router sees it: the endpoints the call has tried (so that a
//! retry goes elsewhere) and where the call's logical URL goes (so that a retry can send it
//! again), in one value, [`Attempt`], passed to the router's call as pingora passes its
//! `select_with` arguments.
//!
//! A service's fused stack passes the attempt explicitly. Standalone tower layers cannot pass
//! anything beside the request through `Service::call` (a `reqwest::Request` carries no
//! extensions of its own), so a standalone retry layer lends its list to the layers below
//! while it calls them, synchronously, which is when a balance layer picks: a thread-local
//! slot holds it for that call and no longer.

use std::cell::RefCell;

use crate::endpoint::EndpointAddr;

thread_local! {
    /// The tried list a retry layer lends while it calls the layers below, on this thread.
    static LENT: RefCell<Option<Tried>> = const { RefCell::new(None) };
}

/// What the router's call of one attempt carries besides the request.
#[derive(Default)]
pub(crate) struct Attempt<'a> {
    /// The endpoints the call tried before this attempt, which it records its own in. `None`:
    /// the list a standalone retry layer lent, if any (see the module's documentation).
    pub(crate) tried: Option<&'a mut Tried>,
    /// Where the router puts the request's logical URL, for a call that may be retried.
    pub(crate) logical_url: Option<&'a mut Option<url::Url>>,
}

/// A short list kept inline for the first attempt, which is all most calls make.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    first: Option<EndpointAddr>,
    rest: Vec<EndpointAddr>,
    /// The list of a hedge: `first` is the endpoint of the call it backs up.
    hedge: bool,
}

impl Tried {
    /// The list of a hedge of a call waiting on `endpoint`: the hedge goes elsewhere, and
    /// its first pick is not a retry.
    pub(crate) fn avoiding(endpoint: &EndpointAddr) -> Tried {
        Tried {
            first: Some(endpoint.clone()),
            rest: Vec::new(),
            hedge: true,
        }
    }

    /// Whether the next pick is a retry: one follows an attempt, except a hedge's first.
    pub(crate) fn next_is_retry(&self) -> bool {
        !(self.is_empty() || (self.hedge && self.rest.is_empty()))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(crate) fn contains(&self, endpoint: &EndpointAddr) -> bool {
        self.first.as_ref() == Some(endpoint) || self.rest.contains(endpoint)
    }

    /// Records the endpoint of a call's first attempt, made without the list lent.
    pub(crate) fn record_first(&mut self, endpoint: &EndpointAddr) {
        if self.is_empty() {
            self.push(endpoint);
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// The endpoint of the last attempt.
    pub(crate) fn last(&self) -> Option<&EndpointAddr> {
        self.rest.last().or(self.first.as_ref())
    }

    fn push(&mut self, endpoint: &EndpointAddr) {
        match self.first {
            None => self.first = Some(endpoint.clone()),
            Some(_) => self.rest.push(endpoint.clone()),
        }
    }
}

impl Tried {
    /// Chooses the next attempt's endpoint with `choose`, which sees those tried so far,
    /// and records it; returns it and the attempt's number (1 for the first).
    pub(crate) fn next<'a>(
        &mut self,
        choose: impl FnOnce(&Tried) -> usize,
        addr: impl FnOnce(usize) -> &'a EndpointAddr,
    ) -> (usize, usize) {
        let index = choose(self);
        self.push(addr(index));
        (index, self.len())
    }
}

/// Lends `tried` to the layers below a retry layer, while it calls them, until the returned
/// guard is dropped: dropping it takes the list back, with what they recorded, and restores
/// the list of a retry layer further out (on unwinding too). A guard, not a closure, so that
/// the request is not moved through one.
pub(crate) fn lend(tried: &mut Tried) -> Lent<'_> {
    let outer = LENT.with(|lent| lent.replace(Some(std::mem::take(tried))));
    Lent { tried, outer }
}

/// The guard of [`lend`].
pub(crate) struct Lent<'a> {
    tried: &'a mut Tried,
    outer: Option<Tried>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let outer = self.outer.take();
        *self.tried = LENT.with(|lent| lent.replace(outer)).unwrap_or_default();
    }
}

/// Whether a retry layer has lent its list to the layers it is calling now.
pub(crate) fn is_lent() -> bool {
    LENT.with(|lent| lent.borrow().is_some())
}

/// Runs `f` on the list of endpoints the current call has tried, while a retry layer calls
/// the layers below; `None` outside one.
pub(crate) fn with_current<R>(f: impl FnOnce(&mut Tried) -> R) -> Option<R> {
    LENT.with(|lent| lent.borrow_mut().as_mut().map(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> EndpointAddr {
        EndpointAddr::Ip(([127, 0, 0, 1], port).into())
    }

    #[test]
    fn the_list_is_lent_only_while_the_retry_layer_calls() {
        let endpoints = [addr(1), addr(2)];
        assert!(with_current(|_| ()).is_none(), "no list outside a call");
        let mut tried = Tried::default();
        let first = {
            let _lent = lend(&mut tried);
            with_current(|t| t.next(|_| 0, |i| &endpoints[i])).expect("lent")
        };
        assert_eq!(first, (0, 1));
        assert!(tried.contains(&endpoints[0]) && !tried.contains(&endpoints[1]));
        assert!(with_current(|_| ()).is_none(), "taken back");
        // The second attempt sees the first.
        let second = {
            let _lent = lend(&mut tried);
            with_current(|t| {
                t.next(
                    |t| usize::from(t.contains(&endpoints[0])),
                    |i| &endpoints[i],
                )
            })
        };
        assert_eq!(second, Some((1, 2)));
        assert!(tried.contains(&endpoints[1]));
    }

    #[test]
    fn a_nested_list_and_a_panic_leave_the_outer_list_whole() {
        let endpoints = [addr(1), addr(2)];
        let mut outer = Tried::default();
        {
            let _lent = lend(&mut outer);
            with_current(|t| t.next(|_| 0, |i| &endpoints[i]));
            let mut inner = Tried::default();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _lent = lend(&mut inner);
                with_current(|t| t.next(|_| 1, |i| &endpoints[i]));
                panic!("below the inner retry layer");
            }));
            assert!(inner.contains(&endpoints[1]), "kept through the panic");
            assert!(!inner.contains(&endpoints[0]));
            // The outer list is lent again.
            assert_eq!(with_current(|t| t.len()), Some(1));
        }
        assert!(outer.contains(&endpoints[0]) && !outer.contains(&endpoints[1]));
        assert!(with_current(|_| ()).is_none());
    }
}
