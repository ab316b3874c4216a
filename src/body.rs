//! Reading a response body from outside with a limit: registries, key sets, discovery
//! documents and token endpoints all answer through it.

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The body (or its `Content-Length`) is over the limit.
    #[error("the response body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body could not be read.
    #[error("the response body could not be read")]
    Read(#[source] reqwest::Error),
}

/// Reads a response body of at most `limit` bytes, whatever `Content-Length` claims.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = Vec::new();
    // The URL can carry query parameters; the error keeps only the failure itself.
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
