//! A backend's answer checked and put in canonical order before it is published.

use super::*;

/// Checks a snapshot's bounds and addresses, drops duplicate addresses (keeping the first)
/// and sorts by address, so that equal sets compare equal whatever order a backend used.
///
/// An endpoint whose address cannot be used joins the answer's rejected instances; the
/// answer fails only when it has instances and every one was rejected.
pub(super) fn canonical(discovered: Discovered) -> Result<Valid, DiscoveryError> {
    let Discovered {
        mut endpoints,
        mut rejected,
        policy,
    } = discovered;
    if endpoints.len() + rejected.len() > MAX_ENDPOINTS {
        return Err(DiscoveryError::malformed(format!(
            "{} instances exceed the limit of {MAX_ENDPOINTS}",
            endpoints.len() + rejected.len()
        )));
    }
    if endpoints.iter().any(|e| e.addr().validate().is_err()) {
        let mut answer = Discovered::new(Vec::new());
        for endpoint in endpoints {
            match endpoint.addr().validate() {
                Ok(()) => answer.endpoints.push(endpoint),
                Err(why) => answer.reject(
                    endpoint.addr().to_string(),
                    RejectReason::of_address(endpoint.addr().port()),
                    why,
                ),
            }
        }
        endpoints = answer.endpoints;
        rejected.append(&mut answer.rejected);
    }
    if endpoints.is_empty()
        && let Some(first) = rejected.first()
    {
        return Err(DiscoveryError::malformed(format!(
            "every one of its {} instances was rejected; the first, {first}",
            rejected.len()
        )));
    }
    // Backends often list in order already: one pass proves it, for a sort and a dedup.
    if !endpoints.is_sorted_by(|a, b| a.addr() < b.addr()) {
        endpoints.sort_by(|a, b| a.addr().cmp(b.addr()));
        endpoints.dedup_by(|later, first| later.addr() == first.addr());
    }
    Ok(Valid {
        endpoints: endpoints.into(),
        rejected,
        policy,
    })
}

/// [`canonical`]'s endpoints, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn canonical_for_fuzzing(
    discovered: Discovered,
) -> Result<Arc<[Endpoint]>, DiscoveryError> {
    canonical(discovered).map(|valid| valid.endpoints)
}

/// A backend's answer checked by [`canonical`]: endpoints to publish, instances skipped.
pub(super) struct Valid {
    pub(super) endpoints: Arc<[Endpoint]>,
    pub(super) rejected: Vec<RejectedInstance>,
    pub(super) policy: Option<ServicePolicy>,
}
