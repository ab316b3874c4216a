//! Per-endpoint metric series: opt-in, and capped per service. The health record of each
//! endpoint (in balance) holds its series; [`observe`](crate::observe) documents them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::classify::Outcome;
use crate::endpoint::{EndpointAddr, ServiceName};

/// The label value shared by endpoints past the cap.
pub const OTHER_ENDPOINT: &str = "other";

/// The histogram handles of one `endpoint` label value, one per outcome, resolved once.
#[derive(Debug)]
pub(crate) struct EndpointSeries {
    success: metrics::Histogram,
    failure: metrics::Histogram,
    ignored: metrics::Histogram,
}

impl EndpointSeries {
    fn new(service: &ServiceName, endpoint: &str) -> Self {
        let handle = |outcome: &'static str| {
            metrics::histogram!(
                crate::names::ENDPOINT_ATTEMPT_DURATION,
                "server.address" => service.to_string(),
                "endpoint" => endpoint.to_owned(),
                "outcome" => outcome,
            )
        };
        EndpointSeries {
            success: handle("success"),
            failure: handle("failure"),
            ignored: handle("ignored"),
        }
    }

    pub(crate) fn record(&self, outcome: Outcome, latency: Duration) {
        let handle = match outcome {
            Outcome::Success => &self.success,
            Outcome::Failure => &self.failure,
            Outcome::Ignored => &self.ignored,
        };
        handle.record(latency.as_secs_f64());
    }
}

/// Hands out one service's endpoint series: the first `cap` distinct endpoints it sees get
/// a label of their own, kept if they leave and come back; every later one shares
/// [`OTHER_ENDPOINT`]. A service so contributes at most `cap + 1` label values, however its
/// endpoints churn.
#[derive(Debug)]
pub(crate) struct EndpointLabels {
    service: ServiceName,
    cap: usize,
    labelled: HashMap<EndpointAddr, Arc<EndpointSeries>>,
    other: Option<Arc<EndpointSeries>>,
}

impl EndpointLabels {
    pub(crate) fn new(service: ServiceName, cap: usize) -> Self {
        EndpointLabels {
            service,
            cap,
            labelled: HashMap::new(),
            other: None,
        }
    }

    /// The series for `addr`, off the request path (when a snapshot is built).
    pub(crate) fn series(&mut self, addr: &EndpointAddr) -> Arc<EndpointSeries> {
        if let Some(series) = self.labelled.get(addr) {
            return series.clone();
        }
        if self.labelled.len() < self.cap {
            let series = Arc::new(EndpointSeries::new(&self.service, &addr.to_string()));
            self.labelled.insert(addr.clone(), series.clone());
            return series;
        }
        self.other
            .get_or_insert_with(|| Arc::new(EndpointSeries::new(&self.service, OTHER_ENDPOINT)))
            .clone()
    }
}
