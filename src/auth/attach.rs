use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use tower::{Layer, Service};

use super::source::TokenSource;
use crate::boxed::BoxFuture;
use crate::endpoint::{ServiceName, validate_service_name};
use crate::error::Error;

/// Attaches `Authorization: Bearer …` from a [`TokenSource`] to each request, with the
/// logical service of its URL as the audience. It sits above the balance layer, where the
/// URL still names the service. A request that already carries `Authorization` is left as it
/// is, unless [`AttachTokenLayer::replace_existing`] says otherwise.
#[derive(Clone)]
pub struct AttachTokenLayer {
    attacher: TokenAttacher,
}

/// What attaching tokens takes: the source and whether a caller's own `Authorization` is
/// replaced. The standalone layer's services and a service's fused stack share it.
#[derive(Clone)]
pub(crate) struct TokenAttacher {
    source: Arc<dyn TokenSource>,
    replace_existing: bool,
}

impl std::fmt::Debug for AttachTokenLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachTokenLayer")
            .field("replace_existing", &self.attacher.replace_existing)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TokenAttacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAttacher")
            .field("replace_existing", &self.replace_existing)
            .finish_non_exhaustive()
    }
}

impl AttachTokenLayer {
    /// Tokens from `source`.
    pub fn new(source: Arc<dyn TokenSource>) -> Self {
        AttachTokenLayer {
            attacher: TokenAttacher {
                source,
                replace_existing: false,
            },
        }
    }

    /// Replaces an `Authorization` header the caller set.
    pub fn replace_existing(mut self, replace: bool) -> Self {
        self.attacher.replace_existing = replace;
        self
    }

    /// What the layer's services attach tokens with.
    pub(crate) fn attacher(&self) -> &TokenAttacher {
        &self.attacher
    }
}

impl<S> Layer<S> for AttachTokenLayer {
    type Service = AttachToken<S>;

    fn layer(&self, inner: S) -> AttachToken<S> {
        AttachToken {
            inner,
            attacher: self.attacher.clone(),
        }
    }
}

/// The service [`AttachTokenLayer`] makes.
#[derive(Clone, Debug)]
pub struct AttachToken<S> {
    inner: S,
    attacher: TokenAttacher,
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
        let fetch = match self.attacher.attach(&mut request, None) {
            Attach::Done => return ResponseFuture::direct(self.inner.call(request)),
            Attach::Fetch(fetch) => fetch,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::waiting(Box::pin(async move {
            insert(&mut request, fetch.await?);
            inner.call(request).await.map_err(Into::into)
        }))
    }
}

/// What attaching a token to a request took.
pub(crate) enum Attach {
    /// Nothing more: a token ready now is on the request, or the request needs none.
    Done,
    /// A token must be fetched first: this future gives its header value, which
    /// [`insert`] puts on.
    Fetch(BoxFuture<'static, Result<HeaderValue, Error>>),
}

impl TokenAttacher {
    /// Puts a token on `request` if one is ready now (cached and fresh); otherwise says how
    /// to fetch one. A request that keeps its own `Authorization`, or whose host is not a
    /// service name, needs none. `known` is a service name already checked, the one a
    /// request to it names as its host most of the time.
    pub(crate) fn attach(
        &self,
        request: &mut reqwest::Request,
        known: Option<&ServiceName>,
    ) -> Attach {
        if request.headers().contains_key(AUTHORIZATION) && !self.replace_existing {
            return Attach::Done;
        }
        let Some(host) = request.url().host_str() else {
            return Attach::Done;
        };
        let known = known.filter(|known| known.as_str() == host);
        if known.is_none() && validate_service_name(host).is_err() {
            return Attach::Done;
        }
        if let Some(token) = self.source.ready(host) {
            insert(request, token.into_header_value());
            return Attach::Done;
        }
        let service = match known {
            Some(known) => known.clone(),
            None => match ServiceName::new(host) {
                Ok(service) => service,
                Err(_) => return Attach::Done,
            },
        };
        let source = self.source.clone();
        Attach::Fetch(Box::pin(async move {
            let token = source.token(&service).await?;
            Ok(token.into_header_value())
        }))
    }
}

/// Puts a token's header value on `request` as its `Authorization`.
pub(crate) fn insert(request: &mut reqwest::Request, value: HeaderValue) {
    request.headers_mut().insert(AUTHORIZATION, value);
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
