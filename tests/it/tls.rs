//! Mesh TLS against real TLS servers on loopback addresses, with a CA and certificates made in
//! the test: services verified by identity at their endpoints' IP addresses, mutual TLS with
//! rotating certificates, every refusal typed, and HTTP/2 by ALPN and h2c.

use std::time::Duration;

use proxyless::client::HttpVersion;
use proxyless::tls::{ServerIdentity, TlsSettings};
use proxyless::{Endpoint, MeshClient, Secret, ServiceOptions, StaticDiscovery};

use crate::support::tls::{Issued, Name, ServerTls, TestCa, TlsServer};

const ORDERS_ID: &str = "spiffe://example.org/ns/prod/sa/orders";

/// A mesh whose service `orders` has `tls` as its own settings.
fn mesh(servers: &[&TlsServer], tls: TlsSettings) -> MeshClient {
    let endpoints: Vec<Endpoint> = servers.iter().map(|s| Endpoint::new(s.addr)).collect();
    let discovery = StaticDiscovery::new()
        .with("orders", endpoints)
        .expect("endpoints");
    MeshClient::builder()
        .discovery(discovery)
        .service("orders", ServiceOptions::new().tls(tls))
        .build()
        .expect("a mesh")
}

/// A mesh with `tls` as the client's settings and `options` for `orders`.
fn mesh_with(servers: &[&TlsServer], tls: TlsSettings, options: ServiceOptions) -> MeshClient {
    let endpoints: Vec<Endpoint> = servers.iter().map(|s| Endpoint::new(s.addr)).collect();
    let discovery = StaticDiscovery::new()
        .with("orders", endpoints)
        .expect("endpoints");
    MeshClient::builder()
        .discovery(discovery)
        .tls(tls)
        .service("orders", options)
        .build()
        .expect("a mesh")
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The error of a call that must be refused over TLS, with its checks: typed as TLS, naming
/// the endpoint and the identity expected.
async fn refused(mesh: &MeshClient, expected: &str) -> proxyless::Error {
    let error = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("the handshake must fail");
    assert!(error.is_tls(), "not a TLS error: {error:?}");
    assert!(error.is_transport(), "{error:?}");
    assert!(error.endpoint().is_some(), "no endpoint named: {error}");
    let named = format!("TLS with `{expected}` failed");
    assert!(
        error.to_string().contains(&named),
        "`{error}` does not say `{named}`"
    );
    error
}

/// [`refused`], for a server certificate refused while connecting: also a connect error.
async fn refused_at_connect(mesh: &MeshClient, expected: &str) -> proxyless::Error {
    let error = refused(mesh, expected).await;
    assert!(error.is_connect(), "not a connect error: {error:?}");
    error
}

#[tokio::test]
async fn a_certificate_for_the_service_name_verifies_at_an_ip_endpoint() {
    let ca = TestCa::new("mesh CA");
    // No IP address among its names: verification against the address would fail.
    let cert = ca.issue(&[Name::Dns("orders")]);
    let server = TlsServer::start([127, 0, 0, 1], "a", ServerTls::new(&cert)).await;
    let mesh = mesh(&[&server], TlsSettings::new().roots_pem(ca.pem()));

    // An `http` logical URL of a service with TLS settings goes over TLS too.
    for url in ["http://orders/x", "https://orders/x"] {
        let response = mesh.get(url).send().await.expect("verified by name");
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-sni"), "orders");
        assert!(header(&response, "x-host").starts_with("orders"));
        // ALPN offered h2 first, and the server took it.
        assert_eq!(header(&response, "x-version"), "HTTP/2.0");
    }
    // A URL that repeats is copied from the last one sent, never confused with another.
    for path in ["/a?x=1", "/a?x=1", "/b", "/a?x=1", "/a?x=2", "/b"] {
        let response = mesh
            .get(format!("http://orders{path}"))
            .send()
            .await
            .expect("a call");
        assert_eq!(header(&response, "x-path"), path);
    }
}

#[tokio::test]
async fn each_endpoint_keeps_its_own_connections() {
    let ca = TestCa::new("mesh CA");
    let cert = ca.issue(&[Name::Dns("orders")]);
    let first = TlsServer::start([127, 0, 0, 1], "first", ServerTls::new(&cert)).await;
    let second = TlsServer::start([127, 0, 0, 2], "second", ServerTls::new(&cert)).await;
    let mesh = mesh(&[&first, &second], TlsSettings::new().roots_pem(ca.pem()));
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for _ in 0..60 {
        let response = mesh.get("http://orders/").send().await.expect("a call");
        *seen.entry(header(&response, "x-server")).or_default() += 1;
    }
    // Both endpoints served (the balancer's choice held: a pooled connection to one never
    // carried a call meant for the other), each over one reused connection.
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| *n >= 10), "{seen:?}");
    assert_eq!((first.connections(), second.connections()), (1, 1));
}

#[tokio::test]
async fn a_name_suffix_and_a_configured_dns_name_are_the_identity() {
    let ca = TestCa::new("mesh CA");
    let cert = ca.issue(&[Name::Dns("orders.prod.svc.cluster.local")]);
    let server = TlsServer::start([127, 0, 0, 1], "a", ServerTls::new(&cert)).await;
    let suffixed = mesh(
        &[&server],
        TlsSettings::new()
            .roots_pem(ca.pem())
            .name_suffix(".prod.svc.cluster.local"),
    );
    let response = suffixed.get("http://orders/").send().await.expect("a call");
    assert_eq!(header(&response, "x-sni"), "orders.prod.svc.cluster.local");

    let named = mesh_with(
        &[&server],
        TlsSettings::new().roots_pem(ca.pem()),
        ServiceOptions::new().tls(
            TlsSettings::new()
                .identity(ServerIdentity::Dns("orders.prod.svc.cluster.local".into())),
        ),
    );
    named.get("http://orders/").send().await.expect("a call");

    // Without the suffix, the certificate does not name `orders`.
    let plain = mesh(&[&server], TlsSettings::new().roots_pem(ca.pem()));
    refused_at_connect(&plain, "orders").await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let ca = TestCa::new("mesh CA");
    let cert = ca.issue(&[Name::Dns("payments"), Name::Ip([127, 0, 0, 1].into())]);
    let server = TlsServer::start([127, 0, 0, 1], "a", ServerTls::new(&cert)).await;
    let mesh = mesh(&[&server], TlsSettings::new().roots_pem(ca.pem()));
    // The certificate names the endpoint's address, but the identity is the service's.
    refused_at_connect(&mesh, "orders").await;
    assert!(server.handshake_failures() >= 1);
}

#[tokio::test]
async fn an_untrusted_ca_and_an_expired_certificate_are_refused() {
    let ca = TestCa::new("mesh CA");
    let other = TestCa::new("another CA");
    let foreign = other.issue(&[Name::Dns("orders")]);
    let server = TlsServer::start([127, 0, 0, 1], "a", ServerTls::new(&foreign)).await;
    let mesh_a = mesh(&[&server], TlsSettings::new().roots_pem(ca.pem()));
    let error = refused_at_connect(&mesh_a, "orders").await;
    assert!(
        format!("{:?}", error).contains("UnknownIssuer"),
        "{error:?}"
    );

    let expired = ca.issue_expired(&[Name::Dns("orders")]);
    let server = TlsServer::start([127, 0, 0, 1], "b", ServerTls::new(&expired)).await;
    let mesh_b = mesh(&[&server], TlsSettings::new().roots_pem(ca.pem()));
    let error = refused_at_connect(&mesh_b, "orders").await;
    assert!(format!("{:?}", error).contains("Expired"), "{error:?}");
}

#[tokio::test]
async fn a_spiffe_id_is_matched_exactly_or_by_trust_domain() {
    let ca = TestCa::new("example.org");
    let cert = ca.issue(&[Name::Uri(ORDERS_ID)]);
    let server = TlsServer::start([127, 0, 0, 1], "a", ServerTls::new(&cert)).await;
    let roots = TlsSettings::new().roots_pem(ca.pem());

    let exact = mesh(
        &[&server],
        roots
            .clone()
            .identity(ServerIdentity::SpiffeId(ORDERS_ID.into())),
    );
    let response = exact
        .get("http://orders/")
        .send()
        .await
        .expect("the ID matches");
    // SNI is still the service's DNS name.
    assert_eq!(header(&response, "x-sni"), "orders");

    let domain = mesh(
        &[&server],
        roots
            .clone()
            .identity(ServerIdentity::SpiffeTrustDomain("example.org".into())),
    );
    domain
        .get("http://orders/")
        .send()
        .await
        .expect("the domain matches");

    for (identity, named) in [
        (
            ServerIdentity::SpiffeId("spiffe://example.org/ns/prod/sa/payments".into()),
            "spiffe://example.org/ns/prod/sa/payments",
        ),
        // A prefix of the ID is not the ID.
        (
            ServerIdentity::SpiffeId("spiffe://example.org/ns/prod/sa/order".into()),
            "spiffe://example.org/ns/prod/sa/order",
        ),
        (
            ServerIdentity::SpiffeTrustDomain("example.com".into()),
            "spiffe://example.com/*",
        ),
    ] {
        let wrong = mesh(&[&server], roots.clone().identity(identity));
        refused_at_connect(&wrong, named).await;
    }

    // The chain and validity are checked on the SPIFFE path too, and an SVID has one URI.
    let foreign = TestCa::new("elsewhere").issue(&[Name::Uri(ORDERS_ID)]);
    let expired = ca.issue_expired(&[Name::Uri(ORDERS_ID)]);
    let two = ca.issue(&[
        Name::Uri(ORDERS_ID),
        Name::Uri("spiffe://example.org/other"),
    ]);
    for (cert, why) in [
        (&foreign, "UnknownIssuer"),
        (&expired, "Expired"),
        (&two, "presented"),
    ] {
        let server = TlsServer::start([127, 0, 0, 1], "c", ServerTls::new(cert)).await;
        let exact = mesh(
            &[&server],
            roots
                .clone()
                .identity(ServerIdentity::SpiffeId(ORDERS_ID.into())),
        );
        let error = refused_at_connect(&exact, ORDERS_ID).await;
        assert!(format!("{error:?}").contains(why), "{why}: {error:?}");
    }

    // A certificate with a DNS name only has no SPIFFE ID to match.
    let dns_only = ca.issue(&[Name::Dns("orders")]);
    let server = TlsServer::start([127, 0, 0, 1], "b", ServerTls::new(&dns_only)).await;
    let exact = mesh(
        &[&server],
        roots.identity(ServerIdentity::SpiffeId(ORDERS_ID.into())),
    );
    refused_at_connect(&exact, ORDERS_ID).await;
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate_and_is_refused_without_one() {
    let ca = TestCa::new("example.org");
    let cert = ca.issue(&[Name::Dns("orders")]);
    let client = ca.issue(&[Name::Uri("spiffe://example.org/ns/prod/sa/checkout")]);
    let server = TlsServer::start(
        [127, 0, 0, 1],
        "a",
        ServerTls::new(&cert).requiring_client_cert(&ca),
    )
    .await;

    let with_cert = mesh(
        &[&server],
        TlsSettings::new()
            .roots_pem(ca.pem())
            .client_cert_pem(client.cert_pem.clone(), Secret::new(client.key_pem.clone())),
    );
    let response = with_cert.get("http://orders/").send().await.expect("mTLS");
    assert_eq!(
        header(&response, "x-client"),
        "spiffe://example.org/ns/prod/sa/checkout"
    );

    // In TLS 1.3 the server refuses a client certificate (or its absence) after the client's
    // side of the handshake is done: the alert comes at the first read. Over HTTP/1.1 that
    // read is the response's, and the alert is the error; over HTTP/2 the connection task
    // may read it first and the call then sees a closed connection (`is_transport()`).
    let http1 = || ServiceOptions::new().http_version(HttpVersion::Http1);
    let without = mesh_with(&[&server], TlsSettings::new().roots_pem(ca.pem()), http1());
    refused(&without, "orders").await;
    let without_h2 = mesh(&[&server], TlsSettings::new().roots_pem(ca.pem()));
    let error = without_h2
        .get("http://orders/")
        .send()
        .await
        .expect_err("refused");
    assert!(error.is_transport(), "{error:?}");

    // A certificate from another CA is refused by the server as well.
    let stranger = TestCa::new("elsewhere").issue(&[Name::Uri("spiffe://elsewhere/x")]);
    let foreign = mesh_with(
        &[&server],
        TlsSettings::new()
            .roots_pem(ca.pem())
            .client_cert_pem(stranger.cert_pem, Secret::new(stranger.key_pem)),
        http1(),
    );
    refused(&foreign, "orders").await;
}

#[tokio::test]
async fn rotated_certificate_files_are_used_by_new_connections_without_a_restart() {
    let ca = TestCa::new("example.org");
    let cert = ca.issue(&[Name::Dns("orders")]);
    let server = TlsServer::start(
        [127, 0, 0, 1],
        "a",
        ServerTls::new(&cert).requiring_client_cert(&ca),
    )
    .await;
    let dir = tempdir();
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    let first = ca.issue(&[Name::Uri("spiffe://example.org/first")]);
    first.write(&cert_file, &key_file);
    let mesh = mesh_with(
        &[&server],
        TlsSettings::new()
            .roots_pem(ca.pem())
            .client_cert_files(&cert_file, &key_file),
        ServiceOptions::new().http_version(HttpVersion::Http1),
    );
    // `connection: close`: every call opens a new connection, so each handshake shows the
    // certificate presented at that moment.
    let call = || async {
        let response = mesh
            .get("http://orders/")
            .header("connection", "close")
            .send()
            .await
            .expect("a call");
        header(&response, "x-client")
    };
    assert_eq!(call().await, "spiffe://example.org/first");

    // A rotation caught half-way (new certificate, old key) keeps the last good pair.
    let second: Issued = ca.issue(&[Name::Uri("spiffe://example.org/second")]);
    std::fs::write(&cert_file, &second.cert_pem).expect("write");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(call().await, "spiffe://example.org/first");

    std::fs::write(&key_file, &second.key_pem).expect("write");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(call().await, "spiffe://example.org/second");
    assert!(server.connections() >= 3);
}

#[tokio::test]
async fn http2_multiplexes_many_calls_over_one_connection_per_endpoint() {
    let ca = TestCa::new("mesh CA");
    let cert = ca.issue(&[Name::Dns("orders")]);
    let server = TlsServer::start([127, 0, 0, 1], "a", ServerTls::new(&cert)).await;
    let client = mesh_with(
        &[&server],
        TlsSettings::new().roots_pem(ca.pem()),
        ServiceOptions::new().http_version(HttpVersion::Http2),
    );
    multiplexed(&client, &server).await;

    // A server without h2 fails an `http2` service's handshake...
    let old = TlsServer::start([127, 0, 0, 1], "old", ServerTls::new(&cert).http1_only()).await;
    let strict = mesh_with(
        &[&old],
        TlsSettings::new().roots_pem(ca.pem()),
        ServiceOptions::new().http_version(HttpVersion::Http2),
    );
    refused_at_connect(&strict, "orders").await;
    // ...and serves an `auto` one over HTTP/1.1.
    let auto = mesh(&[&old], TlsSettings::new().roots_pem(ca.pem()));
    let response = auto.get("http://orders/").send().await.expect("a call");
    assert_eq!(header(&response, "x-version"), "HTTP/1.1");
}

#[tokio::test]
async fn h2c_speaks_http2_in_cleartext_over_one_connection() {
    let server = TlsServer::start_cleartext([127, 0, 0, 1], "a").await;
    let discovery = StaticDiscovery::new()
        .with("orders", [Endpoint::new(server.addr)])
        .expect("endpoints");
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .service(
            "orders",
            ServiceOptions::new().http_version(HttpVersion::H2c),
        )
        .build()
        .expect("a mesh");
    multiplexed(&mesh, &server).await;
}

/// One call opens a connection, then 50 calls at once share it over HTTP/2.
async fn multiplexed(mesh: &MeshClient, server: &TlsServer) {
    mesh.get("http://orders/").send().await.expect("a call");
    let calls = (0..50).map(|_| {
        let mesh = mesh.clone();
        async move { mesh.get("http://orders/slow/50").send().await }
    });
    for response in futures_util::future::join_all(calls).await {
        let response = response.expect("a call");
        assert_eq!(header(&response, "x-version"), "HTTP/2.0");
    }
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn unusable_tls_settings_are_builder_errors_that_name_the_field() {
    let discovery = || {
        StaticDiscovery::new()
            .with("orders", [Endpoint::new(([127, 0, 0, 1], 1))])
            .expect("endpoints")
    };
    let build = |tls: TlsSettings, options: ServiceOptions| {
        MeshClient::builder()
            .discovery(discovery())
            .tls(tls)
            .service("orders", options)
            .build()
            .expect_err("refused")
    };
    let ca = TestCa::new("mesh CA");
    let cases = [
        (
            build(
                TlsSettings::new().roots_pem_file("/nonexistent/ca.pem"),
                ServiceOptions::new(),
            ),
            "client.tls.roots",
        ),
        (
            build(
                TlsSettings::new().roots_pem(b"not PEM".to_vec()),
                ServiceOptions::new(),
            ),
            "client.tls.roots",
        ),
        (
            build(
                TlsSettings::new()
                    .roots_pem(ca.pem())
                    .client_cert_files("/nonexistent/tls.crt", "/nonexistent/tls.key"),
                ServiceOptions::new(),
            ),
            "client.tls.client_cert",
        ),
        (
            build(
                TlsSettings::new().roots_pem(ca.pem()),
                ServiceOptions::new()
                    .tls(TlsSettings::new().identity(ServerIdentity::SpiffeId("orders".into()))),
            ),
            "services.orders.tls.identity",
        ),
        (
            build(
                TlsSettings::new().roots_pem(ca.pem()),
                ServiceOptions::new().http_version(HttpVersion::H2c),
            ),
            "services.orders.http_version",
        ),
    ];
    for (error, field) in cases {
        assert!(error.is_builder(), "{error}");
        assert_eq!(error.field(), Some(field), "{error}");
    }
    // A client-wide identity naming one service would accept its certificate for all.
    for identity in [
        ServerIdentity::Dns("orders".into()),
        ServerIdentity::SpiffeId(ORDERS_ID.into()),
    ] {
        let error = build(
            TlsSettings::new().roots_pem(ca.pem()).identity(identity),
            ServiceOptions::new(),
        );
        assert_eq!(error.field(), Some("client.tls.identity"), "{error}");
    }
    // A key that does not match the certificate: a builder error, not a TLS failure.
    let one = ca.issue(&[Name::Dns("a")]);
    let two = ca.issue(&[Name::Dns("b")]);
    let error = build(
        TlsSettings::new()
            .roots_pem(ca.pem())
            .client_cert_pem(one.cert_pem, Secret::new(two.key_pem)),
        ServiceOptions::new(),
    );
    assert_eq!(error.field(), Some("client.tls.client_cert"), "{error}");
    assert!(!error.is_tls(), "{error:?}");
}

#[tokio::test]
async fn a_redirect_is_returned_never_followed_in_plaintext() {
    let ca = TestCa::new("mesh CA");
    let cert = ca.issue(&[Name::Dns("orders")]);
    let server = TlsServer::start([127, 0, 0, 1], "a", ServerTls::new(&cert)).await;
    let mesh = mesh(&[&server], TlsSettings::new().roots_pem(ca.pem()));
    let response = mesh
        .get("http://orders/redirect")
        .send()
        .await
        .expect("the 3xx itself");
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        format!("http://orders:{}/elsewhere", server.addr.port())
    );
}

/// A fresh directory under the system's temporary one.
fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "proxyless-tls-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

#[tokio::test]
async fn tls_and_http_version_come_from_config() {
    let ca = TestCa::new("example.org");
    let cert = ca.issue(&[Name::Uri(ORDERS_ID)]);
    let client = ca.issue(&[Name::Uri("spiffe://example.org/ns/prod/sa/checkout")]);
    let server = TlsServer::start(
        [127, 0, 0, 1],
        "a",
        ServerTls::new(&cert).requiring_client_cert(&ca),
    )
    .await;
    let dir = tempdir();
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    client.write(&dir.join("tls.crt"), &dir.join("tls.key"));
    let toml = format!(
        r#"
        [client.tls]
        roots = "{dir}/ca.pem"
        cert = "{dir}/tls.crt"
        key = "{dir}/tls.key"

        [services.orders]
        endpoints = [{{ addr = "{addr}" }}]
        http_version = "http1"

        [services.orders.tls]
        spiffe_id = "{ORDERS_ID}"
        "#,
        dir = dir.display(),
        addr = server.addr,
    );
    let config = proxyless::MeshConfig::from_toml_str(&toml).expect("a config");
    let mesh = MeshClient::from_config(&config).expect("a mesh");
    let response = mesh
        .get("http://orders/")
        .send()
        .await
        .expect("mTLS by config");
    assert_eq!(
        header(&response, "x-client"),
        "spiffe://example.org/ns/prod/sa/checkout"
    );
    assert_eq!(header(&response, "x-version"), "HTTP/1.1");

    // Errors name the config's fields.
    let bad = |toml: &str| {
        let error = proxyless::MeshConfig::from_toml_str(toml)
            .and_then(|config| MeshClient::from_config(&config).map(|_| ()))
            .expect_err("refused");
        (
            error.is_config() || error.is_builder(),
            error.field().map(str::to_owned),
            error,
        )
    };
    let service = r#"[services.orders]
        endpoints = [{ addr = "127.0.0.1:1" }]"#;
    for (toml, field) in [
        (
            format!("[client.tls]\nroots = \"/nonexistent/ca.pem\"\n{service}"),
            "client.tls.roots",
        ),
        (
            format!("[client.tls]\ncert = \"/x.crt\"\n{service}"),
            "client.tls.cert",
        ),
        (
            format!("{service}\n[services.orders.tls]\nspiffe_id = \"orders\""),
            "services.orders.tls.identity",
        ),
        (
            format!("{service}\nhttp_version = \"http3\""),
            "services.orders.http_version",
        ),
        (
            format!("[client.tls]\nspiffe_id = \"{ORDERS_ID}\"\n{service}"),
            "client.tls.identity",
        ),
    ] {
        let (typed, found, error) = bad(&toml);
        assert!(typed, "{error}");
        assert_eq!(found.as_deref(), Some(field), "{error}");
    }
}

#[tokio::test]
async fn a_refused_handshake_is_retried_elsewhere_and_counts_against_its_endpoint() {
    let ca = TestCa::new("mesh CA");
    let good = ca.issue(&[Name::Dns("orders")]);
    let wrong = ca.issue(&[Name::Dns("payments")]);
    let healthy = TlsServer::start([127, 0, 0, 1], "healthy", ServerTls::new(&good)).await;
    let impostor = TlsServer::start([127, 0, 0, 2], "impostor", ServerTls::new(&wrong)).await;
    let mesh = mesh(
        &[&healthy, &impostor],
        TlsSettings::new().roots_pem(ca.pem()),
    );
    for _ in 0..20 {
        // The default policy retries a failed connect on another endpoint.
        let response = mesh.get("http://orders/").send().await.expect("retried");
        assert_eq!(header(&response, "x-server"), "healthy");
    }
    assert!(impostor.handshake_failures() >= 1);
    let status = mesh.endpoint_status("orders").expect("a pool");
    let of = |addr: std::net::SocketAddr| {
        status
            .iter()
            .find(|s| s.addr == proxyless::EndpointAddr::Ip(addr))
            .expect("listed")
    };
    let (healthy, impostor) = (of(healthy.addr), of(impostor.addr));
    assert!(
        impostor.success_rate < healthy.success_rate,
        "{impostor:?} / {healthy:?}"
    );
    assert!(
        impostor.ejected || impostor.effective_weight < healthy.effective_weight,
        "{impostor:?}"
    );
}

#[tokio::test]
async fn a_rotated_trust_bundle_is_read_again() {
    let old_ca = TestCa::new("bundle one");
    let new_ca = TestCa::new("bundle two");
    let old_cert = old_ca.issue(&[Name::Dns("orders")]);
    let server = TlsServer::start([127, 0, 0, 1], "a", ServerTls::new(&old_cert)).await;
    let dir = tempdir();
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, old_ca.pem()).expect("write");
    let mesh = mesh_with(
        &[&server],
        TlsSettings::new().roots_pem_file(&bundle),
        ServiceOptions::new().http_version(HttpVersion::Http1),
    );
    let call = || async {
        mesh.get("http://orders/")
            .header("connection", "close")
            .send()
            .await
    };
    call().await.expect("the first bundle trusts the server");

    // A bundle that cannot be used keeps the last good roots.
    std::fs::write(&bundle, "not PEM").expect("write");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    call()
        .await
        .expect("the last good bundle still trusts the server");

    // The new bundle no longer holds the server's CA: its next connection is refused.
    std::fs::write(&bundle, new_ca.pem()).expect("write");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let error = call()
        .await
        .expect_err("the new bundle does not trust the server");
    assert!(error.is_tls(), "{error:?}");

    // Both CAs, as a bundle is during a rotation: trusted again.
    std::fs::write(&bundle, format!("{}{}", old_ca.pem(), new_ca.pem())).expect("write");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    call().await.expect("trusted again");
}

#[tokio::test]
async fn chains_through_an_intermediate_verify_on_both_sides() {
    // As a real mesh CA issues: a root kept offline, an intermediate signing workloads, and
    // every presented chain leaf first, then the intermediate.
    let root = TestCa::new("root");
    let issuing = root.intermediate("issuing");
    let cert = issuing.issue(&[Name::Uri(ORDERS_ID)]);
    let client = issuing.issue(&[Name::Uri("spiffe://example.org/ns/prod/sa/checkout")]);
    let server = TlsServer::start(
        [127, 0, 0, 1],
        "a",
        ServerTls::new(&cert).requiring_client_cert(&root),
    )
    .await;
    let mesh = mesh(
        &[&server],
        TlsSettings::new()
            .roots_pem(root.pem())
            .client_cert_pem(client.cert_pem.clone(), Secret::new(client.key_pem.clone()))
            .identity(ServerIdentity::SpiffeId(ORDERS_ID.into())),
    );
    let response = mesh.get("http://orders/").send().await.expect("verified");
    assert_eq!(
        header(&response, "x-client"),
        "spiffe://example.org/ns/prod/sa/checkout"
    );
}

#[tokio::test]
async fn one_bad_certificate_in_a_bundle_leaves_the_others_trusted() {
    let ca = TestCa::new("mesh CA");
    let cert = ca.issue(&[Name::Dns("orders")]);
    let server = TlsServer::start([127, 0, 0, 1], "a", ServerTls::new(&cert)).await;
    // Valid base64 that is no certificate, then the real CA.
    let bundle = format!(
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n{}",
        ca.pem()
    );
    let mesh = mesh(&[&server], TlsSettings::new().roots_pem(bundle));
    mesh.get("http://orders/")
        .send()
        .await
        .expect("the good root is used");
}

#[tokio::test]
async fn a_server_that_never_finishes_the_handshake_is_a_timeout_not_a_hang() {
    // Accepts connections and never writes: the handshake waits for its ServerHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let ca = TestCa::new("mesh CA");
    let discovery = StaticDiscovery::new()
        .with("orders", [Endpoint::new(addr)])
        .expect("endpoints");
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .traffic(proxyless::client::TrafficPolicy::default().timeout(Duration::from_millis(300)))
        .service(
            "orders",
            ServiceOptions::new().tls(TlsSettings::new().roots_pem(ca.pem())),
        )
        .build()
        .expect("a mesh");
    let started = std::time::Instant::now();
    let error = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("never answered");
    assert!(error.is_timeout(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    held.abort();
}
