//! What is learnt of each endpoint, kept across updates: the records of endpoints that stay
//! are carried to the next snapshot, and those of endpoints that go are reset and reused.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::{Pool, Snapshot};
use crate::balance::health::EndpointStats;
use crate::endpoint::{Endpoint, EndpointAddr};
use crate::series::EndpointSeries;

impl Pool {
    pub(super) fn lock_spare(&self) -> std::sync::MutexGuard<'_, Vec<Arc<EndpointStats>>> {
        // A list of records, consistent after every statement.
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the records in `stats` (a snapshot's, which it alone held) that nothing else
    /// holds to the spares, reset, up to as many as the last update listed: an update
    /// that replaces endpoints gives the new ones these, rather than allocating as many
    /// records while freeing as many: on a heap a busy process has fragmented, the
    /// allocator's slow paths were most of a large update (BENCHMARKS.md, "What was
    /// optimised"). Each record is reset here, in the one pass that touches it.
    pub(super) fn keep_spare(&self, stats: &mut [Arc<EndpointStats>]) {
        let cap = self.listed.load(Ordering::Relaxed);
        let mut spare = self.lock_spare();
        // A few records at a time, touched first (see `EndpointStats::touch`): the records
        // of a snapshot lie all over a heap that has been in use for a while.
        let mut touched = 0;
        for chunk in stats.chunks_mut(16) {
            if spare.len() >= cap {
                break;
            }
            touched ^= chunk.iter().fold(0, |all, record| all ^ record.touch());
            for record in chunk {
                if spare.len() >= cap {
                    break;
                }
                // Unique: no other snapshot lists it, and none can reach it through this one.
                if let Some(unique) = Arc::get_mut(record) {
                    *unique = EndpointStats::default();
                    spare.push(std::mem::replace(record, self.placeholder.clone()));
                }
            }
        }
        std::hint::black_box(touched);
    }

    /// A fresh record for a newly listed endpoint: a spare one (reset, and held by nothing
    /// else, as `keep_spare` left it), or a new one.
    pub(super) fn fresh_record(
        &self,
        spare: &mut Vec<Arc<EndpointStats>>,
        endpoint: &Endpoint,
    ) -> Arc<EndpointStats> {
        let series = self.series(endpoint);
        match spare.pop() {
            // Touched only when it takes a metric series.
            Some(mut record) if series.is_some() => match Arc::get_mut(&mut record) {
                Some(reused) => {
                    reused.series = series;
                    record
                }
                None => Arc::new(EndpointStats::with_series(series)),
            },
            Some(record) => record,
            None => Arc::new(EndpointStats::with_series(series)),
        }
    }

    /// The metric series of a newly listed endpoint, when per-endpoint labels are on.
    pub(super) fn series(&self, endpoint: &Endpoint) -> Option<Arc<EndpointSeries>> {
        let labels = self.labels.as_ref()?;
        // The labels are only a cache of handles: a panic elsewhere leaves them usable.
        let mut labels = labels.lock().unwrap_or_else(PoisonError::into_inner);
        Some(labels.series(endpoint.addr()))
    }
}

/// The records of the endpoints of the snapshot before, found by address for the next one.
///
/// Both lists are sorted by address (the registry publishes them so), and the next one's
/// addresses are asked for in order, so one pass over the previous list finds them all: a
/// 10 000-endpoint update compares at most 20 000 addresses, where a binary search per
/// endpoint compared about 125 000.
pub(super) struct Carried<'a> {
    endpoints: &'a [Endpoint],
    stats: &'a [Arc<EndpointStats>],
    /// The first of `endpoints` not yet passed.
    next: usize,
}

impl<'a> Carried<'a> {
    pub(super) fn new(previous: Option<&'a Snapshot>) -> Self {
        match previous {
            Some(previous) => Carried {
                endpoints: &previous.endpoints,
                stats: &previous.stats,
                next: 0,
            },
            None => Carried {
                endpoints: &[],
                stats: &[],
                next: 0,
            },
        }
    }

    /// The record of the endpoint at `addr`, if the snapshot before listed it. Each call must
    /// ask for an address after the one before.
    pub(super) fn find(&mut self, addr: &EndpointAddr) -> Option<Arc<EndpointStats>> {
        while let Some(endpoint) = self.endpoints.get(self.next) {
            match endpoint.addr().cmp(addr) {
                std::cmp::Ordering::Less => self.next += 1,
                std::cmp::Ordering::Equal => return self.stats.get(self.next).cloned(),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }
}
