//! Configuration: parsing, validation that names the field, and parity with the builder.

use std::time::Duration;

use crate::support::{server_of, servers};
use proxyless::{
    Balancer, MeshClient, MeshClientBuilder, MeshConfig, ServiceOptions, StaticDiscovery,
};

fn field_of(result: Result<MeshConfig, proxyless::Error>) -> String {
    let err = result.expect_err("invalid config");
    assert!(err.is_config(), "{err:?}");
    err.field().expect("names a field").to_owned()
}

#[test]
fn toml_and_json_describe_the_same_mesh() {
    let toml = r#"
        [client]
        balancer = "least_request"
        first_snapshot_timeout = "250ms"
        preserve_host = true
        endpoint_labels = 12

        [services.orders]
        balancer = "weighted_round_robin"
        endpoints = [
          { addr = "10.0.0.7:8080", weight = 1 },
          { addr = "orders-3.internal:8443", weight = 3, scheme = "https", priority = 1,
            health = "warning", zone = "a", tags = ["v2"], meta = { version = "2" } },
        ]
    "#;
    let json = r#"{
        "client": {"balancer": "least_request", "first_snapshot_timeout": "250ms", "preserve_host": true, "endpoint_labels": 12},
        "services": {"orders": {"balancer": "weighted_round_robin", "endpoints": [
            {"addr": "10.0.0.7:8080", "weight": 1},
            {"addr": "orders-3.internal:8443", "weight": 3, "scheme": "https", "priority": 1,
             "health": "warning", "zone": "a", "tags": ["v2"], "meta": {"version": "2"}}
        ]}}
    }"#;
    let a = MeshConfig::from_toml_str(toml).expect("valid toml");
    let b = MeshConfig::from_json_str(json).expect("valid json");
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(
        a.client.first_snapshot_timeout,
        Some(Duration::from_millis(250))
    );
    assert_eq!(a.client.balancer, Some(Balancer::LeastRequest));
    assert_eq!(a.client.endpoint_labels, Some(12));
    assert_eq!(
        a.services["orders"].endpoints.as_ref().map(|e| e[1].weight),
        Some(3)
    );
}

#[test]
fn invalid_configs_name_the_field() {
    let endpoint_toml = |endpoint: &str| {
        format!("[services.orders]\nendpoints = [ {{ addr = \"10.0.0.1:80\" }}, {endpoint} ]")
    };
    let cases = [
        (
            endpoint_toml("{ addr = \"10.0.0.2:80\", weight = -1 }"),
            "services.orders.endpoints[1].weight",
        ),
        (
            endpoint_toml("{ addr = \"10.0.0.2:80\", weight = 4294967296 }"),
            "services.orders.endpoints[1].weight",
        ),
        (
            endpoint_toml("{ addr = \"10.0.0.2:80\", weight = \"heavy\" }"),
            "services.orders.endpoints[1].weight",
        ),
        (
            endpoint_toml("{ addr = \"10.0.0.2:80\", weight = 1.5 }"),
            "services.orders.endpoints[1].weight",
        ),
        (
            endpoint_toml("{ addr = \"10.0.0.2\" }"),
            "services.orders.endpoints[1].addr",
        ),
        (
            endpoint_toml("{ addr = \"10.0.0.2:0\" }"),
            "services.orders.endpoints[1].addr",
        ),
        (
            endpoint_toml("{ addr = \"10.0.0.1:80\" }"),
            "services.orders.endpoints[1].addr",
        ),
        (
            endpoint_toml("{ addr = \"10.0.0.2:80\", priority = 70000 }"),
            "services.orders.endpoints[1].priority",
        ),
        (
            endpoint_toml("{ addr = \"10.0.0.2:80\", health = \"sick\" }"),
            "services.orders.endpoints[1].health",
        ),
        (
            endpoint_toml("{ addr = \"10.0.0.2:80\", scheme = \"ftp\" }"),
            "services.orders.endpoints[1].scheme",
        ),
        (
            endpoint_toml("{ addr = \"10.0.0.2:80\", wieght = 2 }"),
            "services.orders.endpoints[1].wieght",
        ),
        (
            "[services.orders]\nendpoints = []".into(),
            "services.orders.endpoints",
        ),
        (
            "[services.orders]\nendpoints = [ { addr = \"10.0.0.1:80\", weight = 0 } ]".into(),
            "services.orders.endpoints",
        ),
        (
            "[services.orders]\nbalancer = \"fastest\"\nendpoints = []".into(),
            "services.orders.balancer",
        ),
        ("[services.orders]\n".into(), "services.orders"),
        (
            "[services.\"Bad Name\"]\nendpoints = [ { addr = \"10.0.0.1:80\" } ]".into(),
            "services.Bad Name",
        ),
        (
            "[client]\nfirst_snapshot_timeout = \"5\"".into(),
            "client.first_snapshot_timeout",
        ),
        (
            "[client]\nfirst_snapshot_timeout = \"0s\"".into(),
            "client.first_snapshot_timeout",
        ),
        ("[client]\nretries = 3".into(), "client.retries"),
        ("[clinet]\n".into(), "clinet"),
        (
            "[services.orders]\ndiscovery = \"consul\"".into(),
            "services.orders.discovery",
        ),
        (
            "[client]\ndiscovery = \"nope\"".into(),
            "client.discovery",
        ),
        (
            "[discovery.c]\nkind = \"consul\"\n[services.orders]\ndiscovery = \"c\"\nendpoints = [ { addr = \"10.0.0.1:80\" } ]".into(),
            "services.orders",
        ),
        ("[discovery.c]\nkind = \"zookeeper\"".into(), "discovery.c.kind"),
        ("[discovery.c]\nkind = \"consul\"\nconsistency = \"strong\"".into(), "discovery.c.consistency"),
        ("[discovery.c]\nkind = \"consul\"\nwait = \"0s\"".into(), "discovery.c.wait"),
        ("[discovery.c]\nkind = \"consul\"\nadress = \"x\"".into(), "discovery.c.adress"),
        ("[discovery.d]\nkind = \"dns_a\"\nport = 0".into(), "discovery.d.port"),
        ("[discovery.d]\nkind = \"dns_srv\"".into(), "discovery.d.domain"),
        ("[discovery.d]\nkind = \"dns_srv\"\ndomain = \"x\"\nurl = \"http://e\"".into(), "discovery.d.url"),
        ("[discovery.d]\nkind = \"dns_srv\"\ndomain = \"x\"\nnameservers = [\"localhost\"]".into(), "discovery.d.nameservers[0]"),
        ("[discovery.e]\nkind = \"eureka\"".into(), "discovery.e.url"),
        ("[discovery.e]\nkind = \"eureka\"\nurl = \"http://e/eureka\"\npoll_interval = \"0s\"".into(), "discovery.e.poll_interval"),
        ("[discovery.d]\nkind = \"dns_srv\"\ndomain = \"x\"\nmin_ttl = \"10m\"\nmax_ttl = \"1m\"".into(), "discovery.d.min_ttl"),
        ("[discovery.d]\nkind = \"dns_a\"\nport = 80\ntags = [\"a\"]".into(), "discovery.d.tags"),
        ("[discovery.d]\nkind = \"dns_srv\"\ndomain = \"x\"\nmax_ttl = \"0s\"".into(), "discovery.d.max_ttl"),
        // Below the default minimum of 5 s: the setting written is named.
        ("[discovery.d]\nkind = \"dns_srv\"\ndomain = \"x\"\nmax_ttl = \"2s\"".into(), "discovery.d.max_ttl"),
        ("[client]\nmass_removal_share = 1.5".into(), "client.mass_removal_share"),
        ("[client]\nmax_staleness = \"0s\"".into(), "client.max_staleness"),
        ("[client]\nendpoint_labels = 0".into(), "client.endpoint_labels"),
        ("[client]\nbalancer = \"least_loaded\"".into(), "client.balancer"),
        ("[client.traffic]\ntimeout = \"15\"".into(), "client.traffic.timeout"),
        ("[client.traffic.retry]\nmax_attempts = 0".into(), "client.traffic.retry.max_attempts"),
        ("[client.traffic.retry]\nbudget_ratio = 0.0".into(), "client.traffic.retry.budget_ratio"),
        ("[client.traffic.retry]\nmax_atempts = 2".into(), "client.traffic.retry.max_atempts"),
        ("[client.traffic.breaker]\nfailure_rate_threshold = 150".into(), "client.traffic.breaker.failure_rate_threshold"),
        ("[client.traffic.breaker]\nwindow_calls = 10\nwindow_time = \"10s\"".into(), "client.traffic.breaker.window_time"),
        ("[client.traffic.rate_limit]\ncalls = 0".into(), "client.traffic.rate_limit.calls"),
        ("[client.traffic]\nconcurrency_limit = 0".into(), "client.traffic.concurrency_limit"),
        ("[client.traffic.hedge]\npercentile = 1.5".into(), "client.traffic.hedge.percentile"),
        ("[client.traffic.hedge]\ndelay = \"5ms\"\npercentile = 0.9".into(), "client.traffic.hedge.delay"),
        ("[client.traffic.hedge]\nbudget_ratio = 0.0".into(), "client.traffic.hedge.budget_ratio"),
        ("[client.traffic.hedge]\ndelai = \"5ms\"".into(), "client.traffic.hedge.delai"),
        ("[client.outlier_detection]\nmax_ejected_share = 2.0".into(), "client.outlier_detection.max_ejected_share"),
        ("[client.health_scoring]\nsmoothing = 0.0".into(), "client.health_scoring.smoothing"),
        (
            "[services.orders]\nendpoints = [ { addr = \"10.0.0.1:80\" } ]\n[services.orders.traffic.retry]\nmax_attempts = 0".into(),
            "services.orders.traffic.retry.max_attempts",
        ),
    ];
    for (toml, field) in cases {
        assert_eq!(field_of(MeshConfig::from_toml_str(&toml)), field, "{toml}");
    }
    assert_eq!(
        field_of(MeshConfig::from_json_str(
            r#"{"services": {"orders": {"endpoints": [{"addr": "10.0.0.1:80", "weight": -3}]}}}"#
        )),
        "services.orders.endpoints[0].weight"
    );
    assert_eq!(field_of(MeshConfig::from_json_str("{")), "<root>");
    assert_eq!(field_of(MeshConfig::from_json_str("{} {}")), "<root>");
}

#[test]
fn builder_errors_name_the_setting() {
    let err = MeshClient::builder()
        .first_snapshot_timeout(Duration::ZERO)
        .build()
        .expect_err("zero timeout");
    assert!(err.is_builder());
    assert_eq!(err.field(), Some("first_snapshot_timeout"));

    let err = MeshClient::builder()
        .service("bad name!", ServiceOptions::new())
        .build()
        .expect_err("bad name");
    assert!(err.is_builder());
    assert_eq!(err.field(), Some("service name \"bad name!\""));

    let err = MeshClient::builder()
        .service("orders", ServiceOptions::new())
        .build()
        .expect_err("no backend");
    assert_eq!(err.field(), Some("services.orders"));

    let err = MeshClient::builder()
        .discovery(StaticDiscovery::new())
        .service("orders", ServiceOptions::new())
        .service("ORDERS", ServiceOptions::new())
        .build()
        .expect_err("twice");
    assert_eq!(err.field(), Some("services.orders"));
    assert!(err.to_string().contains("configured twice"), "{err}");

    let err = MeshClient::builder()
        .endpoint_labels(0)
        .build()
        .expect_err("a cap of 0");
    assert_eq!(err.field(), Some("endpoint_labels"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_and_the_config_make_the_same_client() {
    let servers = servers(3).await;
    let config = format!(
        "[services.orders]\nendpoints = [ {} ]\n[services.billing]\nbalancer = \"round_robin\"\nendpoints = [ {{ addr = \"{}\" }}, {{ addr = \"{}\" }} ]",
        servers
            .iter()
            .zip([1, 2, 7])
            .map(|(s, w)| format!("{{ addr = \"{}\", weight = {w} }}", s.addr))
            .collect::<Vec<_>>()
            .join(", "),
        servers[0].addr,
        servers[1].addr,
    );
    let config = MeshConfig::from_toml_str(&config).expect("valid");
    let from_config = MeshClientBuilder::from_config(&config)
        .expect("valid")
        .rng_seed(99)
        .build()
        .expect("valid client");

    let listed = StaticDiscovery::new()
        .with(
            "orders",
            servers
                .iter()
                .zip([1, 2, 7])
                .map(|(s, w)| s.endpoint().with_weight(w)),
        )
        .expect("valid")
        .with("billing", [servers[0].endpoint(), servers[1].endpoint()])
        .expect("valid");
    let from_code = MeshClient::builder()
        .discovery(listed)
        .service(
            "billing",
            ServiceOptions::new().balancer(Balancer::RoundRobin),
        )
        .rng_seed(99)
        .build()
        .expect("valid client");

    for service in ["orders", "billing"] {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..40 {
            let url = format!("http://{service}/");
            a.push(server_of(&from_config.get(&url).send().await.expect("ok")));
            b.push(server_of(&from_code.get(&url).send().await.expect("ok")));
        }
        assert_eq!(a, b, "{service}: the same seed gives the same picks");
        assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 1);
    }
}

#[test]
fn backends_are_configured_by_kind_and_secrets_stay_hidden() {
    let config = MeshConfig::from_toml_str(
        r#"
        [client]
        discovery = "consul"
        max_staleness = "10m"
        mass_removal_share = 0.25

        [discovery.consul]
        kind = "consul"
        address = "http://127.0.0.1:8500"
        token = "acl-s3cret"
        tags = ["api"]
        consistency = "stale"
        include_warning = true
        wait = "1m"

        [discovery.dns]
        kind = "dns_srv"
        domain = "service.consul"
        nameservers = ["127.0.0.1:8600"]
        min_ttl = "1s"

        [discovery.legacy]
        kind = "dns_a"
        port = 8080
        domain = "internal"

        [discovery.eureka]
        kind = "eureka"
        url = "http://127.0.0.1:8761/eureka"
        poll_interval = "10s"

        [services.billing]
        discovery = "dns"

        [services.payments]
        balancer = "round_robin"
        "#,
    )
    .expect("valid");
    assert_eq!(config.discovery.len(), 4);
    assert!(matches!(
        &config.discovery["legacy"],
        proxyless::config::BackendConfig::DnsA(a) if a.port == 8080
    ));
    assert!(!format!("{config:?}").contains("s3cret"));
    let mesh = MeshClient::from_config(&config).expect("builds every backend");
    assert!(!format!("{mesh:?}").contains("s3cret"));

    let err = MeshConfig::from_toml_str(
        "[discovery.c]\nkind = \"eureka\"\nurl = \"ftp://x\"\n[client]\ndiscovery = \"c\"",
    )
    .and_then(|c| MeshClient::from_config(&c))
    .expect_err("bad url");
    // Checked once, by the backend's builder, and named as the section's setting.
    assert_eq!(err.field(), Some("discovery.c.url"));
    assert!(err.to_string().contains("must be http(s)"), "{err}");
}

#[cfg(feature = "consul")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_consul_backend_resolves_through_the_api() {
    let servers = servers(1).await;
    let fake = crate::support::consul::FakeConsul::start().await;
    fake.set(
        "my-service",
        vec![crate::support::consul::instance(
            "a",
            "127.0.0.1",
            "",
            servers[0].addr.port(),
            None,
            "passing",
            &["api"],
        )],
    );
    let config = MeshConfig::from_toml_str(&format!(
        "[discovery.consul]\nkind = \"consul\"\naddress = \"{}\"\ntags = [\"api\"]\n[services.my-service]\ndiscovery = \"consul\"\nbalancer = \"round_robin\"",
        fake.url()
    ))
    .expect("valid");
    let mesh = MeshClient::from_config(&config).expect("valid client");
    let response = mesh.get("http://my-service/").send().await.expect("ok");
    assert_eq!(server_of(&response), "s0");
    assert_eq!(fake.seen()[0].param("tag"), Some("api"));
}

#[test]
fn the_configs_shown_in_the_docs_parse() {
    let readme = include_str!("../../README.md");
    let module_docs: String = include_str!("../../src/config/mod.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//! ").or(line.strip_prefix("//!")))
        .collect::<Vec<_>>()
        .join("\n");
    let mut blocks = 0;
    for text in [readme, module_docs.as_str()] {
        for block in text.split("```toml\n").skip(1) {
            let toml = block.split("```").next().expect("closed block");
            MeshConfig::from_toml_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
            blocks += 1;
        }
    }
    assert!(blocks >= 2, "found {blocks} blocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_policies_come_from_config_per_service() {
    let servers = servers(1).await;
    let config = MeshConfig::from_toml_str(&format!(
        r#"
        [client.traffic]
        timeout = "2s"
        concurrency_limit = 64
        [client.traffic.retry]
        max_attempts = 3
        per_attempt_timeout = "500ms"
        [client.traffic.breaker]
        window_calls = 20
        minimum_calls = 10

        [client.outlier_detection]
        consecutive_failures = 5
        [client.health_scoring]
        theta = -4.0

        [services.orders]
        endpoints = [ {{ addr = "{addr}" }} ]
        [services.orders.traffic.rate_limit]
        calls = 1
        per = "1m"

        [services.billing]
        endpoints = [ {{ addr = "{addr}" }} ]
        "#,
        addr = servers[0].addr
    ))
    .expect("valid");
    let mesh = MeshClient::from_config(&config).expect("valid client");
    assert!(mesh.get("http://orders/").send().await.is_ok());
    let err = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("limited");
    assert!(err.is_rate_limited(), "{err:?}");
    for _ in 0..5 {
        assert!(mesh.get("http://billing/").send().await.is_ok());
    }
}

#[cfg(all(feature = "consul", feature = "eureka", feature = "toml"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_written_into_registry_urls_are_never_shown() {
    let toml = r#"
        [client]
        discovery = "eureka"

        [discovery.eureka]
        kind = "eureka"
        url = "http://eureka-user:s3cr3t-eureka@127.0.0.1:1/eureka"

        [discovery.consul]
        kind = "consul"
        address = "http://consul-user:s3cr3t-consul@127.0.0.1:1"
    "#;
    let config = MeshConfig::from_toml_str(toml).expect("valid");
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("127.0.0.1:1"), "{shown}");

    let eureka = proxyless::discovery::EurekaDiscovery::builder(
        "http://eureka-user:s3cr3t-eureka@127.0.0.1:1/eureka",
    );
    assert!(!format!("{eureka:?}").contains("s3cr3t"));
    let eureka = eureka.build().expect("valid");
    assert!(!format!("{eureka:?}").contains("s3cr3t"));
    let consul = proxyless::discovery::ConsulDiscovery::builder()
        .address("http://consul-user:s3cr3t-consul@127.0.0.1:1");
    assert!(!format!("{consul:?}").contains("s3cr3t"));
    assert!(!format!("{:?}", consul.build().expect("valid")).contains("s3cr3t"));

    // Nothing listens on port 1: the failure says so, without the credentials.
    let mesh = MeshClient::builder()
        .discovery(eureka)
        .build()
        .expect("valid client");
    let err = mesh.get("http://orders/").send().await.expect_err("down");
    let mut chain = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    let status = mesh.discovery_status("orders").expect("watched");
    chain.push_str(&format!(" {status:?}"));
    assert!(!chain.contains("s3cr3t"), "{chain}");
}

#[cfg(feature = "toml")]
#[test]
fn absurd_durations_and_windows_are_errors_that_name_the_field() {
    for (toml, field) in [
        (
            "[client.traffic]\ntimeout = \"9000h\"",
            "client.traffic.timeout",
        ),
        (
            "[client]\nfirst_snapshot_timeout = \"8761h\"",
            "client.first_snapshot_timeout",
        ),
        (
            "[client.traffic.breaker]\nwindow_calls = 4000000000",
            "client.traffic.breaker.sliding_window",
        ),
        (
            "[client.traffic.breaker]\nwindow_time = \"2000h\"",
            "client.traffic.breaker.sliding_window",
        ),
        (
            "[client.traffic.retry]\nbackoff_cap = \"2000000h\"",
            "client.traffic.retry.backoff_cap",
        ),
    ] {
        let got = field_of(
            MeshConfig::from_toml_str(toml).and_then(|config| config.validate().map(|()| config)),
        );
        assert_eq!(got, field, "{toml}");
    }

    // The same in code: an error at build, never a panic when the duration is first used.
    let err = proxyless::client::TrafficPolicy::default()
        .timeout(Duration::MAX)
        .validate()
        .expect_err("a timeout past the clock");
    assert_eq!(err.field(), Some("timeout"));
    let err = proxyless::Registry::builder()
        .first_snapshot_timeout(Duration::MAX)
        .build()
        .expect_err("past the clock");
    assert_eq!(err.field(), Some("first_snapshot_timeout"));
    let err = proxyless::balance::health::OutlierDetection::default()
        .ejection_time(Duration::from_secs(1), Duration::MAX)
        .validate()
        .expect_err("past the clock");
    assert_eq!(err.field(), Some("outlier_detection.ejection_time"));
    let err = proxyless::breaker::BreakerConfig::default()
        .sliding_window(proxyless::breaker::SlidingWindow::Time(
            Duration::from_secs(10 * 365 * 24 * 3600),
        ))
        .validate()
        .expect_err("a window of years");
    assert_eq!(err.field(), Some("breaker.sliding_window"));
}

#[test]
fn sections_are_variants_of_their_kind_and_read_inside_other_configs() {
    use proxyless::config::{AuthConfig, BackendConfig};
    let config = MeshConfig::from_toml_str(
        "[discovery.d]\nkind = \"dns_srv\"\ndomain = \"service.consul\"\n\
         [services.x]\nendpoints = [ { addr = \"10.0.0.1:80\" } ]\n\
         [services.x.traffic.auth]\nkind = \"static\"\ntoken = \"t0ken\"",
    )
    .expect("valid");
    assert!(
        matches!(&config.discovery["d"], BackendConfig::DnsSrv(srv) if srv.domain == "service.consul")
    );
    let auth = config.services["x"]
        .traffic
        .as_ref()
        .and_then(|t| t.auth.as_ref());
    match auth {
        Some(AuthConfig::Static(s)) => assert_eq!(s.token.expose(), "t0ken"),
        other => panic!("a static token, not {other:?}"),
    }
    assert!(
        !format!("{config:?}").contains("t0ken"),
        "the token stays hidden"
    );

    // Inside an application's own configuration, a misplaced setting is named in the message.
    #[derive(serde::Deserialize)]
    struct App {
        #[allow(dead_code)]
        mesh: MeshConfig,
    }
    let err = serde_json::from_str::<App>(
        r#"{"mesh": {"discovery": {"d": {"kind": "dns_a", "port": 80, "url": "http://x"}}}}"#,
    )
    .err()
    .expect("a eureka setting in a dns_a backend");
    assert!(
        err.to_string()
            .contains("setting `url`: is not a setting of a dns_a backend"),
        "{err}"
    );
}
