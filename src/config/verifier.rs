//! `[verifier]`: [`VerifierConfig`], the verifier of a server's inbound JWTs.

use std::time::Duration;

use serde::Deserialize;

use super::duration;
use crate::error::Error;

/// `[verifier]`: the [`Verifier`](crate::auth::Verifier) of a server's inbound JWTs
/// (feature `jwt`), with its keys from a JWKS.
///
/// With `issuer` alone the key set is found through the issuer's OpenID Connect discovery
/// document ([`Jwks::from_issuer`](crate::auth::Jwks::from_issuer)); with `jwks_url` it is
/// fetched from there, and `issuer`, if given, is required of every token's `iss`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VerifierConfig {
    /// The issuer (`iss`) every token must name; without `jwks_url`, an OpenID provider.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The key set's URL, when it is not found through OIDC discovery.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The audience (`aud`) every token must name.
    #[serde(default)]
    pub audience: Option<String>,
    /// The header `typ` every token must carry, such as `at+jwt`.
    #[serde(default)]
    pub require_typ: Option<String>,
    /// The only signature algorithms accepted, such as `["RS256"]`; every one the keys
    /// serve unless set.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// The clock leeway for `exp` and `nbf` (60 s).
    #[serde(default, deserialize_with = "duration::optional")]
    pub leeway: Option<Duration>,
    /// How long past their expiry the last good keys serve while the provider is down (1 h).
    #[serde(default, deserialize_with = "duration::optional")]
    pub max_stale: Option<Duration>,
}

impl VerifierConfig {
    pub(super) fn check(&self) -> Result<(), Error> {
        if self.issuer.is_none() && self.jwks_url.is_none() {
            return Err(Error::config(
                "verifier.issuer",
                "give issuer (OIDC discovery), jwks_url, or both",
            ));
        }
        if let Some(leeway) = self.leeway {
            crate::error::check_duration("verifier.leeway", leeway)
                .map_err(|e| Error::config("verifier.leeway", e.to_string()))?;
        }
        if self.max_stale == Some(Duration::ZERO) {
            return Err(Error::config(
                "verifier.max_stale",
                "must be greater than zero",
            ));
        }
        if let Some(algorithms) = &self.algorithms {
            if algorithms.is_empty() {
                return Err(Error::config(
                    "verifier.algorithms",
                    "must name at least one algorithm; leave it out for every one",
                ));
            }
            const PUBLIC_KEY: [&str; 9] = [
                "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
            ];
            if let Some(name) = algorithms
                .iter()
                .find(|a| !PUBLIC_KEY.contains(&a.as_str()))
            {
                return Err(Error::config(
                    "verifier.algorithms",
                    format!("{name:?} is not a public-key JWS algorithm this crate verifies"),
                ));
            }
        }
        if cfg!(not(feature = "jwt")) {
            return Err(Error::config(
                "verifier",
                "needs the jwt feature of proxyless",
            ));
        }
        Ok(())
    }

    /// The verifier this section describes. Nothing is fetched yet.
    #[cfg(feature = "jwt")]
    pub fn build(&self) -> Result<crate::auth::Verifier, Error> {
        use crate::auth::{Jwks, JwksOptions, Verifier};
        self.check()?;
        let mut options = JwksOptions::default();
        if let Some(max_stale) = self.max_stale {
            options = options.max_stale(max_stale);
        }
        let relabel = |field: &'static str| {
            move |e: Error| {
                let message = e.to_string();
                Error::config(field, message).with_source(e)
            }
        };
        let mut verifier = match (&self.jwks_url, &self.issuer) {
            (Some(url), issuer) => {
                let verifier = Verifier::with_jwks(
                    Jwks::new(url, options).map_err(relabel("verifier.jwks_url"))?,
                );
                match issuer {
                    Some(issuer) => verifier.issuer(issuer.clone()),
                    None => verifier,
                }
            }
            (None, Some(issuer)) => Verifier::with_jwks(
                Jwks::from_issuer(issuer, options).map_err(relabel("verifier.issuer"))?,
            ),
            (None, None) => {
                return Err(Error::config("verifier.issuer", "give issuer or jwks_url"));
            }
        };
        if let Some(audience) = &self.audience {
            verifier = verifier.audience(audience.clone());
        }
        if let Some(typ) = &self.require_typ {
            verifier = verifier.require_typ(typ.clone());
        }
        if let Some(leeway) = self.leeway {
            verifier = verifier.leeway(leeway);
        }
        if let Some(algorithms) = &self.algorithms {
            let parsed = algorithms.iter().filter_map(|a| a.parse().ok());
            verifier = verifier.algorithms(parsed.collect::<Vec<_>>());
        }
        Ok(verifier)
    }
}
