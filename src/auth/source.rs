//! Outbound tokens: where they come from ([`TokenSource`]) and how they are kept fresh.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderValue;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::boxed::BoxFuture;
use crate::endpoint::ServiceName;
use crate::error::{Error, Kind};
use crate::secret::Secret;

/// A ready `Authorization: Bearer …` header value, marked sensitive: it never shows in
/// `Debug` (its own, or reqwest's of the request).
#[derive(Clone)]
pub struct BearerToken(HeaderValue);

impl BearerToken {
    /// Wraps a token; fails if it cannot be a header value.
    pub fn new(token: &str) -> Result<Self, Error> {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            Error::new(Kind::Auth).with_message("the token is not a valid header value")
        })?;
        value.set_sensitive(true);
        Ok(BearerToken(value))
    }

    /// The header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The header value, taken out: a request it goes on needs no copy of it (a copy and its
    /// drop are a locked reference-count update each).
    pub(crate) fn into_header_value(self) -> HeaderValue {
        self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(\"<redacted>\")")
    }
}

/// Where the mesh gets the bearer token for calls to a service.
pub trait TokenSource: Send + Sync + 'static {
    /// The token for calls to `audience`, the logical service called.
    fn token<'a>(&'a self, audience: &'a ServiceName) -> BoxFuture<'a, Result<BearerToken, Error>>;

    /// The token for `service` if one is ready now, without waiting or allocating: the
    /// path [`AttachToken`](super::AttachToken) tries first, before it calls
    /// [`TokenSource::token`]. `None`, the default, means "ask `token`". An implementation
    /// returns a token here only when `token` would return the same one at once.
    fn ready(&self, service: &str) -> Option<BearerToken> {
        let _ = service;
        None
    }
}

/// The same token for every call.
#[derive(Clone, Debug)]
pub struct StaticToken(BearerToken);

impl StaticToken {
    /// A fixed token.
    pub fn new(token: &Secret) -> Result<Self, Error> {
        BearerToken::new(token.expose()).map(StaticToken)
    }
}

impl TokenSource for StaticToken {
    fn token<'a>(&'a self, _: &'a ServiceName) -> BoxFuture<'a, Result<BearerToken, Error>> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }

    fn ready(&self, _: &str) -> Option<BearerToken> {
        Some(self.0.clone())
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A private key, bound to the algorithm it signs with.
#[derive(Clone)]
pub struct SigningKey {
    algorithm: Algorithm,
    key: EncodingKey,
    kid: Option<String>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// An HMAC secret; shorter than the hash's output is refused (RFC 7518 §3.2).
    pub fn hmac(algorithm: Algorithm, secret: &Secret) -> Result<Self, Error> {
        let needed = super::hmac_len(algorithm)
            .ok_or_else(|| Error::builder("auth.algorithm", "is not an HMAC algorithm"))?;
        if secret.expose().len() < needed {
            return Err(Error::builder(
                "auth.key",
                format!("an {algorithm:?} secret must have at least {needed} bytes"),
            ));
        }
        Ok(SigningKey {
            algorithm,
            key: EncodingKey::from_secret(secret.expose().as_bytes()),
            kid: None,
        })
    }

    /// A private key in PEM (PKCS#8, or PKCS#1 for RSA).
    pub fn from_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, Error> {
        use jsonwebtoken::AlgorithmFamily::*;
        let key = match algorithm.family() {
            Rsa => EncodingKey::from_rsa_pem(pem),
            Ec => EncodingKey::from_ec_pem(pem),
            Ed => EncodingKey::from_ed_pem(pem),
            Hmac => return Err(super::not_public_key("PEM")),
        }
        .map_err(|e| Error::builder("auth.key", "is not a valid private key").with_source(e))?;
        Ok(SigningKey {
            algorithm,
            key,
            kid: None,
        })
    }

    /// A private key in DER (PKCS#1 for RSA, PKCS#8 for ECDSA and EdDSA).
    pub fn from_der(algorithm: Algorithm, der: &[u8]) -> Result<Self, Error> {
        use jsonwebtoken::AlgorithmFamily::*;
        let key = match algorithm.family() {
            Rsa => EncodingKey::from_rsa_der(der),
            Ec => EncodingKey::from_ec_der(der),
            Ed => EncodingKey::from_ed_der(der),
            Hmac => return Err(super::not_public_key("DER")),
        };
        Ok(SigningKey {
            algorithm,
            key,
            kid: None,
        })
    }

    /// An HMAC key from a JWK of type `oct` (its `k`, base64url), with its `alg`.
    pub fn from_oct_jwk(jwk: &Value) -> Result<Self, Error> {
        use base64::Engine as _;
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        if field("kty") != Some("oct") {
            return Err(Error::builder(
                "auth.key.kty",
                "only oct JWKs are signing keys here",
            ));
        }
        let algorithm: Algorithm = field("alg")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Error::builder("auth.key.alg", "a JWK must name its algorithm"))?;
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(field("k").unwrap_or_default())
            .map_err(|_| Error::builder("auth.key.k", "is not base64url"))?;
        let secret = Secret::new(String::from_utf8_lossy(&secret).into_owned());
        let mut key = SigningKey::hmac(algorithm, &secret)?;
        key.kid = field("kid").map(str::to_owned);
        Ok(key)
    }

    /// Names the key in the tokens' `kid`.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// A compact JWS of `claims`, with the key's algorithm and `kid` in its header.
    pub(crate) fn sign(&self, claims: &Map<String, Value>) -> Result<String, Error> {
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| {
            Error::new(Kind::Auth)
                .with_message("signing failed")
                .with_source(e)
        })
    }
}

/// A random `jti` (RFC 7519 §4.1.7): 128 bits in hex.
pub(crate) fn random_jti() -> String {
    format!("{:032x}", rand::random::<u128>())
}

struct Cached {
    token: BearerToken,
    /// When to sign again (before expiry).
    refresh_at: Instant,
    expires_at: Instant,
}

/// Signs JWTs for outbound calls: one token per audience, cached and re-signed in the
/// background before it expires, so that after the first call to a service no token is
/// signed on the request path.
///
/// Claims: `iss` and `sub` as set; `aud` the target service's name unless overridden per
/// service; `iat` and `nbf` now; `exp` now plus the lifetime (5 minutes unless set); a
/// random `jti`; and any custom claims.
pub struct JwtSigner {
    key: SigningKey,
    issuer: Option<String>,
    subject: Option<String>,
    audiences: HashMap<String, String>,
    audience: Option<String>,
    lifetime: Duration,
    custom: Map<String, Value>,
    cache: ArcSwap<HashMap<String, Arc<Cached>, crate::hash::BuildNameHasher>>,
    refreshing: Mutex<std::collections::HashSet<String>>,
    me: std::sync::Weak<JwtSigner>,
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("key", &self.key)
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Builds a [`JwtSigner`].
#[derive(Debug)]
#[must_use]
pub struct JwtSignerBuilder {
    key: SigningKey,
    issuer: Option<String>,
    subject: Option<String>,
    audiences: HashMap<String, String>,
    audience: Option<String>,
    lifetime: Duration,
    custom: Map<String, Value>,
}

impl JwtSignerBuilder {
    /// `iss`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// `sub`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Uses `audience` as `aud` for calls to `service` instead of its name.
    pub fn audience_for(mut self, service: impl Into<String>, audience: impl Into<String>) -> Self {
        self.audiences.insert(service.into(), audience.into());
        self
    }

    /// Uses `audience` as `aud` for every call whose service [`audience_for`] does not name,
    /// instead of the service's name.
    ///
    /// [`audience_for`]: JwtSignerBuilder::audience_for
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// How long a token is valid (5 minutes).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Adds a custom claim.
    pub fn claim(mut self, name: impl Into<String>, value: Value) -> Self {
        self.custom.insert(name.into(), value);
        self
    }

    /// The signer, shared.
    pub fn build(self) -> Result<Arc<JwtSigner>, Error> {
        if self.lifetime < Duration::from_secs(1) {
            return Err(Error::builder("jwt.lifetime", "must be at least a second"));
        }
        Ok(Arc::new_cyclic(|me| JwtSigner {
            key: self.key,
            issuer: self.issuer,
            subject: self.subject,
            audiences: self.audiences,
            audience: self.audience,
            lifetime: self.lifetime,
            custom: self.custom,
            cache: ArcSwap::default(),
            refreshing: Mutex::new(Default::default()),
            me: me.clone(),
        }))
    }
}

impl JwtSigner {
    /// A builder signing with `key`.
    pub fn builder(key: SigningKey) -> JwtSignerBuilder {
        JwtSignerBuilder {
            key,
            issuer: None,
            subject: None,
            audiences: HashMap::new(),
            audience: None,
            lifetime: Duration::from_secs(300),
            custom: Map::new(),
        }
    }

    fn sign(&self, audience: &str) -> Result<Cached, Error> {
        metrics::counter!(crate::names::TOKEN_REFRESHES, "source" => "jwt").increment(1);
        let now = unix_now();
        let mut claims = self.custom.clone();
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), Value::from(iss.clone()));
        }
        if let Some(sub) = &self.subject {
            claims.insert("sub".into(), Value::from(sub.clone()));
        }
        claims.insert("aud".into(), Value::from(audience));
        claims.insert("iat".into(), Value::from(now));
        claims.insert("nbf".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(now + self.lifetime.as_secs()));
        claims.insert("jti".into(), Value::from(random_jti()));
        let token = self.key.sign(&claims)?;
        let start = Instant::now();
        Ok(Cached {
            token: BearerToken::new(&token)?,
            // Re-sign when 80% of the lifetime has passed.
            refresh_at: start + self.lifetime.mul_f64(0.8),
            expires_at: start + self.lifetime,
        })
    }

    fn store(&self, audience: &str, cached: Cached) -> BearerToken {
        let token = cached.token.clone();
        let cached = Arc::new(cached);
        self.cache.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(audience.to_owned(), cached.clone());
            map
        });
        token
    }
}

impl JwtSigner {
    /// The `aud` of calls to `service`: its own, the fixed one, or its name.
    fn audience_of<'a>(&'a self, service: &'a str) -> &'a str {
        self.audiences
            .get(service)
            .or(self.audience.as_ref())
            .map_or(service, String::as_str)
    }
}

impl TokenSource for JwtSigner {
    fn ready(&self, service: &str) -> Option<BearerToken> {
        let audience = self.audience_of(service);
        let cache = self.cache.load();
        let cached = cache.get(audience)?;
        // Past the refresh point, `token` starts the re-signing.
        (crate::clock::now() < cached.refresh_at).then(|| cached.token.clone())
    }

    fn token<'a>(&'a self, service: &'a ServiceName) -> BoxFuture<'a, Result<BearerToken, Error>> {
        Box::pin(async move {
            let audience = self.audience_of(service.as_str());
            let now = Instant::now();
            if let Some(cached) = self.cache.load().get(audience).cloned()
                && now < cached.expires_at
            {
                if now >= cached.refresh_at {
                    // Re-sign in the background; this call keeps the valid token.
                    let first = self
                        .refreshing
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(audience.to_owned());
                    if let (true, Some(signer)) = (first, self.me.upgrade()) {
                        let audience = audience.to_owned();
                        tokio::spawn(async move {
                            match signer.sign(&audience) {
                                Ok(fresh) => {
                                    signer.store(&audience, fresh);
                                }
                                Err(error) => {
                                    tracing::warn!(error = %error, "token re-signing failed")
                                }
                            }
                            signer
                                .refreshing
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .remove(&audience);
                        });
                    }
                }
                return Ok(cached.token.clone());
            }
            let fresh = self.sign(audience)?;
            Ok(self.store(audience, fresh))
        })
    }
}
