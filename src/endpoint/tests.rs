use super::*;

#[test]
fn service_names_follow_dns_rules() {
    for good in [
        "orders",
        "Orders",
        "billing.payments",
        "_api",
        "a-b_c",
        "x1",
        "9lives",
    ] {
        assert!(ServiceName::new(good).is_ok(), "{good} should be valid");
    }
    let long_label = "a".repeat(64);
    let long_name = ["a"; 130].join(".");
    for bad in [
        "",
        "has space",
        "a..b",
        ".a",
        "a.",
        "-a",
        "a-",
        "ördërs",
        "a/b",
        "a:80",
        "127.0.0.1",
        long_label.as_str(),
        long_name.as_str(),
        "a\0b",
    ] {
        let err = ServiceName::new(bad).expect_err(bad);
        assert!(err.is_builder(), "{bad}: {err:?}");
    }
    assert_eq!(
        ServiceName::new("ORDERS").map(|n| n.to_string()).ok(),
        Some("orders".into())
    );
}

#[test]
fn endpoints_serialize_for_reports() {
    let endpoint = Endpoint::new(([10, 0, 0, 7], 8080))
        .with_weight(3)
        .with_tag("api")
        .with_meta("version", "2");
    assert_eq!(
        serde_json::to_string(&endpoint).expect("serializes"),
        r#"{"addr":"10.0.0.7:8080","weight":3,"health":"passing","priority":0,"tags":["api"],"meta":{"version":"2"}}"#
    );
}

#[test]
fn endpoint_addresses_parse() {
    assert_eq!(
        "10.0.0.7:8080".parse::<EndpointAddr>(),
        Ok(EndpointAddr::Ip("10.0.0.7:8080".parse().expect("addr")))
    );
    assert_eq!("[::1]:80".parse::<EndpointAddr>().map(|a| a.port()), Ok(80));
    assert_eq!(
        "Orders-3.Internal:443".parse::<EndpointAddr>(),
        Ok(EndpointAddr::Host("orders-3.internal".into(), 443))
    );
    for bad in [
        "10.0.0.7",
        "10.0.0.7:0",
        "host:0",
        "host:99999",
        "host:x",
        ":80",
        "a b:80",
        "::1:80",
        "[::1]",
    ] {
        assert!(
            bad.parse::<EndpointAddr>().is_err(),
            "{bad} should be rejected"
        );
    }
}
