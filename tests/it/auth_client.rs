//! Outbound tokens through MeshClient: a signer and OAuth2 client credentials against real
//! servers on 127.0.0.1 (a JwtAuthLayer-protected service and a token endpoint).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::Served;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use proxyless::auth::{
    Algorithm, Claims, ClientAuth, JwtAuthLayer, JwtSigner, OAuth2ClientCredentials, SigningKey,
    TokenSource, Verifier, VerifyingKey,
};
use proxyless::client::TrafficPolicy;
use proxyless::{Endpoint, MeshClient, Secret, StaticDiscovery};

const RSA: &[u8] = include_bytes!("../keys/rsa.pem");
const RSA_PUB: &[u8] = include_bytes!("../keys/rsa.pub.pem");

/// A service that only answers callers with a valid token for audience `orders`, and echoes
/// the token's `jti` and `aud`, and the raw Authorization header.
fn protected_orders() -> Served {
    let verifier = Verifier::new([VerifyingKey::from_pem(Algorithm::RS256, RSA_PUB).expect("key")])
        .audience("orders")
        .issuer("https://mesh.test");
    let router = Router::new()
        .fallback(|request: Request| async move {
            let claims = request.extensions().get::<Claims>().cloned();
            let jti = claims
                .as_ref()
                .and_then(|c| c.get("jti").and_then(|j| j.as_str().map(str::to_owned)))
                .unwrap_or_default();
            let lifetime = claims
                .as_ref()
                .and_then(|c| Some(c.get("exp")?.as_u64()? - c.get("iat")?.as_u64()?))
                .unwrap_or(0);
            Response::builder()
                .header("x-jti", jti)
                .header("x-lifetime", lifetime.to_string())
                .header(
                    "x-sub",
                    claims.as_ref().and_then(Claims::subject).unwrap_or(""),
                )
                .body(Body::empty())
                .expect("response")
        })
        .layer(JwtAuthLayer::new(verifier));
    Served::start(router)
}

fn mesh_with(source: Arc<dyn TokenSource>, orders: &Served) -> MeshClient {
    MeshClient::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [Endpoint::new(orders.addr)])
                .expect("valid"),
        )
        .traffic(TrafficPolicy::default().token_source(source))
        .build()
        .expect("valid client")
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers()[name].to_str().expect("ascii").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_tokens_reach_a_verifying_server_and_are_cached() {
    let orders = protected_orders();
    let signer = JwtSigner::builder(SigningKey::from_pem(Algorithm::RS256, RSA).expect("key"))
        .issuer("https://mesh.test")
        .subject("checkout")
        .lifetime(Duration::from_secs(120))
        .build()
        .expect("valid");
    let mesh = mesh_with(signer, &orders);
    let first = mesh.get("http://orders/").send().await.expect("ok");
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-sub"), "checkout");
    assert_eq!(header(&first, "x-lifetime"), "120");
    let jti = header(&first, "x-jti");
    assert_eq!(jti.len(), 32);
    for _ in 0..20 {
        let response = mesh.get("http://orders/").send().await.expect("ok");
        assert_eq!(
            header(&response, "x-jti"),
            jti,
            "the cached token is reused"
        );
    }
    // A caller's own Authorization is left alone: here it is refused by the server.
    let own = mesh
        .get("http://orders/")
        .bearer_auth("not-a-jwt")
        .send()
        .await
        .expect("answered");
    assert_eq!(own.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_re_signed_in_the_background_before_they_expire() {
    let orders = protected_orders();
    let signer = JwtSigner::builder(SigningKey::from_pem(Algorithm::RS256, RSA).expect("key"))
        .issuer("https://mesh.test")
        .lifetime(Duration::from_secs(2))
        .build()
        .expect("valid");
    let mesh = mesh_with(signer, &orders);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let response = mesh.get("http://orders/").send().await.expect("ok");
        assert_eq!(response.status(), 200, "no call fails across re-signing");
        seen.insert(header(&response, "x-jti"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.len() >= 2,
        "re-signed at 80% of the lifetime: {seen:?}"
    );
}

#[test]
fn signing_keys_are_checked() {
    assert!(SigningKey::hmac(Algorithm::HS256, &Secret::new("short")).is_err());
    assert!(SigningKey::hmac(Algorithm::HS256, &Secret::new("x".repeat(32))).is_ok());
    assert!(SigningKey::from_pem(Algorithm::ES256, RSA).is_err());
    let jwk = serde_json::json!({"kty": "oct", "alg": "HS256", "kid": "k1", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"});
    assert!(SigningKey::from_oct_jwk(&jwk).is_ok());
    assert!(!format!("{:?}", SigningKey::from_oct_jwk(&jwk).expect("key")).contains("MDEy"));
}

#[derive(Clone, Default)]
struct TokenEndpoint {
    fetches: Arc<AtomicUsize>,
    expires_in: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    refuse: Arc<std::sync::atomic::AtomicBool>,
    /// Accepts the request and never answers.
    hang: Arc<std::sync::atomic::AtomicBool>,
    /// Answers 503 with an HTML page, as a proxy in front of a down provider does.
    unavailable: Arc<std::sync::atomic::AtomicBool>,
    /// `expires_in` as a string, as some providers send it.
    expires_as_string: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A token request: its Authorization header and its form body.
type Seen = (Option<String>, String);

async fn issue(State(endpoint): State<TokenEndpoint>, request: Request) -> Response {
    let n = endpoint.fetches.fetch_add(1, Ordering::SeqCst) + 1;
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = axum::body::to_bytes(request.into_body(), 4096)
        .await
        .unwrap_or_default();
    let form = String::from_utf8_lossy(&body).into_owned();
    endpoint.seen.lock().expect("lock").push((auth, form));
    if endpoint.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    if endpoint.unavailable.load(Ordering::SeqCst) {
        return Response::builder()
            .status(503)
            .body(Body::from("<html>down</html>"))
            .expect("response");
    }
    tokio::time::sleep(Duration::from_millis(
        endpoint.delay_ms.load(Ordering::SeqCst),
    ))
    .await;
    if endpoint.refuse.load(Ordering::SeqCst) {
        return Response::builder()
            .status(401)
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"error":"invalid_client","error_description":"bad secret"}"#,
            ))
            .expect("response");
    }
    let expires_in = endpoint.expires_in.load(Ordering::SeqCst);
    let body = serde_json::json!({
        "access_token": format!("token-{n}"),
        "token_type": "Bearer",
        "expires_in": if endpoint.expires_as_string.load(Ordering::SeqCst) {
            serde_json::json!(expires_in.to_string())
        } else {
            serde_json::json!(expires_in)
        },
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

/// A service that echoes the bearer token it got.
fn echo_token() -> Served {
    Served::start(Router::new().fallback(|request: Request| async move {
        let auth = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Response::builder()
            .header("x-auth", auth)
            .body(Body::empty())
            .expect("response")
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_are_fetched_once_and_refreshed_without_stalling() {
    let endpoint = TokenEndpoint::default();
    endpoint.expires_in.store(2, Ordering::SeqCst);
    let server = Served::start(Router::new().fallback(issue).with_state(endpoint.clone()));
    let orders = echo_token();
    let source = OAuth2ClientCredentials::builder(
        format!("http://{}/oauth/token", server.addr),
        "checkout",
        Secret::new("s3cr3t/with:odd&chars"),
    )
    .scope("orders:read")
    .refresh_margin(Duration::from_secs(1))
    .build()
    .expect("valid");
    assert!(!format!("{source:?}").contains("s3cr3t"));
    let mesh = mesh_with(source, &orders);

    // Fifty concurrent first calls share one fetch.
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mesh = mesh.clone();
            tokio::spawn(async move { mesh.get("http://orders/").send().await })
        })
        .collect();
    for call in calls {
        let response = call.await.expect("task").expect("ok");
        assert_eq!(header(&response, "x-auth"), "Bearer token-1");
    }
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 1);
    let (auth, form) = endpoint.seen.lock().expect("lock")[0].clone();
    // client_secret_basic: the id and secret form-encoded, then base64 (RFC 6749 §2.3.1).
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode("checkout:s3cr3t%2Fwith%3Aodd%26chars");
    assert_eq!(auth.as_deref(), Some(format!("Basic {basic}").as_str()));
    assert_eq!(form, "grant_type=client_credentials&scope=orders%3Aread");

    // Past expires_in minus the margin, a refresh runs in the background; a slow endpoint
    // does not slow the calls, which keep the valid token meanwhile.
    endpoint.delay_ms.store(400, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut slowest = Duration::ZERO;
    let mut tokens = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let started = std::time::Instant::now();
        let response = mesh.get("http://orders/").send().await.expect("ok");
        slowest = slowest.max(started.elapsed());
        tokens.insert(header(&response, "x-auth"));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(
        slowest < Duration::from_millis(300),
        "a call waited on the refresh: {slowest:?}"
    );
    assert!(tokens.contains("Bearer token-2"), "{tokens:?}");
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_and_a_refusing_endpoint() {
    let endpoint = TokenEndpoint::default();
    endpoint.expires_in.store(3600, Ordering::SeqCst);
    endpoint.refuse.store(true, Ordering::SeqCst);
    let server = Served::start(Router::new().fallback(issue).with_state(endpoint.clone()));
    let orders = echo_token();
    let source = OAuth2ClientCredentials::builder(
        format!("http://{}/oauth/token", server.addr),
        "checkout",
        Secret::new("hunter2"),
    )
    .client_auth(ClientAuth::Post)
    .audience("https://api.test")
    .build()
    .expect("valid");
    let mesh = mesh_with(source, &orders);
    let err = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("refused");
    assert!(err.is_auth(), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("bad secret"),
        "{shown}"
    );
    let (auth, form) = endpoint.seen.lock().expect("lock")[0].clone();
    assert_eq!(auth, None);
    assert_eq!(
        form,
        "grant_type=client_credentials&audience=https%3A%2F%2Fapi.test&client_id=checkout&client_secret=hunter2"
    );

    // The refusal is shared while its backoff lasts: calls fail at once, without a request.
    for _ in 0..20 {
        let err = mesh
            .get("http://orders/")
            .send()
            .await
            .expect_err("backed off");
        assert!(
            err.is_auth() && err.to_string().contains("invalid_client"),
            "{err}"
        );
    }
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 1);

    // Past the backoff's first step (at most 1 s), the endpoint is asked again.
    endpoint.refuse.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let response = mesh.get("http://orders/").send().await.expect("ok");
    assert!(header(&response, "x-auth").starts_with("Bearer token-"));
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 2);
}

/// One call to `orders` through `mesh`: the token the service saw, or the error.
async fn call_orders(mesh: &MeshClient) -> Result<String, proxyless::Error> {
    let response = mesh.get("http://orders/").send().await?;
    Ok(header(&response, "x-auth"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_hangs_fails_and_recovers_is_asked_once_per_backoff_step() {
    let endpoint = TokenEndpoint::default();
    endpoint.expires_in.store(3600, Ordering::SeqCst);
    endpoint.hang.store(true, Ordering::SeqCst);
    let server = Served::start(Router::new().fallback(issue).with_state(endpoint.clone()));
    let orders = echo_token();
    let source = OAuth2ClientCredentials::builder(
        format!("http://{}/oauth/token", server.addr),
        "checkout",
        Secret::new("s3cr3t"),
    )
    .timeout(Duration::from_millis(300))
    .backoff(Duration::from_millis(400), Duration::from_millis(800))
    .build()
    .expect("valid");
    let mesh = mesh_with(source, &orders);
    let fetches = || endpoint.fetches.load(Ordering::SeqCst);

    // A hundred first calls wait for one fetch, which times out: one request, and its
    // failure is every caller's.
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let mesh = mesh.clone();
            tokio::spawn(async move { call_orders(&mesh).await })
        })
        .collect();
    for call in calls {
        let err = call.await.expect("task").expect_err("the endpoint hangs");
        assert!(err.is_auth(), "{err:?}");
        assert!(err.to_string().contains("in time"), "{err}");
    }
    assert_eq!(fetches(), 1, "one request for a hundred callers");

    // While it fails (now with 503 and an HTML page), calls fail at once, and the endpoint
    // is asked once per backoff step: steps of 400 ms doubling to 800 ms, each drawn from
    // its upper half (at least 200, then 400 ms), allow at most 6 requests in 2 s, and at
    // least 2.
    endpoint.hang.store(false, Ordering::SeqCst);
    endpoint.unavailable.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let err = call_orders(&mesh).await.expect_err("still down");
        assert!(err.is_auth(), "{err:?}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = fetches() - 1;
    assert!(calls >= 50, "{calls} calls");
    assert!((2..=6).contains(&asked), "{asked} requests in 2 s");

    // Back: within one step the calls get a token again, all from one fetch.
    endpoint.unavailable.store(false, Ordering::SeqCst);
    let back = std::time::Instant::now();
    let token = loop {
        match call_orders(&mesh).await {
            Ok(token) => break token,
            Err(err) => assert!(err.is_auth(), "{err:?}"),
        }
        assert!(back.elapsed() < Duration::from_secs(3), "not back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(token, format!("Bearer token-{}", fetches()));
    let fetched = fetches();
    for _ in 0..20 {
        assert_eq!(call_orders(&mesh).await.expect("ok"), token);
    }
    assert_eq!(fetches(), fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refresh_keeps_the_valid_token_and_backs_off() {
    let endpoint = TokenEndpoint::default();
    endpoint.expires_in.store(6, Ordering::SeqCst);
    // Some providers send `expires_in` as a string.
    endpoint.expires_as_string.store(true, Ordering::SeqCst);
    let server = Served::start(Router::new().fallback(issue).with_state(endpoint.clone()));
    let orders = echo_token();
    let source = OAuth2ClientCredentials::builder(
        format!("http://{}/oauth/token", server.addr),
        "checkout",
        Secret::new("s3cr3t"),
    )
    .refresh_margin(Duration::from_secs(3))
    .backoff(Duration::from_millis(100), Duration::from_millis(400))
    .build()
    .expect("valid");
    let mesh = mesh_with(source, &orders);
    assert_eq!(call_orders(&mesh).await.expect("ok"), "Bearer token-1");

    // Past the refresh point (6 s - 3 s) the endpoint fails; the valid token keeps serving
    // and the background refresh backs off (steps of at least 50, 100, 200, 200 ms: at most
    // 6 requests in 800 ms).
    endpoint.unavailable.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(3050)).await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(800) {
        assert_eq!(
            call_orders(&mesh).await.expect("the valid token serves"),
            "Bearer token-1"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = endpoint.fetches.load(Ordering::SeqCst) - 1;
    assert!((1..=6).contains(&asked), "{asked} refresh requests");

    // Back before the token expires: the refresh lands and no call failed meanwhile.
    endpoint.unavailable.store(false, Ordering::SeqCst);
    let back = std::time::Instant::now();
    loop {
        let token = call_orders(&mesh).await.expect("no call fails");
        if token != "Bearer token-1" {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(1), "not refreshed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_waiting_does_not_cancel_the_fetch() {
    let endpoint = TokenEndpoint::default();
    endpoint.expires_in.store(3600, Ordering::SeqCst);
    endpoint.delay_ms.store(800, Ordering::SeqCst);
    let server = Served::start(Router::new().fallback(issue).with_state(endpoint.clone()));
    let orders = echo_token();
    let source = OAuth2ClientCredentials::builder(
        format!("http://{}/oauth/token", server.addr),
        "checkout",
        Secret::new("s3cr3t"),
    )
    .build()
    .expect("valid");
    let mesh = mesh_with(source, &orders);
    // Calls whose own timeout is shorter than the endpoint's answer give up waiting (their
    // timeout bounds the wait for a token too)...
    for _ in 0..2 {
        let err = mesh
            .get("http://orders/")
            .timeout(Duration::from_millis(100))
            .send()
            .await
            .expect_err("the token takes 800 ms");
        assert!(err.is_timeout(), "{err:?}");
    }
    // ...but the one fetch they started goes on, and its token serves the next calls.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(call_orders(&mesh).await.expect("ok"), "Bearer token-1");
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_own_timeout_bounds_the_call_whatever_the_services_timeout() {
    let endpoint = TokenEndpoint::default();
    endpoint.expires_in.store(3600, Ordering::SeqCst);
    endpoint.delay_ms.store(2000, Ordering::SeqCst);
    let server = Served::start(Router::new().fallback(issue).with_state(endpoint.clone()));
    let orders = echo_token();
    let source = OAuth2ClientCredentials::builder(
        format!("http://{}/oauth/token", server.addr),
        "checkout",
        Secret::new("s3cr3t"),
    )
    .build()
    .expect("valid");
    // A service with no timeout of its own.
    let mesh = MeshClient::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [Endpoint::new(orders.addr)])
                .expect("valid"),
        )
        .traffic(TrafficPolicy::default().no_timeout().token_source(source))
        .build()
        .expect("valid client");
    let started = std::time::Instant::now();
    let err = mesh
        .get("http://orders/")
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .expect_err("the token takes 2 s");
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "bounded by its own timeout, not the token's 2 s: {:?}",
        started.elapsed()
    );
    // A timeout too long to add to the clock is no deadline at all, never a panic.
    let response = mesh
        .get("http://orders/")
        .timeout(Duration::MAX)
        .send()
        .await
        .expect("answered once the token comes");
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_redirect_is_not_followed_with_the_credentials() {
    // A server that would collect what is posted to it.
    let collected = Arc::new(AtomicUsize::new(0));
    let counter = collected.clone();
    let collector = Served::start(Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { "{}" }
    }));
    let target = format!("http://{}/steal", collector.addr);
    let redirecting = Served::start(Router::new().fallback(move || {
        let target = target.clone();
        async move {
            Response::builder()
                .status(307)
                .header("location", target)
                .body(Body::empty())
                .expect("response")
        }
    }));
    let orders = echo_token();
    let source = OAuth2ClientCredentials::builder(
        format!("http://{}/oauth/token", redirecting.addr),
        "checkout",
        Secret::new("s3cr3t"),
    )
    .client_auth(ClientAuth::Post)
    .build()
    .expect("valid");
    let mesh = mesh_with(source, &orders);
    let err = call_orders(&mesh).await.expect_err("redirected");
    assert!(err.is_auth() && err.to_string().contains("307"), "{err}");
    assert_eq!(
        collected.load(Ordering::SeqCst),
        0,
        "the secret went nowhere"
    );
}

/// A token endpoint that authenticates clients by `private_key_jwt` (RFC 7523): it verifies
/// each assertion with the client's public key, its own URL as the audience, and records
/// the assertions' claims.
#[derive(Clone, Default)]
struct AssertionEndpoint {
    assertions: Arc<Mutex<Vec<Claims>>>,
}

async fn issue_for_assertion(
    State(endpoint): State<AssertionEndpoint>,
    request: Request,
) -> Response {
    let own_url = format!(
        "http://{}{}",
        request.headers()["host"].to_str().expect("ascii"),
        request.uri().path()
    );
    let verifier = Verifier::new([VerifyingKey::from_pem(Algorithm::RS256, RSA_PUB)
        .expect("key")
        .with_kid("checkout-key")])
    .audience(own_url)
    .issuer("checkout");
    let body = axum::body::to_bytes(request.into_body(), 16 * 1024)
        .await
        .unwrap_or_default();
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let refuse = |why: &str| {
        Response::builder()
            .status(401)
            .body(Body::from(format!(r#"{{"error":"invalid_client_{why}"}}"#)))
            .expect("response")
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        || form.contains_key("client_secret")
        || form.get("client_id").map(String::as_str) != Some("checkout")
    {
        return refuse("form");
    }
    let Some(assertion) = form.get("client_assertion") else {
        return refuse("assertion");
    };
    let claims = match verifier.verify(assertion).await {
        Ok(claims) => claims,
        Err(rejection) => return refuse(rejection.label()),
    };
    if claims.subject() != Some("checkout") {
        return refuse("subject");
    }
    let n = {
        let mut assertions = endpoint.assertions.lock().expect("lock");
        assertions.push(claims);
        assertions.len()
    };
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(format!(
            r#"{{"access_token":"by-key-{n}","token_type":"bearer","expires_in":"3600"}}"#
        )))
        .expect("response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_authenticates_with_a_signed_assertion() {
    use proxyless::MeshConfig;
    let endpoint = AssertionEndpoint::default();
    let server = Served::start(
        Router::new()
            .fallback(issue_for_assertion)
            .with_state(endpoint.clone()),
    );
    let token_url = format!("http://{}/oauth/token", server.addr);
    let orders = echo_token();
    let key = SigningKey::from_pem(Algorithm::RS256, RSA)
        .expect("key")
        .with_kid("checkout-key");
    let source = OAuth2ClientCredentials::with_private_key(token_url.clone(), "checkout", key)
        .build()
        .expect("valid");
    let mesh = mesh_with(source, &orders);
    assert_eq!(call_orders(&mesh).await.expect("ok"), "Bearer by-key-1");

    // The same from config; each fetch signs a fresh assertion.
    let config = MeshConfig::from_toml_str(&format!(
        r#"
        [services.orders]
        endpoints = [{{ addr = "{orders}" }}]
        [services.orders.traffic.auth]
        kind = "oauth2"
        token_url = "{token_url}"
        client_id = "checkout"
        client_auth = "private_key_jwt"
        algorithm = "RS256"
        key_file = "tests/keys/rsa.pem"
        kid = "checkout-key"
        "#,
        orders = orders.addr,
    ))
    .expect("valid");
    let mesh = MeshClient::from_config(&config).expect("valid client");
    assert_eq!(call_orders(&mesh).await.expect("ok"), "Bearer by-key-2");
    let assertions = endpoint.assertions.lock().expect("lock").clone();
    let jti = |i: usize| assertions[i].get("jti").cloned();
    assert!(jti(0).is_some() && jti(0) != jti(1), "{assertions:?}");
    let lifetime = |c: &Claims| Some(c.get("exp")?.as_u64()? - c.get("iat")?.as_u64()?);
    assert_eq!(lifetime(&assertions[0]), Some(60));

    // An assertion for another audience (the issuer, which other servers want) is refused
    // by this one, which wants its own URL.
    let source = OAuth2ClientCredentials::with_private_key(
        token_url.clone(),
        "checkout",
        SigningKey::from_pem(Algorithm::RS256, RSA)
            .expect("key")
            .with_kid("checkout-key"),
    )
    .assertion_audience("https://idp.test")
    .build()
    .expect("valid");
    let err = call_orders(&mesh_with(source, &orders))
        .await
        .expect_err("wrong audience");
    assert!(err.to_string().contains("invalid_client_audience"), "{err}");

    // A secret builder cannot claim private_key_jwt, nor a key builder another method.
    assert!(
        OAuth2ClientCredentials::builder(&token_url, "c", Secret::new("s"))
            .client_auth(ClientAuth::PrivateKeyJwt)
            .build()
            .is_err()
    );
    for (toml, field) in [
        (
            "client_auth = \"private_key_jwt\"\nalgorithm = \"RS256\"",
            "key_file",
        ),
        (
            "client_auth = \"private_key_jwt\"\nkey_file = \"tests/keys/rsa.pem\"",
            "algorithm",
        ),
        (
            "client_auth = \"private_key_jwt\"\nalgorithm = \"RS256\"\nkey_file = \"tests/keys/rsa.pem\"\nclient_secret = \"s\"",
            "client_secret",
        ),
        (
            "client_secret = \"s\"\nalgorithm = \"RS256\"\nkey_file = \"tests/keys/rsa.pem\"",
            "algorithm",
        ),
    ] {
        let toml = format!(
            "[services.x]\nendpoints = [{{ addr = \"10.0.0.1:80\" }}]\n[services.x.traffic.auth]\nkind = \"oauth2\"\ntoken_url = \"http://t\"\nclient_id = \"c\"\n{toml}"
        );
        let err = MeshConfig::from_toml_str(&toml).expect_err(field);
        assert_eq!(
            err.field(),
            Some(format!("services.x.traffic.auth.{field}").as_str()),
            "{toml}\n{err}"
        );
    }
}

#[tokio::test]
async fn the_signer_round_trips_with_the_verifier_for_every_algorithm() {
    use proxyless::ServiceName;
    let secret = Secret::new("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    let pem = |name: &str| std::fs::read(format!("tests/keys/{name}")).expect("key file");
    let orders = ServiceName::new("orders").expect("valid");
    let mut cases = vec![
        (
            SigningKey::hmac(Algorithm::HS256, &secret).expect("key"),
            VerifyingKey::hmac(Algorithm::HS256, secret.expose().as_bytes()).expect("key"),
        ),
        (
            SigningKey::hmac(Algorithm::HS384, &secret).expect("key"),
            VerifyingKey::hmac(Algorithm::HS384, secret.expose().as_bytes()).expect("key"),
        ),
        (
            SigningKey::hmac(Algorithm::HS512, &secret).expect("key"),
            VerifyingKey::hmac(Algorithm::HS512, secret.expose().as_bytes()).expect("key"),
        ),
        (
            SigningKey::from_pem(Algorithm::ES256, &pem("ec256.pem")).expect("key"),
            VerifyingKey::from_pem(Algorithm::ES256, &pem("ec256.pub.pem")).expect("key"),
        ),
        (
            SigningKey::from_pem(Algorithm::ES384, &pem("ec384.pem")).expect("key"),
            VerifyingKey::from_pem(Algorithm::ES384, &pem("ec384.pub.pem")).expect("key"),
        ),
        (
            SigningKey::from_pem(Algorithm::EdDSA, &pem("ed25519.pem")).expect("key"),
            VerifyingKey::from_pem(Algorithm::EdDSA, &pem("ed25519.pub.pem")).expect("key"),
        ),
        // RSA from DER (PKCS#1) on both sides.
        (
            SigningKey::from_der(Algorithm::RS384, &pem("rsa.der")).expect("key"),
            VerifyingKey::from_der(Algorithm::RS384, &pem("rsa.pub.der")).expect("key"),
        ),
    ];
    for alg in [
        Algorithm::RS256,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        cases.push((
            SigningKey::from_pem(alg, RSA).expect("key"),
            VerifyingKey::from_pem(alg, RSA_PUB).expect("key"),
        ));
    }
    for (signing, verifying) in cases {
        let alg = verifying.algorithm();
        let signer = JwtSigner::builder(signing)
            .issuer("https://mesh.test")
            .claim("tenant", serde_json::json!("acme"))
            .build()
            .expect("valid");
        assert!(!format!("{signer:?}").contains("0123456789"), "{alg:?}");
        let token = signer.token(&orders).await.expect("signed");
        assert_eq!(format!("{token:?}"), "BearerToken(\"<redacted>\")");
        let raw = token
            .header_value()
            .to_str()
            .expect("ascii")
            .trim_start_matches("Bearer ")
            .to_owned();
        let claims = Verifier::new([verifying])
            .audience("orders")
            .issuer("https://mesh.test")
            .verify(&raw)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(
            claims.get("tenant"),
            Some(&serde_json::json!("acme")),
            "{alg:?}"
        );
        assert_eq!(
            claims.get("aud"),
            Some(&serde_json::json!("orders")),
            "{alg:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sources_come_from_config() {
    use proxyless::MeshConfig;
    let orders = protected_orders();
    let echo = echo_token();
    let endpoint = TokenEndpoint::default();
    endpoint.expires_in.store(3600, Ordering::SeqCst);
    let token_server = Served::start(Router::new().fallback(issue).with_state(endpoint.clone()));
    let config = MeshConfig::from_toml_str(&format!(
        r#"
        [services.orders]
        endpoints = [{{ addr = "{orders}" }}]
        [services.orders.traffic.auth]
        kind = "jwt"
        algorithm = "RS256"
        key_file = "tests/keys/rsa.pem"
        issuer = "https://mesh.test"
        subject = "from-config"

        [services.billing]
        endpoints = [{{ addr = "{echo}" }}]
        [services.billing.traffic.auth]
        kind = "oauth2"
        token_url = "http://{token}/token"
        client_id = "checkout"
        client_secret = "c0nf1g-secret"
        client_auth = "post"

        [services.legacy]
        endpoints = [{{ addr = "{echo}" }}]
        [services.legacy.traffic.auth]
        kind = "static"
        token = "st4tic-token"
        "#,
        orders = orders.addr,
        echo = echo.addr,
        token = token_server.addr,
    ))
    .expect("valid");
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("c0nf1g-secret") && !shown.contains("st4tic-token"),
        "{shown}"
    );
    let mesh = MeshClient::from_config(&config).expect("valid client");
    let response = mesh.get("http://orders/").send().await.expect("ok");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-sub"), "from-config");
    let response = mesh.get("http://billing/").send().await.expect("ok");
    assert_eq!(header(&response, "x-auth"), "Bearer token-1");
    let response = mesh.get("http://legacy/").send().await.expect("ok");
    assert_eq!(header(&response, "x-auth"), "Bearer st4tic-token");

    for (toml, field) in [
        (
            "kind = \"jwt\"\nalgorithm = \"RS256\"",
            "services.x.traffic.auth.key_file",
        ),
        (
            "kind = \"jwt\"\nalgorithm = \"XS256\"\nsecret = \"k\"",
            "services.x.traffic.auth.algorithm",
        ),
        (
            "kind = \"jwt\"\nalgorithm = \"HS256\"\nsecret = \"short\"",
            "services.x.traffic.auth.secret",
        ),
        (
            "kind = \"jwt\"\nalgorithm = \"RS256\"\nkey_file = \"/nonexistent.pem\"",
            "services.x.traffic.auth.key_file",
        ),
        (
            "kind = \"static\"\ntoken_url = \"http://t\"",
            "services.x.traffic.auth.token_url",
        ),
        ("kind = \"static\"", "services.x.traffic.auth.token"),
        (
            "kind = \"oauth2\"\ntoken_url = \"http://t\"\nclient_id = \"c\"",
            "services.x.traffic.auth.client_secret",
        ),
        (
            "kind = \"oauth2\"\ntoken_url = \"http://t\"\nclient_id = \"c\"\nclient_secret = \"s\"\nclient_auth = \"jwt\"",
            "services.x.traffic.auth.client_auth",
        ),
    ] {
        let toml = format!(
            "[services.x]\nendpoints = [{{ addr = \"10.0.0.1:80\" }}]\n[services.x.traffic.auth]\n{toml}"
        );
        let err = MeshConfig::from_toml_str(&toml).expect_err(field);
        assert_eq!(err.field(), Some(field), "{toml}\n{err}");
    }
}

#[tokio::test]
async fn a_signer_with_a_fixed_audience_names_it_for_every_service_but_those_set_apart() {
    use proxyless::ServiceName;
    let signer = JwtSigner::builder(SigningKey::from_pem(Algorithm::RS256, RSA).expect("key"))
        .audience("https://api.example")
        .audience_for("billing", "billing-api")
        .build()
        .expect("valid");
    let verifier = |audience: &str| {
        Verifier::new([VerifyingKey::from_pem(Algorithm::RS256, RSA_PUB).expect("key")])
            .audience(audience)
    };
    let token_for = |service: &str| {
        let signer = signer.clone();
        let service = ServiceName::new(service).expect("valid");
        async move {
            let header = signer.token(&service).await.expect("signed");
            header.header_value().to_str().expect("ascii")["Bearer ".len()..].to_owned()
        }
    };
    for service in ["orders", "payments"] {
        let token = token_for(service).await;
        assert!(verifier("https://api.example").verify(&token).await.is_ok());
        assert!(verifier(service).verify(&token).await.is_err());
    }
    let billing = token_for("billing").await;
    assert!(verifier("billing-api").verify(&billing).await.is_ok());

    // The same from config: any string is an audience, a URL included.
    let config = proxyless::MeshConfig::from_toml_str(
        "[services.orders]\nendpoints = [{ addr = \"10.0.0.1:80\" }]\n[services.orders.traffic.auth]\nkind = \"jwt\"\nalgorithm = \"RS256\"\nkey_file = \"tests/keys/rsa.pem\"\naudience = \"https://api.example\"",
    )
    .expect("valid");
    assert!(MeshClient::from_config(&config).is_ok());
}
