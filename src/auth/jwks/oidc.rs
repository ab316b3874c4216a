//! OpenID Connect discovery (OpenID Connect Discovery 1.0): the key set's URL from a
//! provider's document, and the redirects a key fetch may follow.

/// Follows up to five redirects, none to a plain URL once the chain has been on `https`: a
/// key set (or the document naming it) asked for over TLS is never swapped for one fetched
/// in the clear.
pub(super) fn no_downgrade() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let secure = attempt.previous().iter().any(|u| u.scheme() == "https");
        if secure && attempt.url().scheme() != "https" {
            attempt.error("a redirect from https to plain http")
        } else if attempt.previous().len() > 5 {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

/// The key set's URL from an OpenID provider's discovery document, whose `issuer` must be
/// `issuer` exactly (OpenID Connect Discovery 1.0 §4.3). The set of an `https` issuer must
/// be served over `https` too.
pub(crate) fn jwks_uri(body: &[u8], issuer: &str) -> Result<reqwest::Url, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        issuer: String,
        jwks_uri: String,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|e| format!("malformed discovery document: {e}"))?;
    // What the provider sent is shown escaped and cut short.
    let shown = |text: &str| format!("{:?}", text.chars().take(200).collect::<String>());
    if document.issuer != issuer {
        return Err(format!(
            "the discovery document names issuer {}, not the configured {issuer:?}",
            shown(&document.issuer)
        ));
    }
    let url = reqwest::Url::parse(&document.jwks_uri)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            format!(
                "the discovery document's jwks_uri {} is not an http(s) URL",
                shown(&document.jwks_uri)
            )
        })?;
    let https_issuer = reqwest::Url::parse(issuer).is_ok_and(|u| u.scheme() == "https");
    if https_issuer && url.scheme() != "https" {
        return Err(format!(
            "the discovery document's jwks_uri {} is not https, as its issuer is",
            shown(&document.jwks_uri)
        ));
    }
    Ok(url)
}
