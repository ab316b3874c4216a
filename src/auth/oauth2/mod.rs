//! OAuth 2.0 client credentials (RFC 6749 §4.4), as a [`TokenSource`].
//!
//! (A long file: the builder's settings and the single-flight fetch they configure read
//! together; the token response is parsed in `response.rs`.)

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use futures_util::FutureExt as _;
use futures_util::future::Shared;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::source::{BearerToken, SigningKey, TokenSource};
use crate::backoff::Backoff;
use crate::boxed::BoxFuture;
use crate::endpoint::ServiceName;
use crate::error::{Error, Kind};
use crate::secret::Secret;

mod response;
#[cfg(test)]
mod tests;

pub(crate) use response::{error_code, token_response};

/// How the client authenticates to the token endpoint (RFC 6749 §2.3, OpenID Connect Core
/// §9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded id and secret (`client_secret_basic`, the default).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
    /// A JWT signed with the client's private key (`private_key_jwt`, RFC 7523 §2.2): set by
    /// [`OAuth2ClientCredentials::with_private_key`].
    PrivateKeyJwt,
}

/// The largest token response read, in bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The lifetime of a `private_key_jwt` client assertion.
const ASSERTION_LIFETIME: u64 = 60;

/// What proves the client's identity to the token endpoint.
enum Credential {
    Secret(Secret),
    Key(SigningKey),
}

struct Cached {
    token: BearerToken,
    refresh_at: Instant,
    expires_at: Instant,
}

/// The last failed fetch, shared by every caller until the backoff after it is over.
struct Failure {
    error: Error,
    retry_at: Instant,
}

/// The end of a fetch in flight, which every caller waiting for a token awaits.
type InFlight = Shared<BoxFuture<'static, ()>>;

/// The fetch in flight, if any, and what the last ones taught.
struct Flight {
    /// Runs as a task of its own: a caller that stops waiting (its deadline passed, it was
    /// dropped) cancels nothing, and the token it fetches serves the next caller.
    in_flight: Option<InFlight>,
    failure: Option<Failure>,
    backoff: Backoff,
}

/// Tokens from an OAuth 2.0 token endpoint with the client credentials grant.
///
/// - The token is cached until `expires_in` minus a margin (30 s, at most half the
///   lifetime); near that point one background refresh replaces it while calls keep using
///   the valid one, so no call waits on the endpoint but the very first.
/// - One fetch serves every caller waiting for it (single flight), and its failure too: a
///   failed fetch is remembered for an exponential backoff with jitter (1 s doubling to
///   60 s unless [set](OAuth2Builder::backoff)), during which a caller without a valid
///   token gets that failure at once, without a request. A failing, slow or hung endpoint therefore sees one request per backoff step
///   from the process, however many calls are waiting, and calls holding a valid token
///   never notice it.
/// - A fetch gives up after its timeout (10 s unless set). The response is read up to
///   64 KiB; `expires_in` may be a number or a numeric string, and is capped at a day.
/// - Endpoint errors are [`Error::is_auth`](crate::Error::is_auth) errors that carry the
///   RFC 6749 §5.2 `error` code; the secret and the token are never logged or shown.
pub struct OAuth2ClientCredentials {
    token_url: reqwest::Url,
    client_id: String,
    credential: Credential,
    auth: ClientAuth,
    scope: Option<String>,
    audience: Option<String>,
    margin: Duration,
    timeout: Duration,
    assertion_audience: String,
    http: reqwest::Client,
    cache: ArcSwapOption<Cached>,
    flight: Mutex<Flight>,
    refreshing: AtomicBool,
    me: Weak<OAuth2ClientCredentials>,
}

impl fmt::Debug for OAuth2ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2ClientCredentials")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Builds [`OAuth2ClientCredentials`].
#[must_use]
pub struct OAuth2Builder {
    token_url: String,
    client_id: String,
    credential: Credential,
    auth: ClientAuth,
    scope: Option<String>,
    audience: Option<String>,
    margin: Duration,
    timeout: Duration,
    backoff: (Duration, Duration),
    assertion_audience: Option<String>,
    http: Option<reqwest::Client>,
}

impl fmt::Debug for OAuth2Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Builder")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl OAuth2Builder {
    /// How the client authenticates with its secret: `client_secret_basic` unless set, or
    /// `client_secret_post`. [`ClientAuth::PrivateKeyJwt`] needs a key, not a secret:
    /// [`OAuth2ClientCredentials::with_private_key`].
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }

    /// The `scope` requested.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The `audience` requested (an extension many providers accept).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Refresh this long before expiry (30 s; at most half the token's lifetime).
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// How long one fetch may take, the response's body included (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The backoff after a failed fetch: from `base`, doubling to `max`, each step drawn
    /// from its upper half (1 s and 60 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = (base, max);
        self
    }

    /// The `aud` of a `private_key_jwt` assertion: the token endpoint's URL unless set. RFC
    /// 7523 §3 allows either that or the authorization server's issuer identifier, which
    /// some servers require.
    pub fn assertion_audience(mut self, audience: impl Into<String>) -> Self {
        self.assertion_audience = Some(audience.into());
        self
    }

    /// Speaks to the token endpoint with this client. The crate's own client follows no
    /// redirect, so the credentials go to the token endpoint only; a client given here keeps
    /// its own redirect policy.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Arc<OAuth2ClientCredentials>, Error> {
        let token_url = reqwest::Url::parse(&self.token_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| Error::builder("oauth2.token_url", "must be an http(s) URL"))?;
        let by_key = matches!(self.credential, Credential::Key(_));
        if by_key != (self.auth == ClientAuth::PrivateKeyJwt) {
            return Err(Error::builder(
                "oauth2.client_auth",
                "private_key_jwt goes with a private key (with_private_key), the others with a secret",
            ));
        }
        let (base, max) = self.backoff;
        if base.is_zero() || base > max {
            return Err(Error::builder("oauth2.backoff", "needs 0 < base <= max"));
        }
        crate::error::check_duration("oauth2.backoff", max)?;
        if self.timeout.is_zero() {
            return Err(Error::builder(
                "oauth2.timeout",
                "must be greater than zero",
            ));
        }
        crate::error::check_duration("oauth2.timeout", self.timeout)?;
        crate::error::check_duration("oauth2.refresh_margin", self.margin)?;
        let http = match self.http {
            Some(http) => http,
            // A redirect would send the credentials in the body (the secret, or the
            // assertion) to wherever it points: not followed.
            None => reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| {
                    Error::builder("oauth2.http_client", "reqwest failed to build").with_source(e)
                })?,
        };
        let assertion_audience = self
            .assertion_audience
            .unwrap_or_else(|| token_url.as_str().to_owned());
        Ok(Arc::new_cyclic(|me| OAuth2ClientCredentials {
            token_url,
            client_id: self.client_id,
            credential: self.credential,
            auth: self.auth,
            scope: self.scope,
            audience: self.audience,
            margin: self.margin,
            timeout: self.timeout,
            assertion_audience,
            http,
            cache: ArcSwapOption::empty(),
            flight: Mutex::new(Flight {
                in_flight: None,
                failure: None,
                backoff: Backoff::new(base, max),
            }),
            refreshing: AtomicBool::new(false),
            me: me.clone(),
        }))
    }
}

fn auth_error(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(Kind::Auth).with_message(message)
}

impl OAuth2ClientCredentials {
    /// A builder for the token endpoint at `token_url`, authenticating with a client secret
    /// (`client_secret_basic` unless [`OAuth2Builder::client_auth`] says otherwise).
    pub fn builder(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        secret: Secret,
    ) -> OAuth2Builder {
        OAuth2ClientCredentials::new_builder(
            token_url.into(),
            client_id.into(),
            Credential::Secret(secret),
            ClientAuth::Basic,
        )
    }

    /// A builder for the token endpoint at `token_url`, authenticating with `private_key_jwt`
    /// (RFC 7523 §2.2, OpenID Connect Core §9): each fetch sends a fresh assertion signed
    /// with `key` (its `kid` in the header), whose `iss` and `sub` are the client id, `aud`
    /// the token endpoint's URL (or [`OAuth2Builder::assertion_audience`]), with a random
    /// `jti` and a 60 s lifetime.
    pub fn with_private_key(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        key: SigningKey,
    ) -> OAuth2Builder {
        OAuth2ClientCredentials::new_builder(
            token_url.into(),
            client_id.into(),
            Credential::Key(key),
            ClientAuth::PrivateKeyJwt,
        )
    }

    fn new_builder(
        token_url: String,
        client_id: String,
        credential: Credential,
        auth: ClientAuth,
    ) -> OAuth2Builder {
        OAuth2Builder {
            token_url,
            client_id,
            credential,
            auth,
            scope: None,
            audience: None,
            margin: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            backoff: (Duration::from_secs(1), Duration::from_secs(60)),
            assertion_audience: None,
            http: None,
        }
    }

    /// The form body of a token request, with the client's credentials when they go there.
    fn form(&self) -> Result<String, Error> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        if let Some(audience) = &self.audience {
            form.append_pair("audience", audience);
        }
        match (&self.credential, self.auth) {
            (Credential::Secret(secret), ClientAuth::Post) => {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_secret", secret.expose());
            }
            (Credential::Key(key), _) => {
                let now = super::source::unix_now();
                let mut claims = Map::new();
                claims.insert("iss".into(), Value::from(self.client_id.as_str()));
                claims.insert("sub".into(), Value::from(self.client_id.as_str()));
                claims.insert("aud".into(), Value::from(self.assertion_audience.as_str()));
                claims.insert("jti".into(), Value::from(super::source::random_jti()));
                claims.insert("iat".into(), Value::from(now));
                claims.insert("exp".into(), Value::from(now + ASSERTION_LIFETIME));
                let assertion = key.sign(&claims)?;
                form.append_pair("client_id", &self.client_id);
                form.append_pair(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                );
                form.append_pair("client_assertion", &assertion);
            }
            (Credential::Secret(_), _) => {}
        }
        Ok(form.finish())
    }

    /// One request to the token endpoint.
    async fn fetch(&self) -> Result<Cached, Error> {
        metrics::counter!(crate::names::TOKEN_REFRESHES, "source" => "oauth2").increment(1);
        let mut request = self
            .http
            .post(self.token_url.clone())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .timeout(self.timeout);
        if let (Credential::Secret(secret), ClientAuth::Basic) = (&self.credential, self.auth) {
            let encode =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let credentials = format!("{}:{}", encode(&self.client_id), encode(secret.expose()));
            let mut value = reqwest::header::HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ))
            .map_err(|_| auth_error("the client credentials are not a valid header"))?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let response = request.body(self.form()?).send().await.map_err(|e| {
            let e = e.without_url();
            if e.is_timeout() {
                auth_error("the token endpoint did not answer in time").with_source(e)
            } else {
                auth_error("the token endpoint could not be reached").with_source(e)
            }
        })?;
        let status = response.status();
        let body = crate::body::read_bounded(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| auth_error("the token response could not be read").with_source(e))?;
        if !status.is_success() {
            return Err(auth_error(format!(
                "the token endpoint answered {status}: {}",
                error_code(&body)
            )));
        }
        let issued = token_response(&body).map_err(auth_error)?;
        let margin = self.margin.min(issued.lifetime / 2);
        let now = Instant::now();
        Ok(Cached {
            token: BearerToken::new(&issued.access_token)?,
            refresh_at: now + issued.lifetime - margin,
            expires_at: now + issued.lifetime,
        })
    }

    fn lock_flight(&self) -> std::sync::MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A token `usable` says is good enough: the cached one, or the one fetch's in flight,
    /// shared by every caller waiting, or the last failure while its backoff lasts.
    async fn fetch_shared(
        &self,
        usable: fn(&Cached, Instant) -> bool,
    ) -> Result<BearerToken, Error> {
        loop {
            let in_flight = {
                let mut flight = self.lock_flight();
                let now = Instant::now();
                if let Some(cached) = self.cache.load_full().filter(|c| usable(c, now)) {
                    return Ok(cached.token.clone());
                }
                match &flight.in_flight {
                    Some(in_flight) => in_flight.clone(),
                    None => {
                        if let Some(failure) = &flight.failure
                            && now < failure.retry_at
                        {
                            // The failure as it was, for every caller until the next try.
                            return Err(failure.error.duplicate());
                        }
                        let in_flight = self.start_fetch().ok_or_else(|| {
                            Error::internal("a token fetch needs a tokio runtime")
                        })?;
                        flight.in_flight = Some(in_flight.clone());
                        in_flight
                    }
                }
            };
            // Bounded: a fetch whose runtime stopped being driven never ends, and never times
            // out either.
            let wait = self.timeout + Duration::from_secs(1);
            let ended = tokio::time::timeout(wait, in_flight.clone()).await.is_ok();
            let failed = {
                let mut flight = self.lock_flight();
                if !ended
                    && flight
                        .in_flight
                        .as_ref()
                        .is_some_and(|current| current.ptr_eq(&in_flight))
                {
                    // Forgotten: the next caller starts another.
                    flight.in_flight = None;
                }
                // The fetch recorded a token or a failure: look again.
                let fresh = self
                    .cache
                    .load_full()
                    .is_some_and(|c| usable(&c, Instant::now()));
                match &flight.failure {
                    Some(failure) if flight.in_flight.is_none() && !fresh => {
                        Some(failure.error.duplicate())
                    }
                    _ => None,
                }
            };
            if let Some(error) = failed {
                return Err(error);
            }
        }
    }

    /// Spawns one fetch, which records its token or its failure, whoever waits for it.
    fn start_fetch(&self) -> Option<InFlight> {
        let me = self.me.clone();
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let task = runtime.spawn(async move {
            if let Some(source) = me.upgrade() {
                let result = source.fetch().await;
                source.record(result);
            }
        });
        let me = self.me.clone();
        let ended: BoxFuture<'static, ()> = Box::pin(async move {
            if let Err(error) = task.await
                && let Some(source) = me.upgrade()
            {
                if error.is_cancelled() {
                    // Its runtime shut down: no failure of the endpoint's. The next caller
                    // starts another fetch.
                    source.lock_flight().in_flight = None;
                } else {
                    source.record(Err(auth_error(format!(
                        "the token fetch panicked: {error}"
                    ))));
                }
            }
        });
        Some(ended.shared())
    }

    /// Records the end of a fetch: the token, or the failure and the backoff after it.
    fn record(&self, result: Result<Cached, Error>) {
        let mut flight = self.lock_flight();
        flight.in_flight = None;
        match result {
            Ok(fresh) => {
                flight.failure = None;
                flight.backoff.reset();
                self.cache.store(Some(Arc::new(fresh)));
            }
            Err(error) => {
                let delay = flight.backoff.next_delay();
                tracing::warn!(
                    error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "OAuth2 token fetch failed"
                );
                flight.failure = Some(Failure {
                    error,
                    retry_at: Instant::now() + delay,
                });
            }
        }
    }

    /// Refreshes the token in the background until a fetch succeeds, respecting the backoff;
    /// one such task at a time. It holds the source only while it fetches.
    fn refresh_in_background(&self) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        /// Clears `refreshing` however the task ends, its runtime's shutdown included.
        struct Refreshing(Weak<OAuth2ClientCredentials>);
        impl Drop for Refreshing {
            fn drop(&mut self) {
                if let Some(source) = self.0.upgrade() {
                    source.refreshing.store(false, Ordering::Release);
                }
            }
        }
        let guard = Refreshing(self.me.clone());
        runtime.spawn(async move {
            loop {
                let wait = {
                    let Some(source) = guard.0.upgrade() else {
                        return;
                    };
                    let due = |c: &Cached, now: Instant| now < c.refresh_at;
                    if source.fetch_shared(due).await.is_ok() {
                        return;
                    }
                    let flight = source.lock_flight();
                    flight.failure.as_ref().map_or(Duration::from_secs(1), |f| {
                        f.retry_at.saturating_duration_since(Instant::now())
                    })
                };
                tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
            }
        });
    }
}

impl TokenSource for OAuth2ClientCredentials {
    fn ready(&self, _: &str) -> Option<BearerToken> {
        let cache = self.cache.load();
        let cached = cache.as_ref()?;
        // Past the refresh point, `token` starts the refresh.
        (Instant::now() < cached.refresh_at).then(|| cached.token.clone())
    }

    fn token<'a>(&'a self, _: &'a ServiceName) -> BoxFuture<'a, Result<BearerToken, Error>> {
        Box::pin(async move {
            let now = Instant::now();
            if let Some(cached) = self.cache.load_full().filter(|c| now < c.expires_at) {
                if now >= cached.refresh_at {
                    self.refresh_in_background();
                }
                return Ok(cached.token.clone());
            }
            self.fetch_shared(|c, now| now < c.expires_at).await
        })
    }
}
