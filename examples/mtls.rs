//! Mesh TLS end to end, with no setup: makes a CA, gives two instances of `orders` (on
//! 127.0.0.1 and 127.0.0.2) a certificate naming the SPIFFE ID
//! `spiffe://example.org/ns/prod/sa/orders` and nothing else, requires client certificates
//! from the same CA, and calls `http://orders/` through the mesh: TCP goes to the instances'
//! IP addresses, the certificate is verified against the SPIFFE ID, and the client presents
//! its own. Then it shows the calls the mesh refuses.
//!
//! ```bash
//! cargo run --example mtls --features rustls
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxyless::client::HttpVersion;
use proxyless::tls::{ServerIdentity, TlsSettings};
use proxyless::{Endpoint, MeshClient, Secret, ServiceOptions, StaticDiscovery};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const ORDERS: &str = "spiffe://example.org/ns/prod/sa/orders";
const CHECKOUT: &str = "spiffe://example.org/ns/prod/sa/checkout";

type Error = Box<dyn std::error::Error>;

/// A certificate for `uri` from `ca`: (chain PEM, key PEM).
fn issue(ca: &CertifiedIssuer<'_, KeyPair>, uri: &str) -> Result<(String, String), Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names.push(SanType::URI(uri.try_into()?));
    let key = KeyPair::generate()?;
    Ok((params.signed_by(&key, ca)?.pem(), key.serialize_pem()))
}

/// An instance of `orders` on `ip`, over TLS, requiring a client certificate from `ca_pem`.
async fn start_instance(
    ip: [u8; 4],
    (cert, key): &(String, String),
    ca_pem: &str,
) -> Result<SocketAddr, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, 0))).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    let body = format!("{addr} over {:?}", request.version());
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn mesh_for(
    endpoints: &[Endpoint],
    tls: TlsSettings,
    identity: ServerIdentity,
    version: HttpVersion,
) -> Result<MeshClient, Error> {
    let discovery = StaticDiscovery::new().with("orders", endpoints.to_vec())?;
    Ok(MeshClient::builder()
        .discovery(discovery)
        .tls(tls)
        .service(
            "orders",
            ServiceOptions::new()
                .tls(TlsSettings::new().identity(identity))
                .http_version(version),
        )
        .build()?)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let server_cert = issue(&ca, ORDERS)?;
    let (client_cert, client_key) = issue(&ca, CHECKOUT)?;

    let mut endpoints = Vec::new();
    for ip in [[127, 0, 0, 1], [127, 0, 0, 2]] {
        endpoints.push(Endpoint::new(
            start_instance(ip, &server_cert, &ca.pem()).await?,
        ));
    }
    let addrs: Vec<String> = endpoints.iter().map(|e| e.addr().to_string()).collect();
    println!(
        "`orders` at {}, certificates naming {ORDERS} only\n",
        addrs.join(" and ")
    );

    let tls = TlsSettings::new()
        .roots_pem(ca.pem())
        .client_cert_pem(client_cert, Secret::new(client_key));
    let mesh = mesh_for(
        &endpoints,
        tls.clone(),
        ServerIdentity::SpiffeId(ORDERS.into()),
        HttpVersion::Auto,
    )?;
    let mut answers = BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        let body = mesh.get("http://orders/").send().await?.text().await?;
        *answers.entry(body).or_default() += 1;
    }
    println!("100 calls to http://orders/ as {CHECKOUT}:");
    for (answer, n) in &answers {
        println!("  {n:>3} answered by {answer}");
    }

    println!("\nrefused:");
    let wrong_id = mesh_for(
        &endpoints,
        tls,
        ServerIdentity::SpiffeId("spiffe://example.org/ns/prod/sa/payments".into()),
        HttpVersion::Auto,
    )?;
    let no_cert = mesh_for(
        &endpoints,
        TlsSettings::new().roots_pem(ca.pem()),
        ServerIdentity::SpiffeId(ORDERS.into()),
        // The server's refusal comes after the handshake (TLS 1.3); over HTTP/1.1 it is the
        // call's error, over HTTP/2 it may show as a closed connection.
        HttpVersion::Http1,
    )?;
    for (what, mesh) in [
        ("expecting another SPIFFE ID", wrong_id),
        ("without a client certificate", no_cert),
    ] {
        match mesh.get("http://orders/").send().await {
            Ok(response) => println!("  {what}: unexpectedly answered {}", response.status()),
            Err(error) => println!("  {what}: is_tls() = {}: {error}", error.is_tls()),
        }
    }
    Ok(())
}
