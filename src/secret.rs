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
