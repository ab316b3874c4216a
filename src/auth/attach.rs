use std::sync::Arc;
use std::task::{Context, Poll};

use reqwest::header::AUTHORIZATION;
use tower::{Layer, Service};

use super::source::TokenSource;
use crate::discovery::BoxFuture;
use crate::endpoint::ServiceName;
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
    type Future = BoxFuture<'static, Result<S::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: reqwest::Request) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let keep = request.headers().contains_key(AUTHORIZATION) && !layer.replace_existing;
            if !keep {
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
            }
            inner.call(request).await.map_err(Into::into)
        })
    }
}
