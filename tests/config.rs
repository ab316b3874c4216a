//! Configuration: parsing, validation that names the field, and parity with the builder.

mod support;

use std::time::Duration;

use proxyless::{
    Balancer, MeshClient, MeshClientBuilder, MeshConfig, ServiceOptions, StaticDiscovery,
};
use support::{server_of, servers};

fn field_of(result: Result<MeshConfig, proxyless::Error>) -> String {
    let err = result.expect_err("invalid config");
    assert!(err.is_config(), "{err:?}");
    err.field().expect("names a field").to_owned()
}

#[test]
fn toml_and_json_describe_the_same_mesh() {
    let toml = r#"
        [client]
        balancer = "round_robin"
        first_snapshot_timeout = "250ms"
        preserve_host = true

        [services.orders]
        balancer = "weighted_round_robin"
        endpoints = [
          { addr = "10.0.0.7:8080", weight = 1 },
          { addr = "orders-3.internal:8443", weight = 3, scheme = "https", priority = 1,
            health = "warning", zone = "a", tags = ["v2"], meta = { version = "2" } },
        ]
    "#;
    let json = r#"{
        "client": {"balancer": "round_robin", "first_snapshot_timeout": "250ms", "preserve_host": true},
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
    assert_eq!(a.client.balancer, Some(Balancer::RoundRobin));
    assert_eq!(a.services["orders"].endpoints[1].weight, 3);
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
