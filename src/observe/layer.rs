use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{REQUEST_DURATION, StatsCell};
use crate::endpoint::ServiceName;
use crate::error::{Error, Kind};

/// The label values of one histogram series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Series {
    method: &'static str,
    status: u16,
    error: Option<&'static str>,
}

/// Records each call's duration and outcome for one service: the OpenTelemetry histogram
/// through the `metrics` facade, and the service's [`ServiceStats`](super::ServiceStats).
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    service: ServiceName,
    stats: StatsCell,
    /// One handle per label set seen, in the order first seen, scanned in that order: a
    /// service sees a handful. A slot is written once, so a call finds its handle with
    /// plain loads, and takes no reference count (an `ArcSwap` of a list took two locked
    /// instructions and its thread-local bookkeeping).
    handles: [OnceLock<(Series, metrics::Histogram)>; HANDLE_SLOTS],
    /// Held while a slot is filled, so that a label set gets one.
    filling: Mutex<()>,
}

/// Label sets a service keeps handles for. A service seeing more (many methods, many
/// statuses) resolves the handle of each further label set through the recorder on each
/// call, as the `metrics` macros do.
const HANDLE_SLOTS: usize = 16;

impl MetricsLayer {
    /// Records calls to `service`.
    pub fn new(service: ServiceName) -> Self {
        MetricsLayer {
            shared: Arc::new(Shared {
                service,
                stats: StatsCell::new(),
                handles: Default::default(),
                filling: Mutex::new(()),
            }),
        }
    }

    pub(crate) fn stats(&self) -> &StatsCell {
        &self.shared.stats
    }

    pub(crate) fn service(&self) -> &ServiceName {
        &self.shared.service
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`MetricsLayer`] makes.
#[derive(Clone, Debug)]
pub struct Metrics<S> {
    inner: S,
    shared: Arc<Shared>,
}

fn method_label(method: &reqwest::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "_OTHER",
    }
}

/// A short, bounded name for a failure, for `error.type`.
fn error_label(error: &Error) -> &'static str {
    if error.is_connect() {
        return "connect";
    }
    match error.kind() {
        Kind::Timeout => "timeout",
        Kind::CircuitOpen => "circuit_open",
        Kind::RateLimited => "rate_limited",
        Kind::Overloaded => "overloaded",
        Kind::Draining => "draining",
        Kind::NoEndpoints => "no_endpoints",
        Kind::UnknownService => "unknown_service",
        Kind::Discovery => "discovery",
        Kind::Auth => "auth",
        Kind::InvalidUrl | Kind::Request | Kind::Builder | Kind::Config => "request",
        Kind::Transport => "transport",
        Kind::Internal => "internal",
    }
}

impl Shared {
    fn record(&self, series: Series, started: Instant) {
        let now = crate::clock::now();
        let elapsed = now.saturating_duration_since(started);
        if let Some(reason @ ("rate_limited" | "overloaded" | "circuit_open")) = series.error {
            self.count_rejected(reason);
        }
        self.stats.finish(now, elapsed, series.error.is_some());
        for slot in &self.handles {
            match slot.get() {
                Some((kept, handle)) if *kept == series => {
                    handle.record(elapsed.as_secs_f64());
                    return;
                }
                Some(_) => {}
                None => break,
            }
        }
        self.record_first(series, elapsed);
    }

    /// Counts a call a policy refused. Out of line, as [`record_first`](Self::record_first).
    #[inline(never)]
    fn count_rejected(&self, reason: &'static str) {
        metrics::counter!(super::REJECTED, "server.address" => self.service.to_string(), "reason" => reason)
            .increment(1);
    }

    /// Records the first call with these labels: resolves the histogram's handle once and
    /// keeps it. Out of line: its labels are built on the stack, and every other call should
    /// not reserve room for them.
    #[inline(never)]
    fn record_first(&self, series: Series, elapsed: std::time::Duration) {
        let status = series.status.to_string();
        let mut labels = vec![
            ("http.request.method", series.method.to_owned()),
            ("server.address", self.service.to_string()),
        ];
        if series.status != 0 {
            labels.push(("http.response.status_code", status));
        }
        if let Some(error) = series.error {
            labels.push(("error.type", error.to_owned()));
        }
        let handle = metrics::histogram!(REQUEST_DURATION, &labels);
        handle.record(elapsed.as_secs_f64());
        // Kept in the first free slot, unless another call kept one meanwhile; with every
        // slot taken, not kept.
        let _filling = self.filling.lock().unwrap_or_else(PoisonError::into_inner);
        for slot in &self.handles {
            match slot.get() {
                Some((kept, _)) if *kept == series => return,
                Some(_) => {}
                None => {
                    let _ = slot.set((series, handle));
                    return;
                }
            }
        }
    }
}

impl<S> Service<reqwest::Request> for Metrics<S>
where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = Error>,
{
    type Response = reqwest::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: reqwest::Request) -> Self::Future {
        let record = CallRecord::begin(&self.shared, &request);
        let future = {
            let _entered = record.span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            future,
            record: Held {
                record,
                shared: self.shared.clone(),
            },
        }
    }
}

impl MetricsLayer {
    /// Starts recording one call of `request`: counted in flight from now on. The record
    /// must be [finished](CallRecord::finish) or [cancelled](CallRecord::cancel) with this
    /// layer.
    pub(crate) fn begin(&self, request: &reqwest::Request) -> CallRecord {
        CallRecord::begin(&self.shared, request)
    }
}

/// One call being recorded: its span and its start. Finished with its result by
/// [`CallRecord::finish`], or, if the call is dropped before it completes, cancelled by
/// [`CallRecord::cancel`], which takes it out of the in-flight count. It holds no reference
/// to the service's counters: whatever holds it holds the layer (a reference count taken
/// and given back per call is two locked instructions), and passes it in.
pub(crate) struct CallRecord {
    method: &'static str,
    started: Instant,
    /// Counted in flight, and neither finished nor cancelled yet.
    open: bool,
    span: tracing::Span,
}

impl CallRecord {
    fn begin(shared: &Shared, request: &reqwest::Request) -> Self {
        shared.stats.start();
        let method = method_label(request.method());
        // One span per call: the attempts below it get spans of their own.
        let span = tracing::info_span!(
            "proxyless.call",
            service = %shared.service,
            method,
            status = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        CallRecord {
            method,
            started: crate::clock::now(),
            open: true,
            span,
        }
    }

    /// The call's span, to enter while the call runs.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Records the call's result into `layer`, the one that began it: its duration under
    /// its labels, and the counters. Once; later calls do nothing.
    pub(crate) fn finish(
        &mut self,
        layer: &MetricsLayer,
        result: Result<&reqwest::Response, &Error>,
    ) {
        self.finish_into(&layer.shared, result);
    }

    /// A call dropped before it completed: out of `layer`'s in-flight count, unless it
    /// finished.
    pub(crate) fn cancel(&mut self, layer: &MetricsLayer) {
        self.cancel_from(&layer.shared);
    }

    fn cancel_from(&mut self, shared: &Shared) {
        if std::mem::take(&mut self.open) {
            shared.stats.cancel();
        }
    }

    fn finish_into(&mut self, shared: &Shared, result: Result<&reqwest::Response, &Error>) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        let series = match result {
            Ok(response) => {
                let status = response.status();
                Series {
                    method: self.method,
                    status: status.as_u16(),
                    error: status
                        .is_server_error()
                        .then(|| status_label(status.as_u16())),
                }
            }
            Err(error) => Series {
                method: self.method,
                status: error.status().map_or(0, |s| s.as_u16()),
                error: Some(error_label(error)),
            },
        };
        // A disabled span (no subscriber wants it) would still look its field up by name.
        if !self.span.is_disabled() {
            if series.status != 0 {
                self.span.record("status", series.status);
            }
            if let Some(error) = series.error {
                self.span.record("error", error);
            }
        }
        shared.record(series, self.started);
    }
}

/// A [`CallRecord`] with the counters it records into, for [`Metrics`]' future.
struct Held {
    record: CallRecord,
    shared: Arc<Shared>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // A call dropped before it completed (cancelled) leaves the in-flight count.
        self.record.cancel_from(&self.shared);
    }
}

pin_project! {
    /// The future of [`Metrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        record: Held,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("metrics::ResponseFuture")
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<reqwest::Response, Error>>,
{
    type Output = Result<reqwest::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.record.record.span.enter();
            std::task::ready!(this.future.poll(cx))
        };
        let Held { record, shared } = this.record;
        record.finish_into(shared, result.as_ref());
        Poll::Ready(result)
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        505 => "505",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    /// The standalone layer's future counts its call in flight until it completes or is
    /// dropped.
    #[test]
    fn a_dropped_call_leaves_the_in_flight_count() {
        use futures_util::FutureExt;
        let layer = MetricsLayer::new(ServiceName::new("orders").expect("valid"));
        let mut service = layer.layer(tower::service_fn(|request: reqwest::Request| {
            let answer = request.url().path() == "/now";
            async move {
                if !answer {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Error>(reqwest::Response::from(http::Response::new(
                    reqwest::Body::from(""),
                )))
            }
        }));
        let request = |path: &str| {
            let url = format!("http://orders{path}").parse().expect("url");
            reqwest::Request::new(reqwest::Method::GET, url)
        };
        let mut pending = Box::pin(service.call(request("/never")));
        assert!(pending.as_mut().now_or_never().is_none());
        assert_eq!(layer.stats().snapshot(Vec::new()).in_flight, 1);
        drop(pending);
        let done = service
            .call(request("/now"))
            .now_or_never()
            .expect("at once");
        assert_eq!(done.expect("ok").status(), 200);
        let stats = layer.stats().snapshot(Vec::new());
        assert_eq!((stats.in_flight, stats.requests), (0, 1), "{stats:?}");
    }

    /// Label sets past the slots are recorded all the same, each call resolving its handle.
    #[test]
    fn every_label_set_is_recorded_past_the_kept_handles() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let layer = MetricsLayer::new(ServiceName::new("orders").expect("valid"));
        let sets = HANDLE_SLOTS + 4;
        metrics::with_local_recorder(&recorder, || {
            for round in 0..3 {
                for i in 0..sets {
                    let series = Series {
                        method: "GET",
                        status: 200 + i as u16,
                        error: None,
                    };
                    layer.shared.stats.start();
                    layer.shared.record(series, crate::clock::now());
                    let kept = layer.shared.handles.iter().filter(|s| s.get().is_some());
                    let expected = if round == 0 { i + 1 } else { sets };
                    assert_eq!(kept.count(), expected.min(HANDLE_SLOTS), "round {round}");
                }
            }
        });
        let mut samples = std::collections::BTreeMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let status = key
                .key()
                .labels()
                .find(|l| l.key() == "http.response.status_code")
                .map(|l| l.value().to_owned())
                .expect("a status label");
            let DebugValue::Histogram(values) = value else {
                panic!("{key:?} is not a histogram");
            };
            samples.insert(status, values.len());
        }
        assert_eq!(samples.len(), sets, "{samples:?}");
        assert!(samples.values().all(|&n| n == 3), "{samples:?}");
        assert_eq!(layer.stats().snapshot(Vec::new()).requests, 3 * sets as u64);
    }
}
