//! Verifying inbound JWTs, strictly (RFC 8725, "JSON Web Token Best Current Practices").

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::Jwks;
use crate::error::Error;

/// The largest token accepted, in bytes; a longer one is refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was refused. The reason is for logs and metrics; a server answers every one of
/// them with the same `401` (RFC 6750), telling an attacker nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// No token, or not a `Bearer` one.
    #[error("no bearer token")]
    Missing,
    /// Over [`MAX_TOKEN_BYTES`], characters outside base64url and `.`, or not three parts.
    #[error("malformed token")]
    Malformed,
    /// The header is not valid JSON, names `none` or an algorithm not allowed, or carries
    /// `crit`.
    #[error("header refused")]
    Header,
    /// No key for the token's `kid`, or a key bound to another algorithm.
    #[error("no matching key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// Expired (past `exp` plus leeway), or `exp` missing or not a number.
    #[error("expired")]
    Expired,
    /// Not valid yet (`nbf` in the future, beyond leeway).
    #[error("not valid yet")]
    NotYetValid,
    /// `aud` missing or not the expected audience.
    #[error("wrong audience")]
    Audience,
    /// `iss` missing or not the expected issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `typ` is not the expected one.
    #[error("wrong type")]
    Type,
    /// The key set could not be fetched and the last good one is too old: fail closed.
    #[error("keys unavailable")]
    KeysUnavailable,
}

impl Rejection {
    /// A short label for metrics: `missing`, `malformed`, `header`, ...
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed => "malformed",
            Rejection::Header => "header",
            Rejection::UnknownKey => "unknown_key",
            Rejection::Signature => "signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::Audience => "audience",
            Rejection::Issuer => "issuer",
            Rejection::Type => "type",
            Rejection::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// A verification key, bound to the one algorithm it may verify (RFC 8725 §3.1): a key made
/// for RS256 can never check an HS256 token, so HS/RS confusion is impossible.
#[derive(Clone)]
pub struct VerifyingKey {
    pub(crate) kid: Option<String>,
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn key_error(e: jsonwebtoken::errors::Error) -> Error {
    Error::builder("auth.key", "is not a valid key for its algorithm").with_source(e)
}

impl VerifyingKey {
    /// An HMAC secret for `algorithm` (HS256/384/512); a secret shorter than the hash's
    /// output is refused (RFC 7518 §3.2).
    pub fn hmac(algorithm: Algorithm, secret: &[u8]) -> Result<Self, Error> {
        let needed = super::hmac_len(algorithm)
            .ok_or_else(|| Error::builder("auth.algorithm", "is not an HMAC algorithm"))?;
        if secret.len() < needed {
            return Err(Error::builder(
                "auth.key",
                format!("an {algorithm:?} secret must have at least {needed} bytes"),
            ));
        }
        Ok(VerifyingKey {
            kid: None,
            algorithm,
            key: DecodingKey::from_secret(secret),
        })
    }

    /// A public key in PEM for `algorithm` (RSA, PSS, ECDSA or EdDSA).
    pub fn from_pem(algorithm: Algorithm, pem: &[u8]) -> Result<Self, Error> {
        use jsonwebtoken::AlgorithmFamily::*;
        let key = match algorithm.family() {
            Rsa => DecodingKey::from_rsa_pem(pem),
            Ec => DecodingKey::from_ec_pem(pem),
            Ed => DecodingKey::from_ed_pem(pem),
            Hmac => return Err(super::not_public_key("PEM")),
        }
        .map_err(key_error)?;
        Ok(VerifyingKey {
            kid: None,
            algorithm,
            key,
        })
    }

    /// A public key in DER for `algorithm`: PKCS#1 for RSA and PSS, the raw point or key for
    /// ECDSA and EdDSA (as jsonwebtoken reads them).
    pub fn from_der(algorithm: Algorithm, der: &[u8]) -> Result<Self, Error> {
        use jsonwebtoken::AlgorithmFamily::*;
        let key = match algorithm.family() {
            Rsa => DecodingKey::from_rsa_der(der),
            Ec => DecodingKey::from_ec_der(der),
            Ed => DecodingKey::from_ed_der(der),
            Hmac => return Err(super::not_public_key("DER")),
        };
        Ok(VerifyingKey {
            kid: None,
            algorithm,
            key,
        })
    }

    /// A public key from a JWK (RFC 7517), which must name its `alg`.
    pub fn from_jwk(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Self, Error> {
        let algorithm = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
            .ok_or_else(|| Error::builder("auth.key.alg", "a JWK must name its algorithm"))?;
        Ok(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key: DecodingKey::from_jwk(jwk).map_err(key_error)?,
        })
    }

    /// Names the key, to be picked by a token's `kid`.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The algorithm the key is bound to.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// Where a verifier's keys come from.
#[derive(Clone, Debug)]
enum Keys {
    Static(Arc<[VerifyingKey]>),
    Remote(Arc<Jwks>),
}

/// The verified claims of a token; a server layer puts them in the request's extensions.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims(Map<String, Value>);

impl Claims {
    /// A claim by name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// `sub`.
    pub fn subject(&self) -> Option<&str> {
        self.0.get("sub").and_then(Value::as_str)
    }

    /// `iss`.
    pub fn issuer(&self) -> Option<&str> {
        self.0.get("iss").and_then(Value::as_str)
    }

    /// Every claim.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// Verifies JWTs against keys given here or fetched from a JWKS.
///
/// Defaults are strict (RFC 8725): algorithms come only from the keys (never from the token
/// header), `none` is never accepted, `exp` is required, `nbf` is checked, the leeway is 60 s,
/// a configured audience or issuer makes its claim required, `crit` is refused, and a token
/// over 8 KiB or with a character outside base64url and `.` is refused before any parsing.
/// `jku`, `x5u` and an embedded `jwk` are never used: keys come only from the verifier's own
/// configuration.
#[derive(Clone)]
pub struct Verifier {
    keys: Keys,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: Duration,
    typ: Option<String>,
    /// The algorithms accepted; `None`: every one a key serves.
    algorithms: Option<Arc<[Algorithm]>>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("typ", &self.typ)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

fn system_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verifier {
    /// A verifier with fixed keys.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Verifier::with_keys(Keys::Static(keys.into_iter().collect()))
    }

    /// A verifier whose keys come from a remote key set. A set made with
    /// [`Jwks::from_issuer`] also sets the required issuer (`iss`) to its provider's.
    pub fn with_jwks(jwks: Arc<Jwks>) -> Self {
        let issuer = jwks.issuer().map(str::to_owned);
        let mut verifier = Verifier::with_keys(Keys::Remote(jwks));
        verifier.issuer = issuer;
        verifier
    }

    fn with_keys(keys: Keys) -> Self {
        Verifier {
            keys,
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(60),
            typ: None,
            algorithms: None,
            clock: Arc::new(system_clock),
        }
    }

    /// Reads the time (seconds since the Unix epoch) from `clock` instead of the system's:
    /// for tests at exact instants.
    pub fn clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Requires `aud` to be (or contain) `audience`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Requires `iss` to be `issuer`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The clock leeway for `exp` and `nbf` (60 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Requires the header's `typ` to be `typ` (RFC 8725 §3.11), such as `at+jwt`.
    pub fn require_typ(mut self, typ: impl Into<String>) -> Self {
        self.typ = Some(typ.into());
        self
    }

    /// Accepts only tokens signed with one of `algorithms`, whatever the keys allow: a key
    /// without `alg` in a JWKS serves every algorithm of its family (an RSA key RS256 to
    /// PS512), and this narrows it, as an OpenID provider's
    /// `id_token_signing_alg_values_supported` would. A token of another algorithm is
    /// refused as [`Rejection::Header`]. Every algorithm a key serves, unless set; an empty
    /// list refuses every token.
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = Some(algorithms.into_iter().collect());
        self
    }

    /// Verifies `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        let header = precheck(token)?;
        if let Some(allowed) = &self.algorithms
            && !allowed.contains(&header.alg)
        {
            return Err(Rejection::Header);
        }
        let key = match &self.keys {
            Keys::Static(keys) => select(keys, &header)?,
            Keys::Remote(jwks) => jwks.key_for(header.kid.as_deref(), header.alg).await?,
        };
        if let Some(typ) = &self.typ
            && !header
                .typ
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(typ))
        {
            return Err(Rejection::Type);
        }
        self.decode(token, &key)
    }

    fn decode(&self, token: &str, key: &VerifyingKey) -> Result<Claims, Rejection> {
        let mut validation = Validation::new(key.algorithm);
        // exp and nbf are checked below, against the verifier's own clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let mut required: HashSet<String> = HashSet::from(["exp".to_owned()]);
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.insert("iss".to_owned());
        }
        validation.required_spec_claims = required;
        let claims = match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
        {
            Ok(data) => data.claims,
            Err(error) => return Err(rejection(&error)),
        };
        self.check_times(&claims)?;
        Ok(Claims(claims))
    }

    /// `exp` is required and `nbf` optional; both must be numbers (RFC 7519 NumericDate,
    /// fractions allowed), compared with the leeway.
    fn check_times(&self, claims: &Map<String, Value>) -> Result<(), Rejection> {
        let now = (self.clock)() as f64;
        let leeway = self.leeway.as_secs_f64();
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .filter(|e| e.is_finite())
            .ok_or(Rejection::Expired)?;
        if now > exp + leeway {
            return Err(Rejection::Expired);
        }
        match claims.get("nbf") {
            None => Ok(()),
            Some(nbf) => {
                let nbf = nbf
                    .as_f64()
                    .filter(|n| n.is_finite())
                    .ok_or(Rejection::NotYetValid)?;
                if now + leeway < nbf {
                    Err(Rejection::NotYetValid)
                } else {
                    Ok(())
                }
            }
        }
    }
}

fn rejection(error: &jsonwebtoken::errors::Error) -> Rejection {
    use jsonwebtoken::errors::ErrorKind::*;
    match error.kind() {
        InvalidSignature => Rejection::Signature,
        ExpiredSignature => Rejection::Expired,
        ImmatureSignature => Rejection::NotYetValid,
        InvalidAudience => Rejection::Audience,
        InvalidIssuer => Rejection::Issuer,
        MissingRequiredClaim(claim) => match claim.as_str() {
            "aud" => Rejection::Audience,
            "iss" => Rejection::Issuer,
            _ => Rejection::Expired,
        },
        InvalidAlgorithm | InvalidAlgorithmName => Rejection::Header,
        _ => Rejection::Malformed,
    }
}

/// What the verifier reads of a header, read by hand so that nothing it does not know is
/// silently ignored.
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    typ: Option<String>,
}

/// The checks made before any signature work: size, alphabet, shape, and a header that names
/// an allowed algorithm and no `crit`.
pub(crate) fn precheck(token: &str) -> Result<Header, Rejection> {
    if token.len() > MAX_TOKEN_BYTES
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || token.bytes().filter(|&b| b == b'.').count() != 2
    {
        return Err(Rejection::Malformed);
    }
    let encoded = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| Rejection::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&json).map_err(|_| Rejection::Header)?;
    if header.contains_key("crit") {
        // RFC 7515 §4.1.11: extensions we do not understand must make the token invalid.
        return Err(Rejection::Header);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Rejection::Header)?;
    // "none" in any case is never an algorithm here; the parse refuses it and any unknown one.
    let alg: Algorithm = alg.parse().map_err(|_| Rejection::Header)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) if kid.len() <= 256 => Some(kid.clone()),
        Some(_) => return Err(Rejection::UnknownKey),
    };
    let typ = header.get("typ").and_then(Value::as_str).map(str::to_owned);
    Ok(Header { alg, kid, typ })
}

/// The key for a header from a fixed set: by `kid`, or the only key for its algorithm; in
/// both cases bound to the header's algorithm.
pub(crate) fn select(keys: &[VerifyingKey], header: &Header) -> Result<VerifyingKey, Rejection> {
    let mut candidates = keys.iter().filter(|k| match &header.kid {
        Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
        None => true,
    });
    let key = match &header.kid {
        Some(_) => candidates.next(),
        None => {
            let mut of_alg = candidates.filter(|k| k.algorithm == header.alg);
            let first = of_alg.next();
            if of_alg.next().is_some() {
                // Two keys and no kid to choose: refuse rather than guess.
                return Err(Rejection::UnknownKey);
            }
            first
        }
    }
    .ok_or(Rejection::UnknownKey)?;
    if key.algorithm != header.alg {
        return Err(Rejection::UnknownKey);
    }
    Ok(key.clone())
}
