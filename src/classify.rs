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

/// `Retry-After` in seconds on a 429 or 503, capped at an hour. (The HTTP-date form is not
/// read: clocks of two hosts are not to be trusted to agree.)
fn retry_after(status: u16, headers: &http::HeaderMap) -> Option<std::time::Duration> {
    if status != 429 && status != 503 {
        return None;
    }
    let seconds: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::Duration::from_secs(seconds.min(3600)))
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
