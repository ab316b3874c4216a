//! What counts as a failure, for the circuit breaker (and, later, retries and ejection).
//!
//! The default, [`HttpClassifier`], follows Envoy's and linkerd's defaults for HTTP:
//!
//! | outcome | examples |
//! |---|---|
//! | [`Outcome::Failure`] | connection refused or reset, timeouts, `502`, `503`, `504` |
//! | [`Outcome::Ignored`] | `429 Too Many Requests`, or a `503` with `Retry-After` (pushback, not a fault), a request that could not be built, a circuit already open |
//! | [`Outcome::Success`] | every other response, `4xx` and `500` included (the server answered) |
//!
//! A classifier of your own is any `Fn(Result<&Res, &Error>) -> Outcome`.

use crate::error::Error;

/// How one call went, for the policies that count outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint did its job.
    Success,
    /// The endpoint failed: it counts against it.
    Failure,
    /// Neither: the call is not counted at all (and a breaker probe's permit is released).
    Ignored,
}

/// Classifies a call's result.
pub trait Classify<Res>: Clone + Send + Sync + 'static {
    /// The outcome of one call.
    fn classify(&self, result: Result<&Res, &Error>) -> Outcome;

    /// How long the endpoint asked not to be called, if it pushed back (a `429` or `503`
    /// with `Retry-After`). None by default.
    fn pushback(&self, _response: &Res) -> Option<std::time::Duration> {
        None
    }

    /// Whether the response is a server error (any `5xx`). Outlier ejection and health scores
    /// count these as failures, as Envoy's `consecutive_5xx` does, even where `classify`
    /// does not (a `500` is not retried, but an endpoint that keeps answering it is sick).
    fn is_server_error(&self, _response: &Res) -> bool {
        false
    }
}

impl<Res, F> Classify<Res> for F
where
    F: Fn(Result<&Res, &Error>) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: Result<&Res, &Error>) -> Outcome {
        self(result)
    }
}

/// The default classification of HTTP calls (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassifier;

impl HttpClassifier {
    /// The outcome of a response with `status`.
    pub fn status(status: u16) -> Outcome {
        match status {
            502..=504 => Outcome::Failure,
            429 => Outcome::Ignored,
            _ => Outcome::Success,
        }
    }

    /// The outcome of a call that produced no response.
    pub fn error(error: &Error) -> Outcome {
        if error.is_transport() || error.is_timeout() {
            Outcome::Failure
        } else {
            Outcome::Ignored
        }
    }
}

/// The longest pause a `Retry-After` asks for that is honoured: Envoy's default maximum
/// ejection time. (With outlier detection on, its `max_ejection` caps it instead.)
pub const MAX_PUSHBACK: std::time::Duration = std::time::Duration::from_secs(300);

/// `Retry-After` on a 429 or 503, in either form RFC 9110 §10.2.3 allows: a number of seconds,
/// or an HTTP-date (read against this host's clock; a date past is a pause of zero). Capped
/// at [`MAX_PUSHBACK`]; a value in neither form is no pushback.
fn retry_after(status: u16, headers: &http::HeaderMap) -> Option<std::time::Duration> {
    if status != 429 && status != 503 {
        return None;
    }
    parse_retry_after(headers.get(http::header::RETRY_AFTER)?.as_bytes())
}

/// A `Retry-After` value's pause, capped at [`MAX_PUSHBACK`]; `None` if it is in neither form.
pub(crate) fn parse_retry_after(value: &[u8]) -> Option<std::time::Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let pause = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a long time".
        std::time::Duration::from_secs(text.parse().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(text).ok()?;
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
    };
    Some(pause.min(MAX_PUSHBACK))
}

impl Classify<reqwest::Response> for HttpClassifier {
    fn classify(&self, result: Result<&reqwest::Response, &Error>) -> Outcome {
        match result {
            // Pushback is the endpoint protecting itself, not a fault.
            Ok(response) if self.pushback(response).is_some() => Outcome::Ignored,
            Ok(response) => HttpClassifier::status(response.status().as_u16()),
            Err(error) => HttpClassifier::error(error),
        }
    }

    fn pushback(&self, response: &reqwest::Response) -> Option<std::time::Duration> {
        retry_after(response.status().as_u16(), response.headers())
    }

    fn is_server_error(&self, response: &reqwest::Response) -> bool {
        response.status().is_server_error()
    }
}

impl<B: 'static> Classify<http::Response<B>> for HttpClassifier {
    fn classify(&self, result: Result<&http::Response<B>, &Error>) -> Outcome {
        match result {
            Ok(response) if self.pushback(response).is_some() => Outcome::Ignored,
            Ok(response) => HttpClassifier::status(response.status().as_u16()),
            Err(error) => HttpClassifier::error(error),
        }
    }

    fn pushback(&self, response: &http::Response<B>) -> Option<std::time::Duration> {
        retry_after(response.status().as_u16(), response.headers())
    }

    fn is_server_error(&self, response: &http::Response<B>) -> bool {
        response.status().is_server_error()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{MAX_PUSHBACK, parse_retry_after};

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date_capped() {
        assert_eq!(parse_retry_after(b"120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(b" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(b"3600"), Some(MAX_PUSHBACK));
        assert_eq!(
            parse_retry_after(b"99999999999999999999999999"),
            Some(MAX_PUSHBACK)
        );
        let in_two_minutes = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let pause = parse_retry_after(in_two_minutes.as_bytes()).expect("a date");
        assert!(
            (Duration::from_secs(115)..=Duration::from_secs(120)).contains(&pause),
            "{pause:?}"
        );
        // RFC 9110's example date, long past: retry now.
        assert_eq!(
            parse_retry_after(b"Fri, 31 Dec 1999 23:59:59 GMT"),
            Some(Duration::ZERO)
        );
        for bad in [
            &b""[..],
            b"-5",
            b"1.5",
            b"soon",
            b"\xff\xfe",
            b"Fri, 31 Dec 1999",
        ] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
    }
}
