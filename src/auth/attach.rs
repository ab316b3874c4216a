use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use reqwest::header::AUTHORIZATION;
use tower::{Layer, Service};

use super::source::TokenSource;
use crate::discovery::BoxFuture;
use crate::endpoint::{ServiceName, validate_service_name};
use crate::error::Error;

/// Attaches `Authorization: Bearer …` from a [`TokenSource`] to each request, with the
/// logical service of its URL as the audience. It sits above the balance layer, where the
/// URL still names the service. A request that already carries `Authorization` is left as it
/// is, unless [`AttachTokenLayer::replace_existing`] says otherwise.
#[derive(Clone)]
pub struct AttachTokenLayer {
    source: Arc<dyn TokenSource>,
    replace_existing: bool,
}

impl std::fmt::Debug for AttachTokenLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachTokenLayer")
            .field("replace_existing", &self.replace_existing)
            .finish_non_exhaustive()
    }
}

impl AttachTokenLayer {
    /// Tokens from `source`.
    pub fn new(source: Arc<dyn TokenSource>) -> Self {
        AttachTokenLayer {
            source,
            replace_existing: false,
        }
    }

    /// Replaces an `Authorization` header the caller set.
    pub fn replace_existing(mut self, replace: bool) -> Self {
        self.replace_existing = replace;
        self
    }
}

impl<S> Layer<S> for AttachTokenLayer {
    type Service = AttachToken<S>;

    fn layer(&self, inner: S) -> AttachToken<S> {
        AttachToken {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AttachTokenLayer`] makes.
#[derive(Clone, Debug)]
pub struct AttachToken<S> {
    inner: S,
    layer: AttachTokenLayer,
}

impl<S> Service<reqwest::Request> for AttachToken<S>
where
    S: Service<reqwest::Request> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: reqwest::Request) -> Self::Future {
        let keep = request.headers().contains_key(AUTHORIZATION) && !self.layer.replace_existing;
        let host = request
            .url()
            .host_str()
            .filter(|host| validate_service_name(host).is_ok());
        let Some(host) = host.filter(|_| !keep) else {
            return ResponseFuture::direct(self.inner.call(request));
        };
        // The fast path: a token ready now (cached and fresh) goes on without a wait.
        if let Some(token) = self.layer.source.ready(host) {
            request
                .headers_mut()
                .insert(AUTHORIZATION, token.header_value().clone());
            return ResponseFuture::direct(self.inner.call(request));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        ResponseFuture::waiting(Box::pin(async move {
            let service = request
                .url()
                .host_str()
                .and_then(|host| ServiceName::new(host).ok());
            if let Some(service) = service {
                let token = layer.source.token(&service).await?;
                request
                    .headers_mut()
                    .insert(AUTHORIZATION, token.header_value().clone());
            }
            inner.call(request).await.map_err(Into::into)
        }))
    }
}

pin_project! {
    /// The future of [`AttachToken`].
    pub struct ResponseFuture<F, R> {
        #[pin]
        state: State<F, R>,
    }
}

pin_project! {
    #[project = Projection]
    enum State<F, R> {
        // The token was ready; the inner service was called at once.
        Direct { #[pin] future: F },
        // Waiting for a token, then for the call.
        Waiting { future: BoxFuture<'static, Result<R, Error>> },
    }
}

impl<F, R> ResponseFuture<F, R> {
    fn direct(future: F) -> Self {
        ResponseFuture {
            state: State::Direct { future },
        }
    }

    fn waiting(future: BoxFuture<'static, Result<R, Error>>) -> Self {
        ResponseFuture {
            state: State::Waiting { future },
        }
    }
}

impl<F, R> std::fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("attach::ResponseFuture")
    }
}

impl<F, R, E> std::future::Future for ResponseFuture<F, R>
where
    F: std::future::Future<Output = Result<R, E>>,
    E: Into<Error>,
{
    type Output = Result<R, Error>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Projection::Direct { future } => future.poll(cx).map_err(Into::into),
            Projection::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}
