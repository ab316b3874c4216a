//! JWT verification against hostile tokens, and JWKS served over HTTP on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::Served;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header, encode};
use proxyless::auth::{
    Algorithm, Claims, Jwks, JwksOptions, JwtAuthLayer, Rejection, Verifier, VerifyingKey,
};
use serde_json::{Value, json};
use tower::ServiceExt;

const RSA: &[u8] = include_bytes!("../keys/rsa.pem");
const RSA_PUB: &[u8] = include_bytes!("../keys/rsa.pub.pem");
const RSA2: &[u8] = include_bytes!("../keys/rsa2.pem");
const EC256: &[u8] = include_bytes!("../keys/ec256.pem");
const EC256_PUB: &[u8] = include_bytes!("../keys/ec256.pub.pem");
const EC384: &[u8] = include_bytes!("../keys/ec384.pem");
const EC384_PUB: &[u8] = include_bytes!("../keys/ec384.pub.pem");
const ED: &[u8] = include_bytes!("../keys/ed25519.pem");
const ED_PUB: &[u8] = include_bytes!("../keys/ed25519.pub.pem");
const JWKS: &str = include_str!("../keys/jwks.json");
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": "https://issuer.test", "aud": "orders", "exp": now() + 300, "nbf": now() - 10})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("signs")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with a hand-written header and payload and the given signature segment.
fn forged(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn rsa_verifier() -> Verifier {
    Verifier::new([VerifyingKey::from_pem(Algorithm::RS256, RSA_PUB).expect("key")])
        .audience("orders")
        .issuer("https://issuer.test")
}

#[tokio::test]
async fn every_algorithm_round_trips() {
    let rsa = EncodingKey::from_rsa_pem(RSA).expect("key");
    let cases: Vec<(Algorithm, EncodingKey, VerifyingKey)> = vec![
        (
            Algorithm::HS256,
            EncodingKey::from_secret(&SECRET[..32]),
            VerifyingKey::hmac(Algorithm::HS256, &SECRET[..32]).expect("key"),
        ),
        (
            Algorithm::HS384,
            EncodingKey::from_secret(&SECRET[..48]),
            VerifyingKey::hmac(Algorithm::HS384, &SECRET[..48]).expect("key"),
        ),
        (
            Algorithm::HS512,
            EncodingKey::from_secret(SECRET),
            VerifyingKey::hmac(Algorithm::HS512, SECRET).expect("key"),
        ),
        (
            Algorithm::RS256,
            rsa.clone(),
            VerifyingKey::from_pem(Algorithm::RS256, RSA_PUB).expect("key"),
        ),
        (
            Algorithm::RS384,
            rsa.clone(),
            VerifyingKey::from_pem(Algorithm::RS384, RSA_PUB).expect("key"),
        ),
        (
            Algorithm::RS512,
            rsa.clone(),
            VerifyingKey::from_pem(Algorithm::RS512, RSA_PUB).expect("key"),
        ),
        (
            Algorithm::PS256,
            rsa.clone(),
            VerifyingKey::from_pem(Algorithm::PS256, RSA_PUB).expect("key"),
        ),
        (
            Algorithm::PS384,
            rsa.clone(),
            VerifyingKey::from_pem(Algorithm::PS384, RSA_PUB).expect("key"),
        ),
        (
            Algorithm::PS512,
            rsa,
            VerifyingKey::from_pem(Algorithm::PS512, RSA_PUB).expect("key"),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC256).expect("key"),
            VerifyingKey::from_pem(Algorithm::ES256, EC256_PUB).expect("key"),
        ),
        (
            Algorithm::ES384,
            EncodingKey::from_ec_pem(EC384).expect("key"),
            VerifyingKey::from_pem(Algorithm::ES384, EC384_PUB).expect("key"),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ED).expect("key"),
            VerifyingKey::from_pem(Algorithm::EdDSA, ED_PUB).expect("key"),
        ),
    ];
    for (alg, encoding, verifying) in cases {
        let token = sign(alg, &encoding, None, &claims());
        let verifier = Verifier::new([verifying]).audience("orders");
        let verified = verifier
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(verified.subject(), Some("alice"), "{alg:?}");
    }
}

#[test]
fn short_hmac_keys_are_refused() {
    assert!(VerifyingKey::hmac(Algorithm::HS256, &SECRET[..31]).is_err());
    assert!(VerifyingKey::hmac(Algorithm::HS512, &SECRET[..63]).is_err());
    assert!(VerifyingKey::hmac(Algorithm::RS256, SECRET).is_err());
}

#[tokio::test]
async fn alg_none_and_empty_signatures_are_refused() {
    let verifier = rsa_verifier();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = forged(&json!({"alg": alg, "typ": "JWT"}), &claims(), "");
        assert_eq!(
            verifier.verify(&token).await,
            Err(Rejection::Header),
            "{alg}"
        );
    }
    let good = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA).expect("key"),
        None,
        &claims(),
    );
    let unsigned = format!("{}.", good.rsplit_once('.').expect("dots").0);
    assert!(verifier.verify(&unsigned).await.is_err());
    assert!(verifier.verify(&good).await.is_ok());
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
    // The classic key confusion: sign HS256 with the public key's bytes as the secret.
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUB),
        None,
        &claims(),
    );
    assert_eq!(
        rsa_verifier().verify(&token).await,
        Err(Rejection::UnknownKey)
    );
}

#[tokio::test]
async fn an_embedded_jwk_and_remote_key_urls_are_never_used() {
    let hits = Arc::new(AtomicUsize::new(0));
    let router = Router::new().fallback({
        let hits = hits.clone();
        move || {
            hits.fetch_add(1, Ordering::SeqCst);
            async { JWKS.to_owned() }
        }
    });
    let trap = Served::start(router);
    // Signed by the attacker's own key, which the header offers three ways.
    let attacker = EncodingKey::from_rsa_pem(RSA2).expect("key");
    let attacker_jwk: Value = serde_json::from_str::<Value>(JWKS).expect("json")["keys"][1].clone();
    let mut header = Header::new(Algorithm::RS256);
    header.jku = Some(format!("http://{}/jwks.json", trap.addr));
    header.x5u = Some(format!("http://{}/cert.pem", trap.addr));
    header.jwk = serde_json::from_value(attacker_jwk).ok();
    header.kid = Some("rsa-2".into());
    let token = encode(&header, &claims(), &attacker).expect("signs");
    let verifier = Verifier::new([VerifyingKey::from_pem(Algorithm::RS256, RSA_PUB)
        .expect("key")
        .with_kid("rsa-1")])
    .audience("orders");
    assert_eq!(verifier.verify(&token).await, Err(Rejection::UnknownKey));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "jku and x5u were never fetched"
    );
}

#[tokio::test]
async fn hostile_kids_are_unknown_keys() {
    let verifier = Verifier::new([VerifyingKey::from_pem(Algorithm::RS256, RSA_PUB)
        .expect("key")
        .with_kid("rsa-1")]);
    let rsa = EncodingKey::from_rsa_pem(RSA).expect("key");
    let long = "k".repeat(10 * 1024);
    for kid in [
        "../../../etc/passwd",
        "' OR 1=1 --",
        "a\0b",
        long.as_str(),
        "",
    ] {
        let token = sign(Algorithm::RS256, &rsa, Some(kid), &claims());
        let result = verifier.verify(&token).await;
        assert!(
            matches!(
                result,
                Err(Rejection::UnknownKey) | Err(Rejection::Malformed)
            ),
            "{kid:.20}: {result:?}"
        );
    }
}

#[tokio::test]
async fn exp_and_nbf_at_the_edges_of_the_leeway() {
    let rsa = EncodingKey::from_rsa_pem(RSA).expect("key");
    // A frozen clock: the edges are exact, whatever second the test runs in.
    let frozen = now();
    let verifier = rsa_verifier()
        .leeway(Duration::from_secs(60))
        .clock(move || frozen as u64);
    let with = |changes: Value| {
        let mut c = claims();
        for (k, v) in changes.as_object().expect("object") {
            c[k] = v.clone();
        }
        sign(Algorithm::RS256, &rsa, None, &c)
    };
    assert!(
        verifier
            .verify(&with(json!({"exp": frozen - 59})))
            .await
            .is_ok(),
        "expired within the leeway"
    );
    assert_eq!(
        verifier.verify(&with(json!({"exp": frozen - 61}))).await,
        Err(Rejection::Expired)
    );
    assert!(
        verifier
            .verify(&with(json!({"nbf": frozen + 59})))
            .await
            .is_ok(),
        "early within the leeway"
    );
    assert_eq!(
        verifier.verify(&with(json!({"nbf": frozen + 61}))).await,
        Err(Rejection::NotYetValid)
    );
    assert!(
        verifier
            .verify(&with(json!({"exp": frozen - 60})))
            .await
            .is_ok(),
        "exactly at the leeway"
    );
    assert!(
        verifier
            .verify(&with(json!({"exp": (frozen + 300) as f64 + 0.5})))
            .await
            .is_ok(),
        "a fractional NumericDate"
    );
    for exp in [json!("9999999999"), json!(-1), json!(null), json!(true)] {
        let result = verifier.verify(&with(json!({ "exp": exp }))).await;
        assert!(result.is_err(), "exp {exp}: {result:?}");
    }
    // exp missing entirely.
    let mut c = claims();
    c.as_object_mut().expect("object").remove("exp");
    assert!(
        verifier
            .verify(&sign(Algorithm::RS256, &rsa, None, &c))
            .await
            .is_err()
    );
    // A huge exp is a valid NumericDate far in the future: accepted.
    assert!(
        verifier
            .verify(&with(json!({"exp": 4_102_444_800i64})))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn audience_and_issuer_are_required_when_configured() {
    let rsa = EncodingKey::from_rsa_pem(RSA).expect("key");
    let verifier = rsa_verifier();
    let with = |key: &str, value: Option<Value>| {
        let mut c = claims();
        match value {
            Some(v) => c[key] = v,
            None => {
                c.as_object_mut().expect("object").remove(key);
            }
        }
        sign(Algorithm::RS256, &rsa, None, &c)
    };
    assert_eq!(
        verifier.verify(&with("aud", None)).await,
        Err(Rejection::Audience),
        "missing"
    );
    assert_eq!(
        verifier.verify(&with("aud", Some(json!("")))).await,
        Err(Rejection::Audience),
        "empty"
    );
    assert_eq!(
        verifier.verify(&with("aud", Some(json!([])))).await,
        Err(Rejection::Audience),
        "empty list"
    );
    assert_eq!(
        verifier.verify(&with("aud", Some(json!("billing")))).await,
        Err(Rejection::Audience)
    );
    assert!(
        verifier
            .verify(&with("aud", Some(json!(["billing", "orders"]))))
            .await
            .is_ok(),
        "one of many"
    );
    assert_eq!(
        verifier
            .verify(&with("iss", Some(json!("https://evil.test"))))
            .await,
        Err(Rejection::Issuer)
    );
    assert_eq!(
        verifier.verify(&with("iss", None)).await,
        Err(Rejection::Issuer)
    );
}

#[tokio::test]
async fn crit_oversized_and_misshapen_tokens_are_refused_early() {
    let verifier = rsa_verifier();
    let rsa = EncodingKey::from_rsa_pem(RSA).expect("key");
    let good = sign(Algorithm::RS256, &rsa, None, &claims());
    let (_, rest) = good.split_once('.').expect("dots");
    let crit = format!(
        "{}.{rest}",
        b64(json!({"alg": "RS256", "crit": ["exp"]})
            .to_string()
            .as_bytes())
    );
    assert_eq!(verifier.verify(&crit).await, Err(Rejection::Header));
    let mut big = claims();
    big["padding"] = json!("x".repeat(9000));
    let oversized = sign(Algorithm::RS256, &rsa, None, &big);
    assert_eq!(verifier.verify(&oversized).await, Err(Rejection::Malformed));
    for bad in [
        "a.b",
        "a.b.c.d",
        &".".repeat(5000),
        "a b.c.d",
        "ä.b.c",
        &format!("{good}="),
        "",
    ] {
        assert_eq!(
            verifier.verify(bad).await,
            Err(Rejection::Malformed),
            "{bad:.30}"
        );
    }
}

/// A JWKS endpoint whose body, cache time and availability the test controls.
#[derive(Clone, Default)]
struct KeyServer {
    body: Arc<std::sync::Mutex<String>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Accepts requests and never answers them.
    hang: Arc<std::sync::atomic::AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

async fn serve_keys(State(keys): State<KeyServer>) -> Response {
    keys.fetches.fetch_add(1, Ordering::SeqCst);
    if keys.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    if keys.down.load(Ordering::SeqCst) {
        return Response::builder()
            .status(503)
            .body(Body::empty())
            .expect("response");
    }
    let body = keys.body.lock().expect("lock").clone();
    Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "public, max-age=3600")
        .body(Body::from(body))
        .expect("response")
}

fn key_server(keys: &KeyServer) -> Served {
    Served::start(Router::new().fallback(serve_keys).with_state(keys.clone()))
}

fn jwks_with(kids: &[usize]) -> String {
    let all: Value = serde_json::from_str(JWKS).expect("json");
    let keys: Vec<Value> = kids.iter().map(|&i| all["keys"][i].clone()).collect();
    json!({ "keys": keys }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_makes_one_fetch_however_many_miss_and_rotation_fails_nothing() {
    let keys = KeyServer::default();
    *keys.body.lock().expect("lock") = jwks_with(&[0]);
    let server = key_server(&keys);
    let jwks = Jwks::new(
        &format!("http://{}/jwks.json", server.addr),
        JwksOptions::default().refetch_interval(Duration::from_secs(5)),
    )
    .expect("valid");
    let verifier = Arc::new(Verifier::with_jwks(jwks).audience("orders"));
    let old = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA).expect("key"),
        Some("rsa-1"),
        &claims(),
    );
    assert!(verifier.verify(&old).await.is_ok());
    assert_eq!(keys.fetches.load(Ordering::SeqCst), 1);

    // Rotation: the issuer publishes rsa-2 and starts signing with it.
    *keys.body.lock().expect("lock") = jwks_with(&[0, 1]);
    let new = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA2).expect("key"),
        Some("rsa-2"),
        &claims(),
    );
    let checks: Vec<_> = (0..1000)
        .map(|i| {
            let verifier = verifier.clone();
            let token = if i % 2 == 0 { new.clone() } else { old.clone() };
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for check in checks {
        assert!(
            check.await.expect("task").is_ok(),
            "no request fails across a rotation"
        );
    }
    assert_eq!(
        keys.fetches.load(Ordering::SeqCst),
        2,
        "a thousand misses, one fetch"
    );

    // A kid that exists nowhere is refused, and does not refetch within the interval.
    let stranger = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA2).expect("key"),
        Some("rsa-9"),
        &claims(),
    );
    for _ in 0..50 {
        assert_eq!(verifier.verify(&stranger).await, Err(Rejection::UnknownKey));
    }
    assert!(keys.fetches.load(Ordering::SeqCst) <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_serves_the_last_keys_until_max_stale_and_a_bad_set_is_refused() {
    let keys = KeyServer::default();
    *keys.body.lock().expect("lock") = jwks_with(&[0]);
    let server = key_server(&keys);
    let jwks = Jwks::new(
        &format!("http://{}/jwks.json", server.addr),
        JwksOptions::default()
            .ttl(Duration::from_millis(200), Duration::from_millis(200))
            .max_stale(Duration::from_millis(600))
            .refetch_interval(Duration::from_millis(50)),
    )
    .expect("valid");
    let verifier = Verifier::with_jwks(jwks).audience("orders");
    let token = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA).expect("key"),
        Some("rsa-1"),
        &claims(),
    );
    assert!(verifier.verify(&token).await.is_ok());

    // A malformed or wrongly-typed set is refused, and the old one kept.
    *keys.body.lock().expect("lock") =
        r#"{"keys": [{"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "n": 5}]}"#.into();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(verifier.verify(&token).await.is_ok(), "the old set is kept");

    keys.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        verifier.verify(&token).await.is_ok(),
        "stale, within max_stale"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        verifier.verify(&token).await,
        Err(Rejection::KeysUnavailable),
        "fails closed"
    );

    *keys.body.lock().expect("lock") = jwks_with(&[0]);
    keys.down.store(false, Ordering::SeqCst);
    // The background refresh, asking every refetch interval (50 ms) while it fails closed,
    // finds the keys again.
    let mut recovered = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if verifier.verify(&token).await.is_ok() {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "recovers");
}

#[tokio::test]
async fn the_layer_answers_401_and_passes_claims_on() {
    let inner = tower::service_fn(|request: http::Request<Body>| async move {
        let sub = request
            .extensions()
            .get::<Claims>()
            .and_then(|c| c.subject().map(str::to_owned))
            .unwrap_or_default();
        Ok::<_, std::convert::Infallible>(Response::new(Body::from(sub)))
    });
    let service = tower::Layer::layer(&JwtAuthLayer::new(rsa_verifier()), inner);
    let request = |auth: Option<&str>| {
        let mut builder = http::Request::builder().uri("/orders");
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        builder.body(Body::empty()).expect("request")
    };
    let token = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA).expect("key"),
        None,
        &claims(),
    );

    let ok = service
        .clone()
        .oneshot(request(Some(&format!("Bearer {token}"))))
        .await
        .expect("response");
    assert_eq!(ok.status(), 200);
    let body = axum::body::to_bytes(ok.into_body(), 1024)
        .await
        .expect("body");
    assert_eq!(&body[..], b"alice");

    let missing = service
        .clone()
        .oneshot(request(None))
        .await
        .expect("response");
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");

    let bad = service
        .clone()
        .oneshot(request(Some("Bearer not.a.token")))
        .await
        .expect("response");
    assert_eq!(bad.status(), 401);
    assert_eq!(
        bad.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    let body = axum::body::to_bytes(bad.into_body(), 1024)
        .await
        .expect("body");
    assert!(body.is_empty(), "no detail for an attacker");
}

#[tokio::test]
async fn typ_is_checked_only_when_required() {
    let rsa = EncodingKey::from_rsa_pem(RSA).expect("key");
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".into());
    let jwt = encode(&header, &claims(), &rsa).expect("signs");
    header.typ = Some("at+jwt".into());
    let access = encode(&header, &claims(), &rsa).expect("signs");
    assert!(rsa_verifier().verify(&jwt).await.is_ok());
    let strict = rsa_verifier().require_typ("at+jwt");
    assert_eq!(strict.verify(&jwt).await, Err(Rejection::Type));
    assert!(strict.verify(&access).await.is_ok());
}

const MORE_JWKS: &str = include_str!("../keys/more_jwks.json");
const RSA_X5C: &str = include_str!("../keys/rsa.x5c.json");

/// `rsa-1` with a certificate of its key and the certificate's thumbprints, as Keycloak and
/// Entra ID publish their keys, and `changes` applied.
fn jwk_with_certificate(changes: Value) -> Value {
    let mut key = jwk("rsa-1", changes);
    let certificate: Value = serde_json::from_str(RSA_X5C).expect("json");
    for (name, value) in certificate.as_object().expect("an object") {
        key[name] = value.clone();
    }
    key
}

fn ec_token(kid: &str) -> String {
    sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(EC256).expect("key"),
        Some(kid),
        &claims(),
    )
}

/// A key of `tests/keys/jwks.json` (RSA) or `more_jwks.json` (EC P-256, Ed25519) by `kid`,
/// with `changes` applied (`null` removes a member).
fn jwk(kid: &str, changes: Value) -> Value {
    let mut keys: Vec<Value> = Vec::new();
    for set in [JWKS, MORE_JWKS] {
        let set: Value = serde_json::from_str(set).expect("json");
        keys.extend(set["keys"].as_array().expect("keys").iter().cloned());
    }
    let mut key = keys
        .into_iter()
        .find(|k| k["kid"] == kid)
        .expect("a test key");
    for (name, value) in changes.as_object().expect("an object") {
        match value {
            Value::Null => {
                key.as_object_mut().expect("object").remove(name);
            }
            value => key[name] = value.clone(),
        }
    }
    key
}

/// A verifier of the key set `keys`, served over HTTP on 127.0.0.1.
fn served_set(keys: Vec<Value>) -> (Served, Verifier) {
    let server = KeyServer::default();
    *server.body.lock().expect("lock") = json!({ "keys": keys }).to_string();
    let served = key_server(&server);
    let jwks = Jwks::new(
        &format!("http://{}/jwks.json", served.addr),
        JwksOptions::default(),
    )
    .expect("valid");
    (served, Verifier::with_jwks(jwks).audience("orders"))
}

fn rsa_token(alg: Algorithm, pem: &[u8], kid: &str) -> String {
    sign(
        alg,
        &EncodingKey::from_rsa_pem(pem).expect("key"),
        Some(kid),
        &claims(),
    )
}

/// Keys as providers publish them, none of which this crate can verify with.
fn foreign_keys() -> Vec<Value> {
    vec![
        // Keycloak's realm encryption key.
        jwk(
            "rsa-2",
            json!({"kid": "enc-1", "use": "enc", "alg": "RSA-OAEP"}),
        ),
        // Encryption only, by key_ops.
        jwk(
            "rsa-2",
            json!({"kid": "wrap-1", "use": null, "key_ops": ["wrapKey"]}),
        ),
        json!({"kty": "oct", "kid": "hmac-1", "alg": "HS256", "k": b64(SECRET)}),
        json!({"kty": "OKP", "kid": "x-1", "crv": "X25519", "x": b64(&[7; 32])}),
        json!({"kty": "EC", "kid": "p521-1", "crv": "P-521", "alg": "ES512",
               "x": b64(&[1; 66]), "y": b64(&[2; 66])}),
        json!({"kty": "RSA", "kid": "broken-1", "alg": "RS256", "n": 5, "e": "AQAB"}),
        json!({"kty": "EC", "kid": "mixed-1", "crv": "P-384", "alg": "ES256",
               "x": b64(&[1; 48]), "y": b64(&[2; 48])}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keycloak_shaped_set_verifies_with_its_signing_key_and_ignores_its_encryption_key() {
    // Keycloak lists the realm's encryption key first, each key with its certificate.
    let mut enc = jwk(
        "rsa-2",
        json!({"kid": "enc-1", "use": "enc", "alg": "RSA-OAEP"}),
    );
    for name in ["x5c", "x5t", "x5t#S256"] {
        enc[name] = jwk_with_certificate(json!({}))[name].clone();
    }
    let (_served, verifier) = served_set(vec![
        enc,
        jwk_with_certificate(json!({"use": "sig", "alg": "RS256"})),
    ]);
    let good = rsa_token(Algorithm::RS256, RSA, "rsa-1");
    assert!(verifier.verify(&good).await.is_ok());
    // The encryption key never verifies a signature, even one its private half made.
    let by_enc = rsa_token(Algorithm::RS256, RSA2, "enc-1");
    assert_eq!(verifier.verify(&by_enc).await, Err(Rejection::UnknownKey));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_shaped_key_without_alg_serves_its_family_and_nothing_else() {
    // Entra ID's v2 keys: no `alg`, an `issuer` member, a certificate and its thumbprint.
    let (_served, verifier) = served_set(vec![jwk_with_certificate(json!({
        "alg": null,
        "use": "sig",
        "issuer": "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0",
    }))]);
    for alg in [
        Algorithm::RS256,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
    ] {
        let token = rsa_token(alg, RSA, "rsa-1");
        assert!(verifier.verify(&token).await.is_ok(), "{alg:?}");
    }
    // Outside its family: an HMAC token keyed with the public key, and an EC token.
    let hmac = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUB),
        Some("rsa-1"),
        &claims(),
    );
    assert!(verifier.verify(&hmac).await.is_err());
    assert!(verifier.verify(&ec_token("rsa-1")).await.is_err());

    // The verifier's own list narrows the family: RS256 only.
    let narrowed = verifier.algorithms([Algorithm::RS256]);
    assert!(
        narrowed
            .verify(&rsa_token(Algorithm::RS256, RSA, "rsa-1"))
            .await
            .is_ok()
    );
    for alg in [Algorithm::RS512, Algorithm::PS256] {
        assert_eq!(
            narrowed.verify(&rsa_token(alg, RSA, "rsa-1")).await,
            Err(Rejection::Header),
            "{alg:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_and_auth0_shaped_sets_verify_both_keys_of_a_rotation() {
    let (_served, verifier) = served_set(vec![
        jwk("rsa-1", json!({"x5c": ["TUlJQ2R1bW15"]})),
        jwk("rsa-2", json!({"x5c": ["TUlJQ2R1bW15"], "x5t": "eA"})),
    ]);
    assert!(
        verifier
            .verify(&rsa_token(Algorithm::RS256, RSA, "rsa-1"))
            .await
            .is_ok()
    );
    assert!(
        verifier
            .verify(&rsa_token(Algorithm::RS256, RSA2, "rsa-2"))
            .await
            .is_ok()
    );
    // Bound to RS256 by its `alg`: PS256 from the same key is refused.
    assert!(
        verifier
            .verify(&rsa_token(Algorithm::PS256, RSA, "rsa-1"))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_mixing_every_shape_verifies_with_its_usable_keys_only() {
    let mut keys = foreign_keys();
    keys.push(jwk("rsa-1", json!({})));
    keys.push(jwk("ec-1", json!({})));
    keys.push(jwk("ed-1", json!({"use": "sig", "key_ops": ["verify"]})));
    let (_served, verifier) = served_set(keys);
    assert!(
        verifier
            .verify(&rsa_token(Algorithm::RS256, RSA, "rsa-1"))
            .await
            .is_ok()
    );
    assert!(verifier.verify(&ec_token("ec-1")).await.is_ok());
    let eddsa = sign(
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(ED).expect("key"),
        Some("ed-1"),
        &claims(),
    );
    assert!(verifier.verify(&eddsa).await.is_ok());
    // The foreign keys verify nothing: an HMAC token made with the published secret, a
    // token naming the encryption key.
    let hmac = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        Some("hmac-1"),
        &claims(),
    );
    assert_eq!(verifier.verify(&hmac).await, Err(Rejection::UnknownKey));
    let by_enc = rsa_token(Algorithm::RS256, RSA2, "enc-1");
    assert_eq!(verifier.verify(&by_enc).await, Err(Rejection::UnknownKey));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_with_no_usable_key_is_refused_whole() {
    let (_served, verifier) = served_set(foreign_keys());
    let token = rsa_token(Algorithm::RS256, RSA2, "enc-1");
    assert_eq!(
        verifier.verify(&token).await,
        Err(Rejection::KeysUnavailable)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_server_that_hangs_stalls_no_verification() {
    let keys = KeyServer::default();
    *keys.body.lock().expect("lock") = jwks_with(&[0]);
    let server = key_server(&keys);
    let jwks = Jwks::new(
        &format!("http://{}/jwks.json", server.addr),
        JwksOptions::default()
            .ttl(Duration::from_millis(200), Duration::from_millis(200))
            .max_stale(Duration::from_secs(60)),
    )
    .expect("valid");
    let verifier = Verifier::with_jwks(jwks).audience("orders");
    let token = rsa_token(Algorithm::RS256, RSA, "rsa-1");
    assert!(verifier.verify(&token).await.is_ok());

    // The identity provider accepts connections and never answers (a fetch would wait the
    // HTTP timeout, 10 s); the set expires.
    keys.hang.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut took = Vec::new();
    for _ in 0..2_000 {
        let started = std::time::Instant::now();
        // Two seconds is far below the fetch's ten: a verification that waited for the
        // fetch would fail here, one that served the stale keys does not.
        let verified = tokio::time::timeout(Duration::from_secs(2), verifier.verify(&token))
            .await
            .expect("no verification waits for the hung fetch");
        assert!(verified.is_ok(), "{verified:?}");
        took.push(started.elapsed());
    }
    took.sort();
    eprintln!(
        "verification while the key server hangs: p50 {:?}, p99 {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1]
    );
    assert!(
        keys.fetches.load(Ordering::SeqCst) >= 2,
        "the refresh goes on in the background"
    );
}

/// An OpenID provider on 127.0.0.1: its discovery document under `realm` (as Keycloak
/// serves one per realm) and its key set wherever the document says.
#[derive(Clone, Default)]
struct Provider {
    /// The `issuer` the document names; empty: the true one.
    claimed_issuer: Arc<std::sync::Mutex<String>>,
    /// Where the key set is served.
    keys_path: Arc<std::sync::Mutex<String>>,
    documents: Arc<AtomicUsize>,
    key_fetches: Arc<AtomicUsize>,
}

const REALM: &str = "/realms/test";

async fn serve_provider(
    State(provider): State<Provider>,
    request: axum::extract::Request,
) -> Response {
    let host = request.headers()["host"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let path = request.uri().path().to_owned();
    let keys_path = provider.keys_path.lock().expect("lock").clone();
    let json = |body: String| {
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("response")
    };
    if path == format!("{REALM}/.well-known/openid-configuration") {
        provider.documents.fetch_add(1, Ordering::SeqCst);
        let mut issuer = provider.claimed_issuer.lock().expect("lock").clone();
        if issuer.is_empty() {
            issuer = format!("http://{host}{REALM}");
        }
        // A real document's other members, which the client ignores.
        return json(
            json!({
                "issuer": issuer,
                "jwks_uri": format!("http://{host}{keys_path}"),
                "authorization_endpoint": format!("http://{host}{REALM}/auth"),
                "token_endpoint": format!("http://{host}{REALM}/token"),
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
            })
            .to_string(),
        );
    }
    if path == keys_path {
        provider.key_fetches.fetch_add(1, Ordering::SeqCst);
        return json(jwks_with(&[0, 1]));
    }
    Response::builder()
        .status(404)
        .body(Body::empty())
        .expect("response")
}

fn provider() -> (Provider, Served, String) {
    let provider = Provider::default();
    *provider.keys_path.lock().expect("lock") = format!("{REALM}/certs");
    let served = Served::start(
        Router::new()
            .fallback(serve_provider)
            .with_state(provider.clone()),
    );
    let issuer = format!("http://{}{REALM}", served.addr);
    (provider, served, issuer)
}

fn token_from(issuer: &str, kid: &str) -> String {
    let mut claims = claims();
    claims["iss"] = json!(issuer);
    sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(if kid == "rsa-1" { RSA } else { RSA2 }).expect("key"),
        Some(kid),
        &claims,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_discovery_finds_the_keys_and_requires_the_issuer() {
    let (provider, _served, issuer) = provider();
    // A trailing `/` is dropped before the well-known suffix (OIDC Discovery §4), and is
    // part of the issuer compared: here the configured one has none.
    let jwks = Jwks::from_issuer(&issuer, JwksOptions::default()).expect("valid");
    assert_eq!(jwks.issuer(), Some(issuer.as_str()));
    let verifier = Verifier::with_jwks(jwks.clone()).audience("orders");
    for _ in 0..20 {
        let claims = verifier
            .verify(&token_from(&issuer, "rsa-1"))
            .await
            .expect("valid");
        assert_eq!(claims.issuer(), Some(issuer.as_str()));
    }
    assert!(verifier.verify(&token_from(&issuer, "rsa-2")).await.is_ok());
    assert_eq!(provider.documents.load(Ordering::SeqCst), 1);
    assert_eq!(provider.key_fetches.load(Ordering::SeqCst), 1);

    // The issuer comes with the set: a token of another issuer, signed with the same
    // keys, is refused.
    assert_eq!(
        verifier
            .verify(&token_from("https://issuer.test", "rsa-1"))
            .await,
        Err(Rejection::Issuer)
    );
    let mut claims = claims();
    claims.as_object_mut().expect("object").remove("iss");
    let without = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA).expect("key"),
        Some("rsa-1"),
        &claims,
    );
    assert_eq!(verifier.verify(&without).await, Err(Rejection::Issuer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let (provider, _served, issuer) = provider();
    // An attacker's (or a misconfigured) document: right place, another issuer.
    *provider.claimed_issuer.lock().expect("lock") = format!("{issuer}/"); // not exactly equal
    let jwks = Jwks::from_issuer(&issuer, JwksOptions::default()).expect("valid");
    let error = jwks.refresh().await.expect_err("refused");
    assert!(error.is_auth(), "{error:?}");
    let shown = error.to_string();
    assert!(
        shown.contains("issuer") && shown.contains(&format!("{issuer}/")),
        "{shown}"
    );
    let verifier = Verifier::with_jwks(jwks.clone()).audience("orders");
    assert_eq!(
        verifier.verify(&token_from(&issuer, "rsa-1")).await,
        Err(Rejection::KeysUnavailable)
    );
    assert_eq!(
        provider.key_fetches.load(Ordering::SeqCst),
        0,
        "no key is fetched from a document that failed the issuer check"
    );

    // Fixed at the provider: the next fetch succeeds.
    provider.claimed_issuer.lock().expect("lock").clear();
    jwks.refresh().await.expect("the document is right now");
    assert!(verifier.verify(&token_from(&issuer, "rsa-1")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_move_are_found_again_through_the_document() {
    let (provider, _served, issuer) = provider();
    let jwks = Jwks::from_issuer(
        &format!("{issuer}/"),
        JwksOptions::default().refetch_interval(Duration::from_millis(50)),
    )
    .expect("valid");
    // Configured with a trailing `/`, the issuer the document names must have it too.
    *provider.claimed_issuer.lock().expect("lock") = format!("{issuer}/");
    let verifier = Verifier::with_jwks(jwks.clone()).audience("orders");
    let token = token_from(&format!("{issuer}/"), "rsa-1");
    assert!(verifier.verify(&token).await.is_ok());

    // The provider moves its keys; the old URL answers 404.
    *provider.keys_path.lock().expect("lock") = format!("{REALM}/protocol/certs");
    assert!(
        jwks.refresh().await.is_err(),
        "the old URL is gone: the fetch fails"
    );
    jwks.refresh()
        .await
        .expect("the document names the new URL");
    assert_eq!(provider.documents.load(Ordering::SeqCst), 2);
    assert!(verifier.verify(&token).await.is_ok());
}

#[test]
fn issuers_must_be_urls_without_query_or_fragment() {
    for bad in [
        "issuer.test",
        "ftp://issuer.test",
        "https://issuer.test/?tenant=1",
        "https://issuer.test/#x",
        "",
    ] {
        let error = Jwks::from_issuer(bad, JwksOptions::default()).expect_err(bad);
        assert!(error.is_builder(), "{bad}: {error:?}");
    }
}

#[cfg(feature = "toml")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_verifier_finds_its_keys_through_oidc_discovery() {
    use proxyless::MeshConfig;
    let (provider, _served, issuer) = provider();
    let config = MeshConfig::from_toml_str(&format!(
        "[verifier]\nissuer = \"{issuer}\"\naudience = \"orders\"\nleeway = \"5s\"\nmax_stale = \"10m\""
    ))
    .expect("valid");
    let verifier = config.verifier().expect("valid").expect("configured");
    assert!(verifier.verify(&token_from(&issuer, "rsa-1")).await.is_ok());
    assert_eq!(provider.documents.load(Ordering::SeqCst), 1);
    let mut claims = claims();
    claims["iss"] = json!(issuer);
    claims["aud"] = json!("billing");
    let elsewhere = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA).expect("key"),
        Some("rsa-1"),
        &claims,
    );
    assert_eq!(verifier.verify(&elsewhere).await, Err(Rejection::Audience));

    // A fixed key set URL, and the issuer required of tokens.
    let config = MeshConfig::from_toml_str(&format!(
        "[verifier]\njwks_url = \"http://{}{REALM}/certs\"\nissuer = \"https://issuer.test\"",
        _served.addr
    ))
    .expect("valid");
    let verifier = config.verifier().expect("valid").expect("configured");
    assert!(
        verifier
            .verify(&token_from("https://issuer.test", "rsa-2"))
            .await
            .is_ok()
    );
    assert_eq!(
        verifier.verify(&token_from(&issuer, "rsa-2")).await,
        Err(Rejection::Issuer)
    );
    assert_eq!(provider.documents.load(Ordering::SeqCst), 1, "no discovery");

    for (toml, field) in [
        ("[verifier]\naudience = \"orders\"", "verifier.issuer"),
        ("[verifier]\nissuer = \"idp.test\"", "verifier.issuer"),
        (
            "[verifier]\njwks_url = \"ftp://k.test\"",
            "verifier.jwks_url",
        ),
        (
            "[verifier]\nissuer = \"https://i.test\"\nmax_stale = \"0s\"",
            "verifier.max_stale",
        ),
        (
            "[verifier]\nissuer = \"https://i.test\"\nleeway = \"9000h\"",
            "verifier.leeway",
        ),
        (
            "[verifier]\nissuer = \"https://i.test\"\njkws_url = \"x\"",
            "verifier.jkws_url",
        ),
        (
            "[verifier]\nissuer = \"https://i.test\"\nalgorithms = []",
            "verifier.algorithms",
        ),
        (
            "[verifier]\nissuer = \"https://i.test\"\nalgorithms = [\"HS256\"]",
            "verifier.algorithms",
        ),
        (
            "[verifier]\nissuer = \"https://i.test\"\nalgorithms = [\"none\"]",
            "verifier.algorithms",
        ),
    ] {
        let error = MeshConfig::from_toml_str(toml)
            .and_then(|c| c.verifier().map(|_| ()))
            .expect_err(toml);
        assert_eq!(error.field(), Some(field), "{toml}: {error}");
    }
}

/// `Claims` as an axum extractor, on an axum server on 127.0.0.1: behind `JwtAuthLayer` it
/// gets the verified claims; a request refused by the layer, or a route without it, gets
/// `401` with the RFC 6750 §3 challenge.
#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claims_extractor_answers_on_a_real_axum_server() {
    use axum::routing::get;
    async fn me(claims: Claims) -> String {
        claims.subject().unwrap_or_default().to_owned()
    }
    let router = Router::new()
        .route("/me", get(me))
        .layer(JwtAuthLayer::new(rsa_verifier()))
        // Added after the layer: not behind it.
        .route("/unguarded", get(me));
    let server = Served::start(router);
    let http = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut request = http.get(format!("http://{}{path}", server.addr));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let token = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA).expect("key"),
        None,
        &claims(),
    );
    let ok = get("/me", Some(&token)).await.expect("answered");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.expect("body"), "alice");

    let challenge = |response: &reqwest::Response| {
        response.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .to_owned()
    };
    let missing = get("/me", None).await.expect("answered");
    assert_eq!(missing.status(), 401);
    assert_eq!(challenge(&missing), "Bearer");
    let mut expired_claims = claims();
    expired_claims["exp"] = json!(now() - 3600);
    let expired = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA).expect("key"),
        None,
        &expired_claims,
    );
    for bad in [expired.as_str(), "not.a.token"] {
        let refused = get("/me", Some(bad)).await.expect("answered");
        assert_eq!(refused.status(), 401);
        assert_eq!(challenge(&refused), "Bearer error=\"invalid_token\"");
        assert!(refused.text().await.expect("body").is_empty());
    }
    // The extractor without the layer never trusts an unverified token.
    let unguarded = get("/unguarded", Some(&token)).await.expect("answered");
    assert_eq!(unguarded.status(), 401);
    assert_eq!(challenge(&unguarded), "Bearer");
}

/// `AttachTokenLayer` around a plain `reqwest::Client`, no mesh: the URL's host names the
/// audience, a caller's own `Authorization` is kept unless told otherwise, and a token that
/// cannot be had fails the call before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_token_layer_around_a_plain_reqwest_client() {
    use proxyless::auth::{AttachTokenLayer, JwtSigner, OAuth2ClientCredentials, SigningKey};
    use tower::{Service, ServiceBuilder, ServiceExt as _};
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    let router = Router::new()
        .fallback(move |request: axum::extract::Request| {
            let seen = counted.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                let claims = request.extensions().get::<Claims>().cloned();
                claims
                    .and_then(|c| c.get("aud").and_then(|a| a.as_str().map(str::to_owned)))
                    .unwrap_or_default()
            }
        })
        .layer(JwtAuthLayer::new(
            Verifier::new([VerifyingKey::from_pem(Algorithm::RS256, RSA_PUB).expect("key")])
                .audience("orders.test"),
        ));
    let server = Served::start(router);
    // The service's name resolves to the server, as DNS would.
    let http = reqwest::Client::builder()
        .resolve("orders.test", server.addr)
        .build()
        .expect("client");
    let url = format!("http://orders.test:{}/", server.addr.port());
    let signer = JwtSigner::builder(SigningKey::from_pem(Algorithm::RS256, RSA).expect("key"))
        .build()
        .expect("valid");
    let mut client = ServiceBuilder::new()
        .layer(AttachTokenLayer::new(signer.clone()))
        .service(http.clone());
    let request = reqwest::Request::new(http::Method::GET, url.parse().expect("url"));
    let response = client
        .ready()
        .await
        .expect("ready")
        .call(request)
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "orders.test");

    // A caller's own Authorization stays, unless the layer replaces it.
    let own = || {
        let mut request = reqwest::Request::new(http::Method::GET, url.parse().expect("url"));
        request
            .headers_mut()
            .insert("authorization", "Bearer mine".parse().expect("header"));
        request
    };
    let mut kept = ServiceBuilder::new()
        .layer(AttachTokenLayer::new(signer.clone()))
        .service(http.clone());
    let response = kept.call(own()).await.expect("answered");
    assert_eq!(response.status(), 401);
    let mut replacing = ServiceBuilder::new()
        .layer(AttachTokenLayer::new(signer).replace_existing(true))
        .service(http.clone());
    let response = replacing.call(own()).await.expect("answered");
    assert_eq!(response.status(), 200);

    // A token endpoint that refuses: the call fails with is_auth, and no request is sent.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}/token", nobody.local_addr().expect("addr"));
    drop(nobody);
    let source = OAuth2ClientCredentials::builder(dead, "c", proxyless::Secret::new("s"))
        .build()
        .expect("valid");
    let before = seen.load(Ordering::SeqCst);
    let mut failing = ServiceBuilder::new()
        .layer(AttachTokenLayer::new(source))
        .service(http);
    let err = failing
        .call(reqwest::Request::new(
            http::Method::GET,
            url.parse().expect("url"),
        ))
        .await
        .expect_err("no token");
    assert!(err.is_auth(), "{err:?}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        before,
        "no request without a token"
    );
}
