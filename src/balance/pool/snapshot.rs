//! One service's published state: its endpoints, what is known of each, and the selection
//! table for their effective weights, read by every call without a lock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{Pool, Safety};
use crate::balance::Selection;
use crate::balance::health::{EndpointStats, HealthScoring};
use crate::classify::Outcome;
use crate::endpoint::{Endpoint, ServiceName};
use crate::error::{Error, Kind};
use crate::rng::PickRng;

/// One service's snapshot: its endpoints, what the mesh has learnt of each, and the
/// selection table built for their effective weights.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) service: ServiceName,
    pub(crate) endpoints: Arc<[Endpoint]>,
    pub(crate) stats: Arc<[Arc<EndpointStats>]>,
    pub(crate) effective: Box<[u32]>,
    pub(crate) selection: Selection,
    pub(crate) safety: Safety,
    /// The most requests in flight to the service, when its backend sets one, and the
    /// service's count of them (shared by its snapshots; counted only under a maximum).
    pub(crate) max_requests: Option<u32>,
    pub(crate) requests: Arc<AtomicU32>,
    pub(super) pool: Weak<Pool>,
}

impl Drop for Snapshot {
    /// Gives the records of the endpoints this snapshot alone listed to its service, for the
    /// next update's new endpoints, once no snapshot (a rebuilt one shares the records) and
    /// no call (a call holds the snapshot it picked from) holds them.
    fn drop(&mut self) {
        let Some(stats) = Arc::get_mut(&mut self.stats) else {
            return;
        };
        if let Some(pool) = self.pool.upgrade() {
            pool.keep_spare(stats);
        }
    }
}

impl Snapshot {
    /// Rewrites `url` to endpoint `index`, from what the endpoint remembers when it can;
    /// with `keep`, puts the logical URL there (see
    /// [`Rewrites::rewrite_keeping`](crate::balance::rewrite::Rewrites::rewrite_keeping)).
    #[inline]
    pub(crate) fn rewrite(
        &self,
        index: usize,
        url: &mut url::Url,
        keep: Option<&mut Option<url::Url>>,
    ) {
        self.stats[index]
            .rewrites
            .rewrite_keeping(url, &self.endpoints[index], keep);
    }

    /// Records a call's outcome against its endpoint: moving averages, and ejection after a
    /// run of failures.
    ///
    /// The request path: atomics only. The pool is reached (a weak reference upgraded) only
    /// when a run of failures calls for an ejection.
    pub(crate) fn record(&self, index: usize, outcome: Outcome, latency: Duration) {
        let alpha = self
            .safety
            .scoring
            .map_or(HealthScoring::default().smoothing, |s| s.smoothing);
        let now = crate::clock::now();
        let run = self.stats[index].record(outcome, latency, alpha, now);
        if self.selection.is_peak_ewma() && outcome != Outcome::Ignored {
            self.stats[index].observe_peak(latency, now, self.safety.peak_ewma_decay);
        }
        if let Some(detection) = self.safety.detection
            && run == detection.consecutive_failures
            && let Some(pool) = self.pool.upgrade()
        {
            pool.eject(self, index, &detection);
        }
    }

    /// Takes a place among the service's requests in flight, when its backend caps them;
    /// the error when they are at the cap. [`Snapshot::end`] gives the place back.
    #[inline]
    pub(crate) fn admit(&self) -> Result<(), Error> {
        match self.max_requests {
            None => Ok(()),
            Some(max) => self.admit_under(max),
        }
    }

    #[inline(never)]
    fn admit_under(&self, max: u32) -> Result<(), Error> {
        if self.requests.fetch_add(1, Ordering::Acquire) >= max {
            self.requests.fetch_sub(1, Ordering::Release);
            return Err(Error::new(Kind::Overloaded)
                .with_message(format!(
                    "{max} requests in flight, the service's max_requests"
                ))
                .with_service(self.service.clone()));
        }
        Ok(())
    }

    /// A request to endpoint `index` began; [`Snapshot::end`] must follow once.
    #[inline]
    pub(crate) fn begin(&self, index: usize) {
        self.stats[index].begin();
    }

    /// A request to endpoint `index` ended, completed or cancelled; its place among the
    /// service's requests, if [`Snapshot::admit`] took one, is given back.
    #[inline]
    pub(crate) fn end(&self, index: usize) {
        self.stats[index].end();
        if self.max_requests.is_some() {
            self.requests.fetch_sub(1, Ordering::Release);
        }
    }

    /// Pauses an endpoint that pushed back.
    pub(crate) fn pushback(&self, index: usize, time: Duration) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let time = time.min(
            self.safety
                .detection
                .map_or(crate::classify::MAX_PUSHBACK, |d| d.max_ejection),
        );
        self.stats[index].pause(pool.epoch, Instant::now(), time);
        tracing::info!(
            service = %self.service,
            endpoint = %self.endpoints[index].addr(),
            pause = ?time,
            "endpoint pushed back; pausing it"
        );
        pool.rebuild();
    }

    /// Whether an endpoint other than `index`, and than those `tried`, may take traffic now:
    /// listed as eligible, neither ejected nor paused.
    pub(crate) fn has_other(&self, index: usize, tried: &crate::attempt::Tried) -> bool {
        let Some(pool) = self.pool.upgrade() else {
            return false;
        };
        let now = Instant::now();
        (0..self.endpoints.len()).any(|i| {
            i != index
                && self.endpoints[i].is_eligible()
                && !self.stats[i].is_paused(pool.epoch, now)
                && !self.stats[i].is_ejected(pool.epoch, now)
                && !tried.contains(self.endpoints[i].addr())
        })
    }

    /// `index` if the call has not tried that endpoint yet; otherwise another endpoint that
    /// may take traffic and that it has not tried, preferring the same priority tier; `index`
    /// again when it has tried them all.
    pub(crate) fn untried(&self, index: usize, attempts: &crate::attempt::Tried) -> usize {
        if !attempts.contains(self.endpoints[index].addr()) {
            return index;
        }
        let n = self.endpoints.len();
        // From the service's source: seeded with the client's `rng_seed`, reproducible.
        let start = match self.pool.upgrade() {
            Some(pool) => pool.rng.next_u64(),
            None => PickRng::Thread.next_u64(),
        } as usize
            % n;
        let candidates = || (0..n).map(|k| (start + k) % n);
        // An endpoint that may take traffic now: listed as eligible, and neither ejected
        // nor paused (its effective weight, unless in panic mode, is 0 then).
        let fresh = |i: &usize| {
            let endpoint = &self.endpoints[*i];
            self.effective[*i] > 0 && !attempts.contains(endpoint.addr())
        };
        let tier = self.endpoints[index].priority();
        candidates()
            .filter(fresh)
            .find(|&i| self.endpoints[i].priority() == tier)
            .or_else(|| candidates().find(fresh))
            .unwrap_or(index)
    }
}
