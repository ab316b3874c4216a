use super::response::{DEFAULT_LIFETIME, MAX_LIFETIME};
use super::*;

#[test]
fn expires_in_is_a_number_or_a_numeric_string() {
    let issued = |expires: &str| {
        token_response(
            format!(r#"{{"access_token":"t","token_type":"Bearer"{expires}}}"#).as_bytes(),
        )
    };
    let lifetime = |expires: &str| issued(expires).map(|i| i.lifetime);
    assert_eq!(
        lifetime(r#","expires_in":3600"#),
        Ok(Duration::from_secs(3600))
    );
    assert_eq!(
        lifetime(r#","expires_in":"3600""#),
        Ok(Duration::from_secs(3600))
    );
    assert_eq!(
        lifetime(r#","expires_in":" 90 ""#),
        Ok(Duration::from_secs(90))
    );
    assert_eq!(
        lifetime(r#","expires_in":59.5"#),
        Ok(Duration::from_secs_f64(59.5))
    );
    assert_eq!(lifetime(""), Ok(DEFAULT_LIFETIME));
    assert_eq!(lifetime(r#","expires_in":null"#), Ok(DEFAULT_LIFETIME));
    assert_eq!(lifetime(r#","expires_in":0"#), Ok(Duration::from_secs(1)));
    // Huge values are capped, never an overflow.
    assert_eq!(lifetime(r#","expires_in":1e300"#), Ok(MAX_LIFETIME));
    assert_eq!(
        lifetime(r#","expires_in":18446744073709551615"#),
        Ok(MAX_LIFETIME)
    );
    for bad in [
        r#","expires_in":"soon""#,
        r#","expires_in":-5"#,
        r#","expires_in":true"#,
        r#","expires_in":[1]"#,
        r#","expires_in":"NaN""#,
        r#","expires_in":"inf""#,
    ] {
        assert!(issued(bad).is_err(), "{bad}");
    }
    assert!(token_response(br#"{"access_token":"t","token_type":"mac"}"#).is_err());
    assert!(token_response(br#"{"access_token":"","token_type":"bearer"}"#).is_err());
    assert!(token_response(br#"{"token_type":"bearer"}"#).is_err());
}

#[test]
fn error_codes_are_printable_and_short() {
    assert_eq!(
        error_code(br#"{"error":"invalid_client"}"#),
        "invalid_client"
    );
    assert_eq!(error_code(b"<html>"), "unknown");
    assert_eq!(error_code(br#"{"error":""}"#), "unknown");
    let hostile = format!(r#"{{"error":"a\u001b[31m {}"}}"#, "x".repeat(500));
    let code = error_code(hostile.as_bytes());
    assert!(
        code.len() <= 64 && code.chars().all(|c| c.is_ascii_graphic()),
        "{code}"
    );
}
