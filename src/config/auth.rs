//! `[…traffic.auth]`: where outbound tokens come from, [`AuthConfig`], a variant per `kind`.
//!
//! Read as one flat table (so that an error inside it names its exact field) and taken
//! apart by `kind`, as `[discovery.<name>]` is (see `backend.rs`); what a value may be is
//! checked by the token source's own builder, its errors named as the section's fields.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{SettingError, duration};
use crate::client::TrafficPolicy;
use crate::error::Error;
use crate::secret::Secret;

/// Where a service's outbound tokens come from: `kind = "static"`, `"jwt"` or `"oauth2"`,
/// and the settings of that kind (feature `jwt`). Secrets are never shown in `Debug`.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "Section")]
#[non_exhaustive]
pub enum AuthConfig {
    /// One fixed token.
    Static(StaticAuth),
    /// Tokens signed here.
    Jwt(JwtAuth),
    /// OAuth2 client credentials.
    Oauth2(OAuth2Auth),
}

/// `kind = "static"`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StaticAuth {
    /// The token.
    pub token: Secret,
    /// Replace an `Authorization` header the caller set.
    pub replace_existing: bool,
}

/// A private key: `algorithm` (`HS256` … `EdDSA`), `key_file` (PEM) or `secret` (HMAC),
/// and `kid`.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct KeyConfig {
    /// The JWT algorithm.
    pub algorithm: Option<String>,
    /// A private key in PEM.
    pub key_file: Option<PathBuf>,
    /// An HMAC secret (not for `private_key_jwt`).
    pub secret: Option<Secret>,
    /// The key's `kid`.
    pub kid: Option<String>,
}

/// `kind = "jwt"`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JwtAuth {
    /// The signing key.
    pub key: KeyConfig,
    /// `iss`.
    pub issuer: Option<String>,
    /// `sub`.
    pub subject: Option<String>,
    /// How long a token is valid.
    pub lifetime: Option<Duration>,
    /// The `aud` of every token instead of the service name.
    pub audience: Option<String>,
    /// Replace an `Authorization` header the caller set.
    pub replace_existing: bool,
}

/// `kind = "oauth2"`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OAuth2Auth {
    /// The token endpoint.
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// The client secret (not with `private_key_jwt`).
    pub client_secret: Option<Secret>,
    /// `"basic"` (the default), `"post"`, or `"private_key_jwt"` (with `algorithm`,
    /// `key_file` and optionally `kid`, instead of `client_secret`).
    pub client_auth: Option<String>,
    /// The key of `private_key_jwt`.
    pub key: KeyConfig,
    /// The scope requested.
    pub scope: Option<String>,
    /// The audience requested.
    pub audience: Option<String>,
    /// Replace an `Authorization` header the caller set.
    pub replace_existing: bool,
}

/// The kinds, as written in `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Static,
    Jwt,
    Oauth2,
}

/// A section as written: every setting of every kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    kind: Kind,
    #[serde(default)]
    token: Option<Secret>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    secret: Option<Secret>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default, deserialize_with = "duration::optional")]
    lifetime: Option<Duration>,
    #[serde(default)]
    token_url: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<Secret>,
    #[serde(default)]
    client_auth: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    replace_existing: Option<bool>,
}

impl TryFrom<Section> for AuthConfig {
    type Error = SettingError;

    fn try_from(section: Section) -> Result<Self, SettingError> {
        let Section {
            kind,
            token,
            algorithm,
            key_file,
            secret,
            kid,
            issuer,
            subject,
            lifetime,
            token_url,
            client_id,
            client_secret,
            client_auth,
            scope,
            audience,
            replace_existing,
        } = section;
        let name = match kind {
            Kind::Static => "static",
            Kind::Jwt => "jwt",
            Kind::Oauth2 => "oauth2",
        };
        // The settings of the other kinds, which this section must not give.
        let foreign = |settings: &[(&'static str, bool)]| match settings.iter().find(|s| s.1) {
            Some((setting, _)) => Err(SettingError::new(
                setting,
                format!("is not a setting of {name} auth"),
            )),
            None => Ok(()),
        };
        let required = |setting: &'static str| {
            SettingError::new(setting, format!("is required for {name} auth"))
        };
        let replace_existing = replace_existing.unwrap_or(false);
        let signed = [
            ("issuer", issuer.is_some()),
            ("subject", subject.is_some()),
            ("lifetime", lifetime.is_some()),
        ];
        let oauth2 = [
            ("token_url", token_url.is_some()),
            ("client_id", client_id.is_some()),
            ("client_secret", client_secret.is_some()),
            ("client_auth", client_auth.is_some()),
            ("scope", scope.is_some()),
        ];
        let key = KeyConfig {
            algorithm,
            key_file,
            secret,
            kid,
        };
        let keyed = [
            ("algorithm", key.algorithm.is_some()),
            ("key_file", key.key_file.is_some()),
            ("secret", key.secret.is_some()),
            ("kid", key.kid.is_some()),
        ];
        Ok(match kind {
            Kind::Static => {
                foreign(&keyed)?;
                foreign(&signed)?;
                foreign(&oauth2)?;
                foreign(&[("audience", audience.is_some())])?;
                AuthConfig::Static(StaticAuth {
                    token: token.ok_or_else(|| required("token"))?,
                    replace_existing,
                })
            }
            Kind::Jwt => {
                foreign(&[("token", token.is_some())])?;
                foreign(&oauth2)?;
                AuthConfig::Jwt(JwtAuth {
                    key,
                    issuer,
                    subject,
                    lifetime,
                    audience,
                    replace_existing,
                })
            }
            Kind::Oauth2 => {
                foreign(&[("token", token.is_some()), ("secret", key.secret.is_some())])?;
                foreign(&signed)?;
                AuthConfig::Oauth2(OAuth2Auth {
                    token_url: token_url.ok_or_else(|| required("token_url"))?,
                    client_id: client_id.ok_or_else(|| required("client_id"))?,
                    client_secret,
                    client_auth,
                    key,
                    scope,
                    audience,
                    replace_existing,
                })
            }
        })
    }
}

impl AuthConfig {
    /// Whether the token replaces an `Authorization` header the caller set.
    pub fn replace_existing(&self) -> bool {
        match self {
            AuthConfig::Static(s) => s.replace_existing,
            AuthConfig::Jwt(j) => j.replace_existing,
            AuthConfig::Oauth2(o) => o.replace_existing,
        }
    }

    /// `policy` with this section's token source; an error names the setting under
    /// `field`.
    #[cfg_attr(not(feature = "jwt"), allow(unused_mut, unused_variables))]
    pub(crate) fn apply(
        &self,
        mut policy: TrafficPolicy,
        field: &str,
    ) -> Result<TrafficPolicy, Error> {
        #[cfg(feature = "jwt")]
        {
            let source = self.source(field)?;
            policy = if self.replace_existing() {
                policy.token_source_replacing(source)
            } else {
                policy.token_source(source)
            };
            Ok(policy)
        }
        #[cfg(not(feature = "jwt"))]
        Err(Error::config(
            format!("{field}.kind"),
            "needs the jwt feature of proxyless",
        ))
    }

    #[cfg(feature = "jwt")]
    fn source(&self, field: &str) -> Result<std::sync::Arc<dyn crate::auth::TokenSource>, Error> {
        use crate::auth::{ClientAuth, JwtSigner, OAuth2ClientCredentials, StaticToken};
        let relabel = |name: &str| relabel(field, name);
        match self {
            AuthConfig::Static(s) => Ok(std::sync::Arc::new(
                StaticToken::new(&s.token).map_err(relabel("token"))?,
            )),
            AuthConfig::Jwt(j) => {
                let mut signer = JwtSigner::builder(j.key.signing_key(field, "jwt")?);
                if let Some(issuer) = &j.issuer {
                    signer = signer.issuer(issuer.clone());
                }
                if let Some(subject) = &j.subject {
                    signer = signer.subject(subject.clone());
                }
                if let Some(lifetime) = j.lifetime {
                    signer = signer.lifetime(lifetime);
                }
                if let Some(audience) = &j.audience {
                    signer = signer.audience(audience.clone());
                }
                Ok(signer.build().map_err(relabel("lifetime"))?)
            }
            AuthConfig::Oauth2(o) => {
                let with_secret = |auth: ClientAuth| match &o.client_secret {
                    Some(secret) => Ok(OAuth2ClientCredentials::builder(
                        o.token_url.clone(),
                        o.client_id.clone(),
                        secret.clone(),
                    )
                    .client_auth(auth)),
                    None => Err(Error::config(
                        format!("{field}.client_secret"),
                        "is required for oauth2 auth, unless client_auth is \"private_key_jwt\"",
                    )),
                };
                let by_key = o.client_auth.as_deref() == Some("private_key_jwt");
                let key_setting = [
                    ("algorithm", o.key.algorithm.is_some()),
                    ("key_file", o.key.key_file.is_some()),
                    ("kid", o.key.kid.is_some()),
                ];
                if let Some((name, _)) = key_setting.iter().find(|(_, given)| *given && !by_key) {
                    return Err(Error::config(
                        format!("{field}.{name}"),
                        "is a setting of client_auth = \"private_key_jwt\" only",
                    ));
                }
                let mut builder = match o.client_auth.as_deref() {
                    None | Some("basic") => with_secret(ClientAuth::Basic)?,
                    Some("post") => with_secret(ClientAuth::Post)?,
                    Some("private_key_jwt") => {
                        if o.client_secret.is_some() {
                            return Err(Error::config(
                                format!("{field}.client_secret"),
                                "is not used with private_key_jwt, which signs with key_file",
                            ));
                        }
                        OAuth2ClientCredentials::with_private_key(
                            o.token_url.clone(),
                            o.client_id.clone(),
                            o.key.signing_key(field, "oauth2")?,
                        )
                    }
                    Some(_) => {
                        return Err(Error::config(
                            format!("{field}.client_auth"),
                            "must be \"basic\", \"post\" or \"private_key_jwt\"",
                        ));
                    }
                };
                if let Some(scope) = &o.scope {
                    builder = builder.scope(scope.clone());
                }
                if let Some(audience) = &o.audience {
                    builder = builder.audience(audience.clone());
                }
                Ok(builder.build().map_err(relabel("token_url"))?)
            }
        }
    }
}

impl KeyConfig {
    /// The key these settings describe; an error names the setting under `field`.
    #[cfg(feature = "jwt")]
    fn signing_key(&self, field: &str, kind: &str) -> Result<crate::auth::SigningKey, Error> {
        use crate::auth::SigningKey;
        let algorithm: crate::auth::Algorithm = match self.algorithm.as_deref() {
            None => {
                return Err(Error::config(
                    format!("{field}.algorithm"),
                    format!("is required for {kind} auth with a key"),
                ));
            }
            Some(algorithm) => algorithm.parse().map_err(|_| {
                Error::config(format!("{field}.algorithm"), "is not a JWT algorithm")
            })?,
        };
        let key = match (&self.key_file, &self.secret) {
            (Some(path), None) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Error::config(format!("{field}.key_file"), "could not be read").with_source(e)
                })?;
                SigningKey::from_pem(algorithm, &pem).map_err(relabel(field, "key_file"))?
            }
            (None, Some(secret)) => {
                SigningKey::hmac(algorithm, secret).map_err(relabel(field, "secret"))?
            }
            _ => {
                return Err(Error::config(
                    format!("{field}.key_file"),
                    "give key_file (PEM) or secret (HMAC), one of them",
                ));
            }
        };
        Ok(match &self.kid {
            Some(kid) => key.with_kid(kid.clone()),
            None => key,
        })
    }
}

/// A builder's error, named as the section's setting `name` under `field`.
#[cfg(feature = "jwt")]
fn relabel(field: &str, name: &str) -> impl Fn(Error) -> Error + use<> {
    let field = format!("{field}.{name}");
    move |e: Error| {
        let message = e.to_string();
        Error::config(field.clone(), message).with_source(e)
    }
}
