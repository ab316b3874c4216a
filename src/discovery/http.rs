//! What the HTTP-speaking backends (Consul, Eureka) share: a bounded body read and the
//! mapping of HTTP failures to discovery errors.

use reqwest::Response;

use super::DiscoveryError;

/// The default limit on a registry response body.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;

/// Reads a registry's response body of at most `limit` bytes.
pub(crate) async fn read_bounded(
    response: Response,
    limit: usize,
) -> Result<Vec<u8>, DiscoveryError> {
    crate::body::read_bounded(response, limit)
        .await
        .map_err(|error| match error {
            crate::body::BodyError::TooLarge(_) => DiscoveryError::malformed(error.to_string()),
            crate::body::BodyError::Read(error) => transport(error),
        })
}

/// A failed exchange with the registry: a timeout, or anything else that made it unreachable.
pub(crate) fn transport(error: reqwest::Error) -> DiscoveryError {
    // The URL can carry query parameters; keep only the failure itself.
    let error = error.without_url();
    if error.is_timeout() {
        DiscoveryError::timeout().with_source(error)
    } else {
        DiscoveryError::unavailable(error)
    }
}

/// An error status from the registry, with at most a short, printable excerpt of its body.
pub(crate) fn status_error(status: reqwest::StatusCode, body: &[u8]) -> DiscoveryError {
    let excerpt: String = String::from_utf8_lossy(&body[..body.len().min(200)])
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    DiscoveryError::unavailable(format!("the registry answered {status}: {excerpt}"))
}
