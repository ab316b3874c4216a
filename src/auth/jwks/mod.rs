//! A remote JSON Web Key Set (RFC 7517 §5), cached, refreshed and rotated safely.
//!
//! - Fetched over HTTP with a bounded body; cached for its `Cache-Control: max-age`, clamped
//!   to `[min_ttl, max_ttl]`, and refreshed in the background before it expires.
//! - A token with an unknown `kid` (a key rotated in) triggers one refetch, at most one per
//!   `refetch_interval`, however many requests miss at once: they all wait for that one fetch.
//!   (Envoy's `jwt_authn` does not refetch on an unknown `kid`; a rotation then fails every
//!   request until the cache expires.)
//! - While the endpoint is down, or hangs, the last good keys serve for up to `max_stale` past
//!   their expiry without any request waiting for a fetch (stale-while-revalidate): a stale
//!   set wakes the background refresher, which retries with exponential backoff and jitter
//!   (1 s to 60 s). Past `max_stale` verification fails closed. Only a verifier's very first
//!   fetch, and the refetch an unknown `kid` asks for, are waited for.
//! - A set is the keys in it that can verify a signature, as identity providers publish
//!   them: a key whose `use` is not `sig` (Keycloak's encryption key), whose `key_ops` leave
//!   out `verify`, of a type or curve this crate does not verify with (`oct`, `OKP` X25519,
//!   `EC` P-521), or that does not parse is skipped, logged at `debug` once per fetch and
//!   counted in [`JWKS_KEYS_SKIPPED`](crate::names::JWKS_KEYS_SKIPPED). A key without
//!   `alg` (Microsoft Entra ID publishes its keys so) serves the algorithms of its own family
//!   only: an RSA key RS256/384/512 and PS256/384/512, an EC key its curve's (ES256 for
//!   P-256, ES384 for P-384), an Ed25519 key EdDSA. A shared secret (`oct`) is never taken
//!   from a published set: anyone who can read it could sign with it.
//! - A set that is malformed, or has no usable key, is refused whole, and the previous set
//!   kept.
//! - [`Jwks::from_issuer`] finds the set of an OpenID provider through its discovery document
//!   (`/.well-known/openid-configuration`, OpenID Connect Discovery 1.0 §4): the document's
//!   `issuer` must equal the configured one exactly (§4.3), and its `jwks_uri` is used until a
//!   fetch from it fails, when the document is read again.
//!
//! (A long file: the cache's states and the background refresher that moves between them
//! read together; keys are parsed in `keys.rs`, the issuer's discovery is in `oidc.rs`.)

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::Algorithm;
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::verifier::{Rejection, VerifyingKey};
use crate::error::Error;

mod keys;
mod oidc;
#[cfg(test)]
mod tests;

pub(crate) use keys::usable_keys;
pub(crate) use oidc::jwks_uri;
use oidc::no_downgrade;

/// A remote key set's settings.
#[derive(Clone, Debug)]
#[must_use]
pub struct JwksOptions {
    min_ttl: Duration,
    max_ttl: Duration,
    max_stale: Duration,
    refetch_interval: Duration,
    max_body_bytes: usize,
    timeout: Duration,
    http: Option<reqwest::Client>,
}

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            max_stale: Duration::from_secs(3600),
            refetch_interval: Duration::from_secs(30),
            max_body_bytes: 1 << 20,
            timeout: Duration::from_secs(10),
            http: None,
        }
    }
}

impl JwksOptions {
    /// Bounds on the cache time taken from `Cache-Control: max-age` (1 minute and 1 day);
    /// without the header, `min_ttl`.
    pub fn ttl(mut self, min: Duration, max: Duration) -> Self {
        self.min_ttl = min;
        self.max_ttl = max;
        self
    }

    /// How long past their expiry the last good keys serve while the endpoint is down (1 h).
    pub fn max_stale(mut self, max_stale: Duration) -> Self {
        self.max_stale = max_stale;
        self
    }

    /// The least time between two refetches for unknown `kid`s (30 s).
    pub fn refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// The largest key-set body accepted (1 MiB).
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// Fetches with this client, and its redirect policy. The crate's own follows up to five
    /// redirects and never one from `https` to plain `http`.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }
}

/// One fetched set: its usable keys by `kid`, each once per algorithm it serves.
struct KeySet {
    keys: HashMap<Option<String>, Vec<VerifyingKey>>,
    fetched: Instant,
    expires: Instant,
}

/// Where a key set is found.
enum Source {
    /// At a fixed URL.
    Url(reqwest::Url),
    /// At the `jwks_uri` of an OpenID provider's discovery document.
    Issuer {
        issuer: String,
        document: reqwest::Url,
    },
}

impl Source {
    /// The URL to show: the key set's, or the discovery document's.
    fn url(&self) -> &reqwest::Url {
        match self {
            Source::Url(url) => url,
            Source::Issuer { document, .. } => document,
        }
    }
}

/// A remote JSON Web Key Set.
pub struct Jwks {
    source: Source,
    options: JwksOptions,
    http: reqwest::Client,
    current: ArcSwapOption<KeySet>,
    /// Held while fetching: callers that miss wait on it and then find the new set.
    fetching: Mutex<FetchState>,
    /// Wakes the background refresher early: a stale set was served.
    wake: Arc<tokio::sync::Notify>,
    me: Weak<Jwks>,
}

#[derive(Default)]
struct FetchState {
    /// The last refetch an unknown `kid` caused: the ones rate-limited.
    last_kid_refetch: Option<Instant>,
    /// The last failed fetch: while the endpoint is down, requests do not each try again.
    last_failure: Option<Instant>,
    refresher: bool,
    /// The key set's URL read from the discovery document, until a fetch from it fails.
    discovered: Option<reqwest::Url>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Jwks");
        if let Source::Issuer { issuer, .. } = &self.source {
            f.field("issuer", issuer);
        }
        f.field("url", &self.source.url().as_str())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A key set at `url`; nothing is fetched before the first verification.
    pub fn new(url: &str, options: JwksOptions) -> Result<Arc<Self>, Error> {
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| Error::builder("jwks.url", "must be an http(s) URL"))?;
        Jwks::with_source(Source::Url(url), options)
    }

    /// The key set of the OpenID provider `issuer`, found through its discovery document
    /// (OpenID Connect Discovery 1.0): `{issuer}/.well-known/openid-configuration`, whose
    /// `issuer` must equal `issuer` exactly and whose `jwks_uri` names the set. A
    /// [`Verifier`](super::Verifier) made with this set requires `iss` to be `issuer`.
    ///
    /// `issuer` is an `https` URL without query or fragment (`http` is accepted for tests
    /// and private networks). Nothing is fetched before the first verification, or
    /// [`Jwks::refresh`].
    pub fn from_issuer(issuer: &str, options: JwksOptions) -> Result<Arc<Self>, Error> {
        let document = reqwest::Url::parse(issuer)
            .ok()
            .filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.host().is_some()
            })
            .and_then(|_| {
                // §4: a path's trailing `/` goes before the well-known suffix is added.
                let base = issuer.strip_suffix('/').unwrap_or(issuer);
                reqwest::Url::parse(&format!("{base}/.well-known/openid-configuration")).ok()
            })
            .ok_or_else(|| {
                Error::builder(
                    "jwks.issuer",
                    "must be an http(s) URL without query or fragment",
                )
            })?;
        Jwks::with_source(
            Source::Issuer {
                issuer: issuer.to_owned(),
                document,
            },
            options,
        )
    }

    fn with_source(source: Source, options: JwksOptions) -> Result<Arc<Self>, Error> {
        if options.min_ttl > options.max_ttl || options.max_ttl.is_zero() {
            return Err(Error::builder("jwks.ttl", "needs 0 < min <= max"));
        }
        for (field, duration) in [
            ("jwks.ttl", options.max_ttl),
            ("jwks.max_stale", options.max_stale),
            ("jwks.refetch_interval", options.refetch_interval),
            ("jwks.timeout", options.timeout),
        ] {
            crate::error::check_duration(field, duration)?;
        }
        let http = match &options.http {
            Some(http) => http.clone(),
            None => reqwest::Client::builder()
                .redirect(no_downgrade())
                .build()
                .map_err(|e| {
                    Error::builder("jwks.http_client", "reqwest failed to build").with_source(e)
                })?,
        };
        Ok(Arc::new_cyclic(|me| Jwks {
            source,
            options,
            http,
            current: ArcSwapOption::empty(),
            fetching: Mutex::new(FetchState::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
            me: me.clone(),
        }))
    }

    /// The issuer given to [`Jwks::from_issuer`].
    pub fn issuer(&self) -> Option<&str> {
        match &self.source {
            Source::Issuer { issuer, .. } => Some(issuer),
            Source::Url(_) => None,
        }
    }

    /// Fetches the set now (after the discovery document, for [`Jwks::from_issuer`]), so a
    /// service can refuse to start when its identity provider is misconfigured. The error,
    /// an [`Error::is_auth`](crate::Error::is_auth) one, says what was wrong: an unreachable
    /// endpoint, a mismatched `issuer`, a set with no usable key. A failure keeps the
    /// previous set.
    pub async fn refresh(&self) -> Result<(), Error> {
        let mut state = self.fetching.lock().await;
        let result = self.fetch(&mut state).await;
        state.last_failure = result.is_err().then(Instant::now);
        if !state.refresher {
            state.refresher = true;
            self.start_refresher();
        }
        result.map_err(|message| Error::new(crate::error::Kind::Auth).with_message(message))
    }

    /// The key for a token's `kid` and algorithm, fetching or refetching as needed.
    pub(crate) async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<VerifyingKey, Rejection> {
        let now = Instant::now();
        let Some(set) = self.current.load_full() else {
            // Nothing to serve yet: the first fetch is waited for.
            return self.refetch_for(kid, alg, false).await;
        };
        if now >= set.expires {
            // Stale: served without waiting while within `max_stale`, and refreshed in the
            // background, so an identity provider that hangs costs a request nothing.
            self.refresh_soon();
            if now > set.expires + self.options.max_stale {
                return Err(Rejection::KeysUnavailable);
            }
        }
        match find(&set, kid, alg) {
            Some(key) => Ok(key),
            None => self.refetch_for(kid, alg, true).await,
        }
    }

    /// Wakes the background refresher (starting it if it is not running) to fetch now.
    fn refresh_soon(&self) {
        self.wake.notify_one();
        if let Ok(mut state) = self.fetching.try_lock()
            && !state.refresher
        {
            state.refresher = true;
            self.start_refresher();
        }
    }

    /// Fetches (once, for every caller waiting) and looks again.
    async fn refetch_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        unknown_kid: bool,
    ) -> Result<VerifyingKey, Rejection> {
        let seen = self.current.load_full().map(|s| s.fetched);
        {
            let mut state = self.fetching.lock().await;
            let fetched_meanwhile = self.current.load_full().map(|s| s.fetched) != seen;
            let recent = |at: Option<Instant>| {
                at.is_some_and(|at| at.elapsed() < self.options.refetch_interval)
            };
            let too_soon =
                (unknown_kid && recent(state.last_kid_refetch)) || recent(state.last_failure);
            if !fetched_meanwhile && !too_soon {
                if unknown_kid {
                    state.last_kid_refetch = Some(Instant::now());
                }
                match self.fetch(&mut state).await {
                    Ok(()) => state.last_failure = None,
                    Err(error) => {
                        state.last_failure = Some(Instant::now());
                        tracing::warn!(url = %self.source.url(), error = %error, "JWKS fetch failed; keeping the last good keys");
                    }
                }
                if !state.refresher {
                    state.refresher = true;
                    self.start_refresher();
                }
            }
        }
        let set = self.current.load_full().ok_or(Rejection::KeysUnavailable)?;
        if Instant::now() > set.expires + self.options.max_stale {
            return Err(Rejection::KeysUnavailable);
        }
        find(&set, kid, alg).ok_or(Rejection::UnknownKey)
    }

    /// How long the refresher waits before its next fetch: until a little before the set
    /// expires, or, after failures, an exponential backoff with jitter.
    fn next_refresh(&self, failures: &mut crate::backoff::Backoff, failed: bool) -> Duration {
        if failed {
            let delay = failures.next_delay();
            // Past `max_stale` every verification fails until a fetch succeeds: ask at least
            // every `refetch_interval` then, so the keys are back soon after the endpoint.
            let closed = self
                .current
                .load_full()
                .is_some_and(|set| Instant::now() > set.expires + self.options.max_stale);
            return if closed {
                delay.min(self.options.refetch_interval)
            } else {
                delay
            };
        }
        failures.reset();
        match self.current.load_full() {
            Some(set) => {
                let life = set.expires.saturating_duration_since(set.fetched);
                (set.expires - life / 10)
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1))
            }
            None => self.options.min_ttl,
        }
    }

    /// Refreshes in the background a little before the set expires, while anyone holds it.
    fn start_refresher(&self) {
        let me = self.me.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut failures = crate::backoff::Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(60),
            );
            let mut failed = false;
            loop {
                let (wait, wake) = {
                    let Some(jwks) = me.upgrade() else { return };
                    (jwks.next_refresh(&mut failures, failed), jwks.wake.clone())
                };
                // A stale set served wakes it early, but never before its backoff after a
                // failure is over. (It holds the key set only while it fetches.)
                let sleep = tokio::time::sleep(wait);
                if failed {
                    sleep.await;
                } else {
                    tokio::select! {
                        () = sleep => {}
                        () = wake.notified() => {}
                    }
                }
                let Some(jwks) = me.upgrade() else { return };
                let mut state = jwks.fetching.lock().await;
                failed = match jwks.fetch(&mut state).await {
                    Ok(()) => false,
                    Err(error) => {
                        tracing::warn!(url = %jwks.source.url(), error = %error, "JWKS refresh failed; serving the last good keys until max_stale");
                        true
                    }
                };
            }
        });
    }

    /// Fetches the set (reading the discovery document first when its URL is not known).
    /// Called with the fetch lock held.
    async fn fetch(&self, state: &mut FetchState) -> Result<(), String> {
        // One timeout for the document and the keys together.
        let deadline = Instant::now() + self.options.timeout;
        let url = match (&self.source, &state.discovered) {
            (Source::Url(url), _) | (Source::Issuer { .. }, Some(url)) => url.clone(),
            (Source::Issuer { issuer, document }, None) => {
                let (_, body) = self.get(document, "discovery document", deadline).await?;
                let url = jwks_uri(&body, issuer)?;
                state.discovered = Some(url.clone());
                url
            }
        };
        let result = self.fetch_keys(url, deadline).await;
        if result.is_err() {
            // The provider may have moved its keys: read the document again next time.
            state.discovered = None;
        }
        result
    }

    /// A GET with the set's timeout and body limit: the response's `max-age` and body.
    async fn get(
        &self,
        url: &reqwest::Url,
        what: &str,
        deadline: Instant,
    ) -> Result<(Option<Duration>, Vec<u8>), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no time was left to fetch the {what}"));
        }
        let response = self
            .http
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .timeout(left)
            .send()
            .await
            .map_err(|e| format!("the {what} could not be fetched: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!(
                "the {what} endpoint answered {}",
                response.status()
            ));
        }
        let max_age = response
            .headers()
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = crate::body::read_bounded(response, self.options.max_body_bytes)
            .await
            .map_err(|e| format!("the {what} could not be read: {e}"))?;
        Ok((max_age, body))
    }

    async fn fetch_keys(&self, url: reqwest::Url, deadline: Instant) -> Result<(), String> {
        let (max_age, body) = self.get(&url, "key set", deadline).await?;
        let keys = usable_keys(&body)?;
        let ttl = max_age
            .unwrap_or(self.options.min_ttl)
            .clamp(self.options.min_ttl, self.options.max_ttl);
        let now = Instant::now();
        self.current.store(Some(Arc::new(KeySet {
            keys,
            fetched: now,
            expires: now + ttl,
        })));
        Ok(())
    }
}

fn find(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Option<VerifyingKey> {
    let of_alg = |keys: &Vec<VerifyingKey>| keys.iter().find(|k| k.algorithm == alg).cloned();
    match kid {
        Some(kid) => of_alg(set.keys.get(&Some(kid.to_owned()))?),
        // A token without `kid` is verified only when one key of its algorithm is known.
        None => {
            let mut of_alg = set.keys.values().filter_map(of_alg);
            let key = of_alg.next()?;
            of_alg.next().is_none().then_some(key)
        }
    }
}

/// `max-age` from a `Cache-Control` value.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|part| {
        let (name, seconds) = part.trim().split_once('=')?;
        (name.eq_ignore_ascii_case("max-age"))
            .then(|| seconds.trim().parse().ok().map(Duration::from_secs))?
    })
}
