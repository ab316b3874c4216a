//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each feeds bytes from
//! outside through the same code the mesh runs on them, and checks what must hold whatever
//! the bytes. Not a stable API.

use crate::discovery::Discovered;

/// A discovery answer as the registry takes it: every endpoint it keeps has a usable address,
/// and it fails only with instances, all of them rejected, or none at all.
fn check_answer(answer: Result<Discovered, crate::DiscoveryError>) {
    let Ok(answer) = answer else {
        return;
    };
    let instances = answer.endpoints.len() + answer.rejected.len();
    match crate::discovery::canonical_for_fuzzing(answer) {
        Ok(endpoints) => {
            assert!(endpoints.iter().all(|e| e.addr().validate().is_ok()));
            assert!(endpoints.windows(2).all(|w| w[0].addr() < w[1].addr()));
        }
        Err(_) => assert!(instances > 0, "an empty answer is a (guarded) empty set"),
    }
}

/// A Consul health response body (`/v1/health/service/:name`).
#[cfg(feature = "consul")]
pub fn consul_health(body: &[u8]) {
    check_answer(crate::discovery::consul_parse_health(body));
}

/// A Eureka application response body (`/apps/{APP}`).
#[cfg(feature = "eureka")]
pub fn eureka_application(body: &[u8]) {
    check_answer(crate::discovery::eureka_parse_application(body));
}

/// A DNS message: its SRV answer and Additional section turned into endpoints.
#[cfg(feature = "dns")]
pub fn dns_message(message: &[u8]) {
    check_answer(crate::discovery::dns_message_endpoints(message));
}

/// A JSON Web Key Set body: the keys in it that can verify a signature.
#[cfg(feature = "jwt")]
pub fn jwks(body: &[u8]) {
    if let Ok(keys) = crate::auth::usable_keys(body) {
        assert!(!keys.is_empty(), "a set with no usable key is refused");
    }
}

/// A bearer token as a server receives it: the checks made before any signature work, then
/// verification against a fixed HMAC key and a fixed Ed25519 key. Whatever the bytes, a
/// refusal is a [`Rejection`](crate::auth::Rejection), never a panic, and nothing is
/// accepted without the `exp` the verifier requires.
#[cfg(feature = "jwt")]
pub fn token(text: &[u8]) {
    use futures_util::FutureExt as _;
    let Ok(token) = std::str::from_utf8(text) else {
        return;
    };
    if let Ok(header) = crate::auth::precheck(token) {
        assert!(header.kid.as_ref().is_none_or(|kid| kid.len() <= 256));
    }
    let verifier = fuzz_verifier();
    // Fixed keys: verification never waits, so it completes on its first poll.
    let verified = verifier
        .verify(token)
        .now_or_never()
        .expect("fixed keys never wait");
    if let Ok(claims) = verified {
        assert!(claims.get("exp").is_some());
    }
}

#[cfg(feature = "jwt")]
fn fuzz_verifier() -> &'static crate::auth::Verifier {
    use crate::auth::{Algorithm, Verifier, VerifyingKey};
    static VERIFIER: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    VERIFIER.get_or_init(|| {
        let hmac = VerifyingKey::hmac(Algorithm::HS256, &[7; 32])
            .expect("a valid key")
            .with_kid("hmac");
        // The Ed25519 public key of RFC 8037 §A.2.
        let ed = VerifyingKey::from_der(
            Algorithm::EdDSA,
            &[
                0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64,
                0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68,
                0xf7, 0x07, 0x51, 0x1a,
            ],
        )
        .expect("a valid key")
        .with_kid("ed");
        Verifier::new([hmac, ed]).audience("orders")
    })
}

/// An OpenID provider's discovery document: the key set's URL of its exact issuer, and never
/// a plain-http one for an https issuer.
#[cfg(feature = "jwt")]
pub fn oidc_document(body: &[u8]) {
    const ISSUER: &str = "https://idp.example/realms/a";
    if let Ok(url) = crate::auth::jwks_uri(body, ISSUER) {
        assert_eq!(url.scheme(), "https");
    }
}

/// A token endpoint's response body, as a success (RFC 6749 §5.1) and as a refusal (§5.2).
#[cfg(feature = "jwt")]
pub fn token_response(body: &[u8]) {
    if let Ok(issued) = crate::auth::token_response(body) {
        assert!(!issued.access_token.is_empty());
        assert!(issued.lifetime >= std::time::Duration::from_secs(1));
        assert!(issued.lifetime <= std::time::Duration::from_secs(24 * 3600));
    }
    let code = crate::auth::error_code(body);
    assert!(!code.is_empty() && code.len() <= 64);
    assert!(code.chars().all(|c| c.is_ascii_graphic()));
}

/// A `Retry-After` header value.
pub fn retry_after(value: &[u8]) {
    if let Some(pause) = crate::classify::parse_retry_after(value) {
        assert!(pause <= crate::classify::MAX_PUSHBACK);
    }
}

/// The whole mesh's configuration, as TOML (first byte even) or JSON (odd), parsed and
/// validated.
pub fn config(input: &[u8]) {
    let Some((&kind, text)) = input.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let parsed = if kind % 2 == 0 {
        #[cfg(feature = "toml")]
        {
            crate::MeshConfig::from_toml_str(text)
        }
        #[cfg(not(feature = "toml"))]
        {
            return;
        }
    } else {
        crate::MeshConfig::from_json_str(text)
    };
    if let Ok(config) = parsed {
        // Whatever it says, it is an error naming a field or a valid configuration.
        if let Err(error) = config.validate() {
            assert!(error.field().is_some(), "{error:?}");
        }
    }
}

/// A URL whose host names a service: its host checked as a service name, and the URL
/// rewritten to an IP endpoint and a host-name endpoint, twice each (the second time from
/// what the endpoint remembers), which must give the same URL as a fresh rewrite.
pub fn logical_url(text: &[u8]) {
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(url) = url::Url::parse(text) else {
        return;
    };
    let Some(url::Host::Domain(host)) = url.host() else {
        return;
    };
    if crate::ServiceName::new(host).is_err() {
        return;
    }
    let endpoints = [
        crate::Endpoint::new(([10, 1, 2, 3], 8080)),
        crate::Endpoint::new(crate::EndpointAddr::Host("orders-1.internal".into(), 8443))
            .with_scheme(crate::Scheme::Https),
    ];
    for endpoint in &endpoints {
        let rewrites = crate::balance::rewrite::Rewrites::default();
        let mut fresh = url.clone();
        let _ = rewrites.rewrite_keeping(&mut fresh, endpoint, None);
        for _ in 0..2 {
            let mut again = url.clone();
            let mut kept = None;
            let _ = rewrites.rewrite_keeping(&mut again, endpoint, Some(&mut kept));
            assert_eq!(again.as_str(), fresh.as_str());
            if let Some(kept) = kept {
                assert_eq!(kept.as_str(), url.as_str());
            }
        }
        assert_eq!(fresh.port_or_known_default(), Some(endpoint.addr().port()));
    }
}

/// An xDS resource from a control plane: the first byte picks its type (listener, route,
/// cluster, assignment) and whether an assignment stands alone or is split with itself, the
/// rest is its protobuf encoding. An assignment's endpoints, folded into weights, must make
/// a set the registry takes,
/// whose shares within a tier add up to the scale at most (plus rounding).
#[cfg(feature = "xds")]
pub fn xds_resource(data: &[u8]) {
    let Some((&kind, value)) = data.split_first() else {
        return;
    };
    if let Some(discovered) = crate::discovery::xds_resource(kind, value) {
        let mut tiers: std::collections::BTreeMap<u16, u64> = Default::default();
        for e in discovered.endpoints.iter().filter(|e| e.is_eligible()) {
            *tiers.entry(e.priority()).or_default() += u64::from(e.weight());
        }
        let listed = discovered.endpoints.len() as u64;
        assert!(
            tiers.values().all(|&sum| sum <= 1_000_000 + listed),
            "{tiers:?}"
        );
        check_answer(Ok(discovered));
    }
}
