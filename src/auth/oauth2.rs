//! OAuth 2.0 client credentials (RFC 6749 §4.4), as a [`TokenSource`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use tokio::time::Instant;

use super::source::{BearerToken, TokenSource};
use crate::discovery::BoxFuture;
use crate::endpoint::ServiceName;
use crate::error::{Error, Kind};
use crate::secret::Secret;

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded id and secret (`client_secret_basic`, the default).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

struct Cached {
    token: BearerToken,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Tokens from an OAuth 2.0 token endpoint with the client credentials grant.
///
/// The token is cached until `expires_in` minus a margin (30 s, at most half the lifetime);
/// near that point one background refresh replaces it while calls keep using the valid one,
/// so no call waits on the endpoint but the very first. Concurrent first calls share one
/// request. Endpoint errors are [`Error::is_auth`](crate::Error::is_auth) errors that carry
/// the RFC 6749 §5.2 `error` code; the secret is never logged or shown.
pub struct OAuth2ClientCredentials {
    token_url: reqwest::Url,
    client_id: String,
    secret: Secret,
    auth: ClientAuth,
    scope: Option<String>,
    audience: Option<String>,
    margin: Duration,
    http: reqwest::Client,
    cache: ArcSwapOption<Cached>,
    fetching: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
    me: Weak<OAuth2ClientCredentials>,
}

impl fmt::Debug for OAuth2ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2ClientCredentials")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("secret", &self.secret)
            .field("auth", &self.auth)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Builds [`OAuth2ClientCredentials`].
#[derive(Debug)]
#[must_use]
pub struct OAuth2Builder {
    token_url: String,
    client_id: String,
    secret: Secret,
    auth: ClientAuth,
    scope: Option<String>,
    audience: Option<String>,
    margin: Duration,
    http: Option<reqwest::Client>,
}

impl OAuth2Builder {
    /// How the client authenticates (`client_secret_basic` unless set).
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

    /// Speaks to the token endpoint with this client.
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
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder().build().map_err(|e| {
                Error::builder("oauth2.http_client", "reqwest failed to build").with_source(e)
            })?,
        };
        Ok(Arc::new_cyclic(|me| OAuth2ClientCredentials {
            token_url,
            client_id: self.client_id,
            secret: self.secret,
            auth: self.auth,
            scope: self.scope,
            audience: self.audience,
            margin: self.margin,
            http,
            cache: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
            me: me.clone(),
        }))
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
}

fn auth_error(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(Kind::Auth).with_message(message)
}

impl OAuth2ClientCredentials {
    /// A builder for the token endpoint at `token_url`.
    pub fn builder(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        secret: Secret,
    ) -> OAuth2Builder {
        OAuth2Builder {
            token_url: token_url.into(),
            client_id: client_id.into(),
            secret,
            auth: ClientAuth::Basic,
            scope: None,
            audience: None,
            margin: Duration::from_secs(30),
            http: None,
        }
    }

    async fn fetch(&self) -> Result<Cached, Error> {
        metrics::counter!(crate::observe::TOKEN_REFRESHES, "source" => "oauth2").increment(1);
        // The form serializer is not Send: finish it before any await.
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if let Some(scope) = &self.scope {
                form.append_pair("scope", scope);
            }
            if let Some(audience) = &self.audience {
                form.append_pair("audience", audience);
            }
            if self.auth == ClientAuth::Post {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_secret", self.secret.expose());
            }
            form.finish()
        };
        let mut request = self
            .http
            .post(self.token_url.clone())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .timeout(Duration::from_secs(10));
        match self.auth {
            ClientAuth::Post => {}
            ClientAuth::Basic => {
                let encode = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let credentials = format!(
                    "{}:{}",
                    encode(&self.client_id),
                    encode(self.secret.expose())
                );
                let mut value = reqwest::header::HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(credentials)
                ))
                .map_err(|_| auth_error("the client credentials are not a valid header"))?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
        }
        let response = request.body(body).send().await.map_err(|e| {
            auth_error("the token endpoint could not be reached").with_source(e.without_url())
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            auth_error("the token response could not be read").with_source(e.without_url())
        })?;
        if body.len() > 64 * 1024 {
            return Err(auth_error("the token response is larger than 64 KiB"));
        }
        if !status.is_success() {
            // RFC 6749 §5.2: keep the error code; it names the problem without secrets.
            let code = serde_json::from_slice::<ErrorResponse>(&body)
                .map(|e| {
                    e.error
                        .chars()
                        .filter(|c| c.is_ascii_graphic())
                        .take(64)
                        .collect::<String>()
                })
                .unwrap_or_else(|_| "unknown".into());
            return Err(auth_error(format!(
                "the token endpoint answered {status}: {code}"
            )));
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| auth_error("the token response is not a valid token response"))?;
        if !token.token_type.eq_ignore_ascii_case("bearer") {
            return Err(auth_error(
                "the token endpoint issued a token that is not a bearer token",
            ));
        }
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(300).max(1));
        let margin = self.margin.min(lifetime / 2);
        let now = Instant::now();
        Ok(Cached {
            token: BearerToken::new(&token.access_token)?,
            refresh_at: now + lifetime - margin,
            expires_at: now + lifetime,
        })
    }

    fn refresh_in_background(&self) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let _fetching = me.fetching.lock().await;
            match me.fetch().await {
                Ok(fresh) => me.cache.store(Some(Arc::new(fresh))),
                Err(error) => {
                    tracing::warn!(error = %error, "OAuth2 token refresh failed; keeping the current token")
                }
            }
            me.refreshing.store(false, Ordering::Release);
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
            let valid = |now: Instant| self.cache.load_full().filter(|c| now < c.expires_at);
            if let Some(cached) = valid(Instant::now()) {
                if Instant::now() >= cached.refresh_at {
                    self.refresh_in_background();
                }
                return Ok(cached.token.clone());
            }
            let _fetching = self.fetching.lock().await;
            if let Some(cached) = valid(Instant::now()) {
                return Ok(cached.token.clone());
            }
            let fresh = self.fetch().await?;
            let token = fresh.token.clone();
            self.cache.store(Some(Arc::new(fresh)));
            Ok(token)
        })
    }
}
