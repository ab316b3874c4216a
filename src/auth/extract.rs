//! [`Claims`] as an axum extractor (feature `axum`).

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{HeaderValue, StatusCode, header::WWW_AUTHENTICATE};

use super::Claims;

/// Extracts the claims [`JwtAuthLayer`](super::JwtAuthLayer) verified. Without the layer in
/// front of the route there are none, and the request gets `401`.
impl<S: Send + Sync> FromRequestParts<S> for Claims {
    type Rejection = (StatusCode, [(http::HeaderName, HeaderValue); 1]);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Claims>().cloned().ok_or((
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        ))
    }
}
