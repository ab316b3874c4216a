//! A token endpoint's answer (RFC 6749 §5): a token and its lifetime, or a refusal's code.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// The longest lifetime taken from `expires_in`: a token is fetched again at least daily.
pub(super) const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The lifetime of a token whose response has no `expires_in`.
pub(super) const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// A successful token response, checked. Its `Debug` leaves the token out.
#[derive(PartialEq)]
pub(crate) struct Issued {
    pub(crate) access_token: String,
    pub(crate) lifetime: Duration,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("access_token", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// Reads a successful token response (RFC 6749 §5.1): a bearer `access_token`, and
/// `expires_in` as a number or a numeric string (some providers send one), capped at a day;
/// five minutes without it.
pub(crate) fn token_response(body: &[u8]) -> Result<Issued, String> {
    #[derive(Deserialize)]
    struct Response {
        access_token: String,
        token_type: String,
        #[serde(default)]
        expires_in: Option<Value>,
    }
    let response: Response = serde_json::from_slice(body)
        .map_err(|_| "the token response is not a valid token response".to_owned())?;
    if !response.token_type.eq_ignore_ascii_case("bearer") {
        return Err("the token endpoint issued a token that is not a bearer token".into());
    }
    if response.access_token.is_empty() {
        return Err("the token endpoint issued an empty token".into());
    }
    let seconds = match &response.expires_in {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => return Err("expires_in is not a number of seconds".into()),
    };
    let lifetime = match seconds {
        None if response.expires_in.as_ref().is_some_and(|v| !v.is_null()) => {
            return Err("expires_in is not a number of seconds".into());
        }
        None => DEFAULT_LIFETIME,
        Some(s) if s.is_finite() && s >= 0.0 => {
            Duration::from_secs_f64(s.min(MAX_LIFETIME.as_secs_f64())).max(Duration::from_secs(1))
        }
        Some(_) => return Err("expires_in is not a number of seconds".into()),
    };
    Ok(Issued {
        access_token: response.access_token,
        lifetime,
    })
}

/// The RFC 6749 §5.2 `error` code of a refusal: printable ASCII, at most 64 characters, or
/// `unknown`. It names the problem without secrets.
pub(crate) fn error_code(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Refusal {
        error: String,
    }
    serde_json::from_slice::<Refusal>(body)
        .ok()
        .map(|e| {
            e.error
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect::<String>()
        })
        .filter(|code| !code.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
