//! What the HTTP-speaking backends (Consul, Eureka) and key and token fetches share: a
//! bounded body read and the mapping of HTTP failures to discovery errors.
#![cfg_attr(not(any(feature = "consul", feature = "eureka")), allow(dead_code))]

use reqwest::Response;

use super::DiscoveryError;

/// The default limit on a registry response body.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;

/// Reads a response body of at most `limit` bytes, whatever `Content-Length` claims.
pub(crate) async fn read_bounded(
    mut response: Response,
    limit: usize,
) -> Result<Vec<u8>, DiscoveryError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn too_large(limit: usize) -> DiscoveryError {
    DiscoveryError::malformed(format!("the response body is larger than {limit} bytes"))
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
