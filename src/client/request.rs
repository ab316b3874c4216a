use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Body, Method, Url};
use serde::Serialize;

use super::{MeshClient, ResponseFuture};
use crate::error::Error;

/// A request being built, with reqwest's methods. Errors (a malformed URL, a bad header) are
/// kept until [`RequestBuilder::send`], as in reqwest.
#[must_use = "a RequestBuilder does nothing until it is sent"]
pub struct RequestBuilder {
    client: MeshClient,
    // The request itself, not reqwest's builder around it: a call copies it fewer times on
    // its way to the stack. The builder methods lend it to reqwest's builder, for reqwest's
    // semantics.
    request: Result<reqwest::Request, Error>,
    options: crate::retry::attempt::CallOptions,
}

impl RequestBuilder {
    pub(super) fn new(client: MeshClient, method: Method, url: &str) -> Self {
        let request = match parse_logical_url(url) {
            Ok(url) => Ok(reqwest::Request::new(method, url)),
            Err(error) => Err(error),
        };
        RequestBuilder {
            client,
            request,
            options: Default::default(),
        }
    }

    fn map(mut self, f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Self {
        self.request = self.request.and_then(|request| {
            let http = self.client.inner.http.clone();
            build(f(reqwest::RequestBuilder::from_parts(http, request)))
        });
        self
    }

    /// Adds a header.
    pub fn header<K, V>(self, key: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        self.map(|r| r.header(key, value))
    }

    /// Adds headers.
    pub fn headers(self, headers: HeaderMap) -> Self {
        self.map(|r| r.headers(headers))
    }

    /// Appends query parameters, serialized with `serde_urlencoded`.
    pub fn query<T: Serialize + ?Sized>(self, query: &T) -> Self {
        self.map(|r| r.query(query))
    }

    /// Sets a JSON body and the `Content-Type: application/json` header.
    #[cfg(feature = "json")]
    pub fn json<T: Serialize + ?Sized>(self, json: &T) -> Self {
        self.map(|r| r.json(json))
    }

    /// Sets the body.
    pub fn body(self, body: impl Into<Body>) -> Self {
        self.map(|r| r.body(body))
    }

    /// Sets a URL-encoded form body and `Content-Type: application/x-www-form-urlencoded`
    /// (feature `form`, on by default).
    #[cfg(feature = "form")]
    pub fn form<T: Serialize + ?Sized>(self, form: &T) -> Self {
        self.map(|r| r.form(form))
    }

    /// Sets a `multipart/form-data` body (feature `multipart`). Its parts are streamed, so
    /// the request cannot be copied: it is never retried.
    #[cfg(feature = "multipart")]
    pub fn multipart(self, form: reqwest::multipart::Form) -> Self {
        self.map(|r| r.multipart(form))
    }

    /// Sets `Authorization: Basic …` from a user name and an optional password, marked
    /// sensitive so it is never shown.
    pub fn basic_auth(
        self,
        username: impl fmt::Display,
        password: Option<impl fmt::Display>,
    ) -> Self {
        self.map(|r| r.basic_auth(username, password))
    }

    /// Sets the HTTP version asked for (HTTP/1.1 unless set, or as the endpoint's
    /// transport negotiates).
    pub fn version(self, version: reqwest::Version) -> Self {
        self.map(|r| r.version(version))
    }

    /// A copy of this request, to send again; `None` if its body cannot be copied (a
    /// stream) or it already holds an error. Per-call options (such as
    /// [`retry_non_idempotent`](RequestBuilder::retry_non_idempotent)) are copied too.
    pub fn try_clone(&self) -> Option<Self> {
        let request = self.request.as_ref().ok()?.try_clone()?;
        Some(RequestBuilder {
            client: self.client.clone(),
            request: Ok(request),
            options: self.options,
        })
    }

    /// Sets a timeout for this request, in place of its service's timeout and per-attempt
    /// timeout: the overall deadline of this call, retries included. It bounds the whole
    /// call (waits for a rate limit or a token, retries and their backoff included) and
    /// each attempt's exchange, from the start of the
    /// connection to the end of the response body. A call out of time fails with
    /// [`Error::is_timeout`](crate::Error::is_timeout), within one tick of the service's
    /// deadline table (see [`TimeoutLayer`](crate::timeout::TimeoutLayer)).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|r| r.timeout(timeout))
    }

    /// Sets `Authorization: Bearer <token>`, marked sensitive so it is never shown.
    pub fn bearer_auth(self, token: impl fmt::Display) -> Self {
        self.map(|r| r.bearer_auth(token))
    }

    /// Lets the service's retry policy retry this request even though its method is not
    /// idempotent: for a `POST` that the server de-duplicates, say. The body must be
    /// clonable (not a stream) to be retried.
    pub fn retry_non_idempotent(mut self) -> Self {
        self.options.retry_non_idempotent = true;
        self
    }

    /// Builds the request without sending it.
    pub fn build(self) -> Result<reqwest::Request, Error> {
        self.request
    }

    /// Sends the request through the mesh. An invalid request (a malformed URL, a bad
    /// header) fails when the future is awaited.
    ///
    /// As with reqwest's `send`, the call starts here, not when the future is first polled
    /// (see [`MeshClient::execute`]): dropping the future unpolled cancels the call.
    pub fn send(self) -> ResponseFuture {
        let RequestBuilder {
            client,
            request,
            options,
        } = self;
        let request = match request {
            Ok(request) => request,
            Err(error) => return ResponseFuture::failed(error),
        };
        if options.is_default() {
            // Nothing to lend the layers below: no task-local scope to enter on each poll.
            client.execute(request)
        } else {
            send_with_options(client, request, options)
        }
    }
}

/// Sends a request with per-call options: the call starts inside their task-local scope,
/// where the retry layer reads them. Out of line: the boxed future is built on the stack
/// first, and a call without options should not reserve room for it.
#[inline(never)]
fn send_with_options(
    client: MeshClient,
    request: reqwest::Request,
    options: crate::retry::attempt::CallOptions,
) -> ResponseFuture {
    ResponseFuture::boxed(crate::retry::attempt::with_options(options, async move {
        client.execute(request).await
    }))
}

impl fmt::Debug for RequestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.request {
            // What reqwest's builder shows; a sensitive header's value shows as `Sensitive`.
            Ok(request) => f
                .debug_struct("RequestBuilder")
                .field("method", request.method())
                .field("url", request.url())
                .field("headers", request.headers())
                .finish(),
            Err(error) => f.debug_tuple("RequestBuilder").field(error).finish(),
        }
    }
}

/// The request `builder` makes, or its error as the mesh's.
fn build(builder: reqwest::RequestBuilder) -> Result<reqwest::Request, Error> {
    builder.build().map_err(Error::from_reqwest)
}

/// Parses a logical URL: `http` or `https`, with a host that names a service.
fn parse_logical_url(url: &str) -> Result<Url, Error> {
    let parsed = Url::parse(url).map_err(|e| Error::invalid_url(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid_url("the scheme must be http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Credentials in a URL leak into logs; send them as a header instead.
        return Err(Error::invalid_url("the URL must not carry credentials"));
    }
    match parsed.host() {
        Some(url::Host::Domain(_)) => Ok(parsed),
        Some(_) => Err(Error::invalid_url(
            "the host is an IP address; a logical URL names a service",
        )),
        None => Err(Error::invalid_url("the URL has no host")),
    }
}
