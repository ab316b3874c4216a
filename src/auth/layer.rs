use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

use super::{Rejection, Verifier};
use crate::boxed::BoxFuture;

/// Verifies the bearer token of every request before it reaches the inner service.
///
/// A valid token's [`Claims`](super::Claims) go into the request's extensions. A missing or
/// invalid one gets `401 Unauthorized` with an empty body and `WWW-Authenticate: Bearer`
/// (plus `error="invalid_token"` when a token was sent), as RFC 6750 §3 says, and nothing
/// that would tell an attacker which check failed; the reason is logged at `debug`.
#[derive(Clone, Debug)]
pub struct JwtAuthLayer {
    verifier: Arc<Verifier>,
}

impl JwtAuthLayer {
    /// Verifies with `verifier`.
    pub fn new(verifier: Verifier) -> Self {
        JwtAuthLayer {
            verifier: Arc::new(verifier),
        }
    }
}

impl<S> Layer<S> for JwtAuthLayer {
    type Service = JwtAuth<S>;

    fn layer(&self, inner: S) -> JwtAuth<S> {
        JwtAuth {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// The service [`JwtAuthLayer`] makes.
#[derive(Clone, Debug)]
pub struct JwtAuth<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

fn bearer(request: &Request<impl Sized>) -> Result<&str, Rejection> {
    let value = request
        .headers()
        .get(AUTHORIZATION)
        .ok_or(Rejection::Missing)?
        .to_str()
        .map_err(|_| Rejection::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(Rejection::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::Missing);
    }
    Ok(token.trim())
}

fn unauthorized<B: Default>(rejection: Rejection) -> Response<B> {
    let challenge = match rejection {
        Rejection::Missing => "Bearer",
        _ => "Bearer error=\"invalid_token\"",
    };
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

impl<S, B, R> Service<Request<B>> for JwtAuth<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let verified = match bearer(&request) {
                Ok(token) => verifier.verify(token).await,
                Err(rejection) => Err(rejection),
            };
            match verified {
                Ok(claims) => {
                    request.extensions_mut().insert(claims);
                    inner.oneshot(request).await
                }
                Err(rejection) => {
                    tracing::debug!(
                        reason = rejection.label(),
                        "request refused: bad bearer token"
                    );
                    metrics::counter!(crate::names::VERIFICATION_FAILURES, "reason" => rejection.label())
                        .increment(1);
                    Ok(unauthorized(rejection))
                }
            }
        })
    }
}
