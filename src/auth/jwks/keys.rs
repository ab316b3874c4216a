//! The usable keys of a published key set: which keys can verify a signature, and for
//! which algorithms.

use std::collections::HashMap;

use jsonwebtoken::Algorithm;

use crate::auth::verifier::VerifyingKey;

/// Why a key of a set is skipped: a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skipped {
    /// `use` other than `sig`, or `key_ops` without `verify`.
    NotForSigning,
    /// A type, curve or algorithm this crate does not verify with, or a shared secret.
    Unsupported,
    /// A key that does not parse.
    Malformed,
}

impl Skipped {
    fn as_str(self) -> &'static str {
        match self {
            Skipped::NotForSigning => "not_for_signing",
            Skipped::Unsupported => "unsupported",
            Skipped::Malformed => "malformed",
        }
    }
}

/// How many of a set's skipped keys are shown in the log line that counts them.
const SHOWN_SKIPPED: usize = 10;

/// The usable keys of a JWKS body, by `kid`: an error only when the body is malformed or no
/// key in it can verify a signature (see the module documentation).
pub(crate) fn usable_keys(
    body: &[u8],
) -> Result<HashMap<Option<String>, Vec<VerifyingKey>>, String> {
    let mut keys: HashMap<Option<String>, Vec<VerifyingKey>> = HashMap::new();
    // Each key is read and looked at alone, and of the skipped ones only the first few are
    // kept for the log: a body of a million tiny elements costs no more than a few keys.
    let mut skipped = 0usize;
    let mut shown: Vec<(Option<String>, String)> = Vec::new();
    let each = |_: usize, value: serde_json::Value| {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        match verifying_keys(value) {
            Ok(usable) => {
                let slot = keys.entry(kid).or_default();
                for key in usable {
                    // A second key of the same `kid` and algorithm is ambiguous: the first
                    // one listed is kept.
                    if !slot.iter().any(|k| k.algorithm == key.algorithm) {
                        slot.push(key);
                    }
                }
            }
            Err((why, detail)) => {
                metrics::counter!(crate::names::JWKS_KEYS_SKIPPED, "reason" => why.as_str())
                    .increment(1);
                skipped += 1;
                if shown.len() < SHOWN_SKIPPED {
                    let kid = kid.map(|k| crate::json::clip(k, 64));
                    shown.push((kid, crate::json::clip(detail, 256)));
                }
            }
        }
    };
    let seed = crate::json::Member {
        name: "keys",
        inner: crate::json::Elements {
            each,
            max: usize::MAX,
            lone: false,
        },
    };
    match crate::json::read(body, seed) {
        Ok(Some(())) => {}
        Ok(None) => return Err("malformed key set: missing field `keys`".to_owned()),
        Err(e) => return Err(format!("malformed key set: {e}")),
    }
    if skipped > 0 {
        tracing::debug!(
            skipped,
            first = ?shown,
            usable = keys.len(),
            "skipped keys of the key set that cannot verify a signature"
        );
    }
    if keys.is_empty() {
        return Err(format!(
            "the key set has no key that can verify a signature ({skipped} skipped)"
        ));
    }
    Ok(keys)
}

/// The verifying keys of one JWK, one per algorithm it serves, or why it has none.
fn verifying_keys(value: serde_json::Value) -> Result<Vec<VerifyingKey>, (Skipped, String)> {
    let text = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    if let Some(usage) = text("use")
        && usage != "sig"
    {
        return Err((
            Skipped::NotForSigning,
            format!("use is {usage:?}, not \"sig\""),
        ));
    }
    if let Some(ops) = value.get("key_ops")
        && !ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op == "verify"))
    {
        return Err((
            Skipped::NotForSigning,
            "key_ops leave out \"verify\"".into(),
        ));
    }
    let kty = text("kty").unwrap_or_default();
    let crv = text("crv").unwrap_or_default();
    // The algorithms the key's own type and curve allow: a key is never used outside them.
    let family: &[Algorithm] = match (kty.as_str(), crv.as_str()) {
        ("RSA", _) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        ("EC", "P-256") => &[Algorithm::ES256],
        ("EC", "P-384") => &[Algorithm::ES384],
        ("OKP", "Ed25519") => &[Algorithm::EdDSA],
        ("oct", _) => {
            return Err((
                Skipped::Unsupported,
                "a shared secret is never taken from a published key set".into(),
            ));
        }
        _ => {
            return Err((
                Skipped::Unsupported,
                format!("key type {kty:?} with curve {crv:?} is not supported"),
            ));
        }
    };
    let algorithms: Vec<Algorithm> = match text("alg") {
        None => family.to_vec(),
        Some(alg) => match alg.parse::<Algorithm>() {
            Ok(alg) if family.contains(&alg) => vec![alg],
            _ => {
                return Err((
                    Skipped::Unsupported,
                    format!("alg {alg:?} is not a signature algorithm of a {kty} key"),
                ));
            }
        },
    };
    // jsonwebtoken's JWK type: it knows fewer `alg` values than are published (RSA-OAEP
    // keys were skipped above), and none matter past this point.
    let mut value = value;
    if let Some(object) = value.as_object_mut() {
        object.remove("alg");
    }
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(value).map_err(|e| (Skipped::Malformed, e.to_string()))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
        .map_err(|e| (Skipped::Malformed, e.to_string()))?;
    Ok(algorithms
        .into_iter()
        .map(|algorithm| VerifyingKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key: key.clone(),
        })
        .collect())
}
