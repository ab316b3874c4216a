//! [`Secret`]: a string that never shows itself.

use std::fmt;

/// A credential (an ACL token, a client secret, a signing key) that is never printed: its
/// `Debug` shows `Secret("<redacted>")` and it has no `Display`. Read it with
/// [`Secret::expose`] at the one place it is sent.
///
/// ```
/// let token = proxyless::Secret::new("b1gs3cr3t");
/// assert_eq!(format!("{token:?}"), r#"Secret("<redacted>")"#);
/// assert_eq!(token.expose(), "b1gs3cr3t");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into().into_boxed_str())
    }

    /// The value, for sending it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"<redacted>\")")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::from)
    }
}

/// A URL as it may be shown: with any user name and password in it (`http://user:pass@host`,
/// as Eureka and Consul addresses are sometimes written) replaced by `***`. Text that is not
/// a URL keeps only what follows its last `@`.
pub(crate) fn redact_url(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('@') {
        return text.into();
    }
    match url::Url::parse(text) {
        Ok(mut url)
            if text.contains("://") && (!url.username().is_empty() || url.password().is_some()) =>
        {
            let _ = url.set_password(None);
            let _ = url.set_username("***");
            url.to_string().into()
        }
        // An `@` in a URL's path or query is no credential.
        Ok(_) if text.contains("://") => text.into(),
        _ => {
            let host = text.rsplit('@').next().unwrap_or_default();
            format!("***@{host}").into()
        }
    }
}

/// A URL (or address) that may carry credentials, kept as written and shown redacted (see
/// [`redact_url`]).
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(not(any(feature = "consul", feature = "eureka")), allow(dead_code))]
pub(crate) struct UrlText(pub(crate) String);

impl fmt::Debug for UrlText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_in_urls_are_never_shown() {
        for (url, shown) in [
            (
                "http://user:pa55@eureka:8761/eureka",
                "http://***@eureka:8761/eureka",
            ),
            ("https://token@consul:8501", "https://***@consul:8501/"),
            ("http://consul:8500", "http://consul:8500"),
            ("user:pa55@consul:8500", "***@consul:8500"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }
}
