//! JWTs: outbound tokens for the mesh's calls ([`TokenSource`]: [`StaticToken`],
//! [`JwtSigner`], [`OAuth2ClientCredentials`], attached by [`AttachTokenLayer`]), and for
//! servers, strict verification (RFC 8725) with static keys or a remote JWKS (by URL, or
//! found through OpenID Connect discovery: [`Jwks::from_issuer`]), and
//! [`JwtAuthLayer`], a tower layer over `http::Request<B>` for axum, hyper and tonic.
//!
//! ```no_run
//! use std::sync::Arc;
//! use proxyless::auth::{Jwks, JwksOptions, JwtAuthLayer, Verifier};
//!
//! # fn main() -> Result<(), proxyless::Error> {
//! let jwks = Jwks::new("https://issuer.example/.well-known/jwks.json", JwksOptions::default())?;
//! let verifier = Verifier::with_jwks(jwks)
//!     .issuer("https://issuer.example")
//!     .audience("orders");
//! let layer = JwtAuthLayer::new(verifier);
//! // axum: Router::new().route(...).layer(layer)
//! # Ok(()) }
//! ```
//!
mod attach;
#[cfg(feature = "axum")]
mod extract;
mod jwks;
mod layer;
mod oauth2;
mod source;
mod verifier;

pub(crate) use attach::{Attach, TokenAttacher, insert as insert_authorization};
pub use attach::{AttachToken, AttachTokenLayer, ResponseFuture as AttachTokenFuture};
pub use jsonwebtoken::Algorithm;
pub use jwks::{Jwks, JwksOptions};
#[cfg(feature = "fuzzing")]
pub(crate) use jwks::{jwks_uri, usable_keys};
pub use layer::{JwtAuth, JwtAuthLayer};
pub use oauth2::{ClientAuth, OAuth2Builder, OAuth2ClientCredentials};
#[cfg(feature = "fuzzing")]
pub(crate) use oauth2::{error_code, token_response};
pub use source::{BearerToken, JwtSigner, JwtSignerBuilder, SigningKey, StaticToken, TokenSource};
#[cfg(feature = "fuzzing")]
pub(crate) use verifier::precheck;
pub use verifier::{Claims, MAX_TOKEN_BYTES, Rejection, Verifier, VerifyingKey};

/// The error for a PEM or DER key given with an HMAC algorithm.
fn not_public_key(format: &str) -> crate::Error {
    crate::Error::builder(
        "auth.algorithm",
        format!("{format} keys are for public-key algorithms, not HMAC"),
    )
}

/// The least HMAC key length for `algorithm`, in bytes: its hash's output (RFC 7518 §3.2).
fn hmac_len(algorithm: Algorithm) -> Option<usize> {
    match algorithm {
        Algorithm::HS256 => Some(32),
        Algorithm::HS384 => Some(48),
        Algorithm::HS512 => Some(64),
        _ => None,
    }
}
