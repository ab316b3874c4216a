use super::jwks_uri;

fn document(issuer: &str, jwks: &str) -> Vec<u8> {
    serde_json::json!({"issuer": issuer, "jwks_uri": jwks, "other": [1, 2]})
        .to_string()
        .into_bytes()
}

#[test]
fn the_document_gives_the_key_set_url_of_its_exact_issuer() {
    let issuer = "https://idp.test/realms/a";
    let url = jwks_uri(&document(issuer, "https://keys.test/certs"), issuer).expect("valid");
    assert_eq!(url.as_str(), "https://keys.test/certs");
    for (named, jwks) in [
        ("https://idp.test/realms/a/", "https://keys.test/certs"),
        ("https://IDP.test/realms/a", "https://keys.test/certs"),
        ("https://idp.test/realms/b", "https://keys.test/certs"),
        // An https issuer's keys are never taken over plain http.
        (issuer, "http://keys.test/certs"),
        (issuer, "file:///etc/keys"),
        (issuer, "not a url"),
    ] {
        assert!(
            jwks_uri(&document(named, jwks), issuer).is_err(),
            "{named} {jwks}"
        );
    }
    assert!(jwks_uri(b"{\"issuer\": \"https://idp.test/realms/a\"}", issuer).is_err());
    assert!(jwks_uri(b"[]", issuer).is_err());
    // What the provider sent is shown escaped and cut short.
    let long = format!("https://idp.test/{}\u{1b}[31m", "x".repeat(10_000));
    let error = jwks_uri(&document(&long, "https://k.test/"), issuer).expect_err("refused");
    assert!(error.len() < 400 && !error.contains('\u{1b}'), "{error}");
}
