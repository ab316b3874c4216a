//! A remote JSON Web Key Set (RFC 7517 §5), cached, refreshed and rotated safely.
//!
//! - Fetched over HTTP with a bounded body; cached for its `Cache-Control: max-age`, clamped
//!   to `[min_ttl, max_ttl]`, and refreshed in the background before it expires.
//! - A token with an unknown `kid` (a key rotated in) triggers one refetch, at most one per
//!   `refetch_interval`, however many requests miss at once: they all wait for that one fetch.
//!   (Envoy's `jwt_authn` does not refetch on an unknown `kid`; a rotation then fails every
//!   request until the cache expires.)
//! - While the endpoint is down, the last good keys serve for up to `max_stale` past their
//!   expiry; after that verification fails closed.
//! - A malformed set, or one with a key that does not parse or names no `alg`, is refused
//!   whole, and the previous set kept.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::verifier::{Rejection, VerifyingKey};
use crate::error::Error;

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

    /// Fetches with this client.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }
}

/// One fetched set.
struct KeySet {
    keys: HashMap<Option<String>, VerifyingKey>,
    fetched: Instant,
    expires: Instant,
}

/// A remote JSON Web Key Set.
pub struct Jwks {
    url: reqwest::Url,
    options: JwksOptions,
    http: reqwest::Client,
    current: ArcSwapOption<KeySet>,
    /// Held while fetching: callers that miss wait on it and then find the new set.
    fetching: Mutex<FetchState>,
    me: Weak<Jwks>,
}

#[derive(Default)]
struct FetchState {
    /// The last refetch an unknown `kid` caused: the ones rate-limited.
    last_kid_refetch: Option<Instant>,
    /// The last failed fetch: while the endpoint is down, requests do not each try again.
    last_failure: Option<Instant>,
    refresher: bool,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url.as_str())
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
        if options.min_ttl > options.max_ttl || options.max_ttl.is_zero() {
            return Err(Error::builder("jwks.ttl", "needs 0 < min <= max"));
        }
        let http = match &options.http {
            Some(http) => http.clone(),
            None => reqwest::Client::builder().build().map_err(|e| {
                Error::builder("jwks.http_client", "reqwest failed to build").with_source(e)
            })?,
        };
        Ok(Arc::new_cyclic(|me| Jwks {
            url,
            options,
            http,
            current: ArcSwapOption::empty(),
            fetching: Mutex::new(FetchState::default()),
            me: me.clone(),
        }))
    }

    /// The key for a token's `kid` and algorithm, fetching or refetching as needed.
    pub(crate) async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<VerifyingKey, Rejection> {
        let now = Instant::now();
        if let Some(set) = self.current.load_full()
            && now < set.expires
        {
            match find(&set, kid, alg) {
                Some(key) => return Ok(key),
                None => return self.refetch_for(kid, alg, true).await,
            }
        }
        self.refetch_for(kid, alg, false).await
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
                match self.fetch().await {
                    Ok(()) => state.last_failure = None,
                    Err(error) => {
                        state.last_failure = Some(Instant::now());
                        tracing::warn!(url = %self.url, error = %error, "JWKS fetch failed; keeping the last good keys");
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

    /// Refreshes in the background a little before the set expires, while anyone holds it.
    fn start_refresher(&self) {
        let me = self.me.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            loop {
                let wait = {
                    let Some(jwks) = me.upgrade() else { return };
                    match jwks.current.load_full() {
                        Some(set) => {
                            let life = set.expires.saturating_duration_since(set.fetched);
                            (set.expires - life / 10).saturating_duration_since(Instant::now())
                        }
                        None => jwks.options.min_ttl,
                    }
                };
                tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
                let Some(jwks) = me.upgrade() else { return };
                let _fetching = jwks.fetching.lock().await;
                if let Err(error) = jwks.fetch().await {
                    tracing::warn!(url = %jwks.url, error = %error, "JWKS refresh failed; keeping the last good keys");
                }
            }
        });
    }

    async fn fetch(&self) -> Result<(), String> {
        let response = self
            .http
            .get(self.url.clone())
            .header(ACCEPT, "application/json")
            .timeout(self.options.timeout)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!(
                "the key set endpoint answered {}",
                response.status()
            ));
        }
        let max_age = response
            .headers()
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = crate::discovery::http::read_bounded(response, self.options.max_body_bytes)
            .await
            .map_err(|e| e.to_string())?;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("malformed key set: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let key = VerifyingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
            keys.insert(key.kid.clone(), key);
        }
        if keys.is_empty() {
            return Err("the key set has no keys".into());
        }
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
    let key = match kid {
        Some(kid) => set.keys.get(&Some(kid.to_owned()))?,
        None => {
            let mut of_alg = set.keys.values().filter(|k| k.algorithm == alg);
            let key = of_alg.next()?;
            if of_alg.next().is_some() {
                return None;
            }
            key
        }
    };
    (key.algorithm == alg).then(|| key.clone())
}

/// `max-age` from a `Cache-Control` value.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|part| {
        let (name, seconds) = part.trim().split_once('=')?;
        (name.eq_ignore_ascii_case("max-age"))
            .then(|| seconds.trim().parse().ok().map(Duration::from_secs))?
    })
}
