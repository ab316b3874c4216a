//! An axum service protected by `JwtAuthLayer` with a JWKS, called by a `MeshClient` that
//! signs its own tokens.
//!
//! ```bash
//! cargo run --example jwt_server --features jwt,axum
//! ```
//!
//! Everything runs on 127.0.0.1: a key-set endpoint serving the public key, the `orders`
//! service verifying tokens against it, and the mesh calling `orders` with tokens signed by
//! the matching private key. The keys are the test-only pair under `tests/keys`.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use proxyless::auth::{
    Algorithm, Claims, Jwks, JwksOptions, JwtAuthLayer, JwtSigner, SigningKey, Verifier,
};
use proxyless::client::TrafficPolicy;
use proxyless::{Endpoint, MeshClient, StaticDiscovery};

const PRIVATE_KEY: &[u8] = include_bytes!("../tests/keys/rsa.pem");
const KEY_SET: &str = include_str!("../tests/keys/jwks.json");

async fn serve(router: Router) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// `GET /v1/whoami`: the caller, from its verified token (the axum extractor).
async fn whoami(claims: Claims) -> String {
    format!(
        "hello {} (issued by {})",
        claims.subject().unwrap_or("?"),
        claims.issuer().unwrap_or("?")
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jwks_addr =
        serve(Router::new().route("/.well-known/jwks.json", get(|| async { KEY_SET }))).await?;
    let jwks = Jwks::new(
        &format!("http://{jwks_addr}/.well-known/jwks.json"),
        JwksOptions::default(),
    )?;
    let verifier = Verifier::with_jwks(jwks)
        .issuer("https://checkout.example")
        .audience("orders");
    let orders = serve(
        Router::new()
            .route("/v1/whoami", get(whoami))
            .layer(JwtAuthLayer::new(verifier)),
    )
    .await?;
    println!("JWKS at http://{jwks_addr}/.well-known/jwks.json, orders at http://{orders}");

    let signer =
        JwtSigner::builder(SigningKey::from_pem(Algorithm::RS256, PRIVATE_KEY)?.with_kid("rsa-1"))
            .issuer("https://checkout.example")
            .subject("checkout")
            .lifetime(Duration::from_secs(300))
            .build()?;
    let mesh = MeshClient::builder()
        .discovery(StaticDiscovery::new().with("orders", [Endpoint::new(orders)])?)
        .traffic(TrafficPolicy::default().token_source(signer))
        .build()?;

    let response = mesh.get("http://orders/v1/whoami").send().await?;
    println!(
        "through the mesh, signed: {} {}",
        response.status(),
        response.text().await?
    );

    let anonymous = reqwest::get(format!("http://{orders}/v1/whoami")).await?;
    println!(
        "without a token:          {} WWW-Authenticate: {}",
        anonymous.status(),
        anonymous.headers()["www-authenticate"].to_str()?
    );
    Ok(())
}
