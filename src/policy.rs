//! The policies a service's calls follow that a discovery backend may also set: the
//! balancer and outlier ejection (an xDS control plane sends them with each cluster), and the
//! policy a backend's answer carries. Defined here, below both discovery and balance, so that
//! config, the balancer and the backends speak of the same types.

use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;

/// The strategy a service's requests are balanced with.
///
/// In configuration it is written in snake case: `"weighted_random"`, `"random"`,
/// `"round_robin"`, `"weighted_round_robin"`, `"least_request"`, `"peak_ewma"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Balancer {
    /// [`WeightedRandom`](crate::balance::WeightedRandom): probability proportional to weight. The default.
    #[default]
    WeightedRandom,
    /// [`Random`](crate::balance::Random): uniform, ignoring weights.
    Random,
    /// [`RoundRobin`](crate::balance::RoundRobin): each endpoint in turn, ignoring weights.
    RoundRobin,
    /// [`WeightedRoundRobin`](crate::balance::WeightedRoundRobin): nginx's smooth weighted round robin.
    WeightedRoundRobin,
    /// [`LeastRequest`](crate::balance::LeastRequest): the less loaded of two distinct
    /// weighted random choices.
    LeastRequest,
    /// [`PeakEwma`](crate::balance::PeakEwma): the cheaper of two distinct weighted random
    /// choices by peak-EWMA latency × (requests in flight + 1), Finagle's and linkerd's
    /// latency-aware balancer; its decay is `BalanceLayerBuilder::peak_ewma_decay` (10 s).
    PeakEwma,
}

/// Outlier ejection settings; the defaults are Envoy's.
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct OutlierDetection {
    pub(crate) consecutive_failures: u32,
    pub(crate) base_ejection: Duration,
    pub(crate) max_ejection: Duration,
    pub(crate) max_ejected_share: f64,
    pub(crate) panic_threshold: f64,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.1,
            panic_threshold: 0.5,
        }
    }
}

impl OutlierDetection {
    /// Failures in a row that eject an endpoint (5).
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = failures;
        self
    }

    /// Ejection time: `base × times ejected`, at most `max` (30 s and 300 s).
    pub fn ejection_time(mut self, base: Duration, max: Duration) -> Self {
        self.base_ejection = base;
        self.max_ejection = max;
        self
    }

    /// The largest share of endpoints ejected at once (0.1); one may always be.
    pub fn max_ejected_share(mut self, share: f64) -> Self {
        self.max_ejected_share = share;
        self
    }

    /// Below this share of available endpoints (0.5), ignore ejections (panic mode); 0
    /// turns panic mode off.
    pub fn panic_threshold(mut self, share: f64) -> Self {
        self.panic_threshold = share;
        self
    }

    /// Checks the settings; an error names the one at fault.
    pub fn validate(&self) -> Result<(), Error> {
        crate::error::check_duration("outlier_detection.ejection_time", self.max_ejection)?;
        if self.consecutive_failures == 0 {
            return Err(Error::builder(
                "outlier_detection.consecutive_failures",
                "must be at least 1",
            ));
        }
        if self.base_ejection.is_zero() || self.max_ejection < self.base_ejection {
            return Err(Error::builder(
                "outlier_detection.ejection_time",
                "needs a base above zero and a maximum of at least the base",
            ));
        }
        for (name, share) in [
            ("max_ejected_share", self.max_ejected_share),
            ("panic_threshold", self.panic_threshold),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(Error::builder(
                    format!("outlier_detection.{name}"),
                    "must be from 0 to 1",
                ));
            }
        }
        Ok(())
    }
}

/// The policies a discovery backend sets for a service beside its endpoints (an xDS
/// cluster's `lb_policy`, `outlier_detection` and `circuit_breakers`). Each one set takes
/// the place of the client's configured value for that service while the backend sends it;
/// an outlier detection set keeps the configured panic threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ServicePolicy {
    /// The balancer.
    pub balancer: Option<Balancer>,
    /// Outlier ejection.
    pub outlier_detection: Option<OutlierDetection>,
    /// The most requests in flight to the service's endpoints at once (Envoy's
    /// `max_requests`); one more fails at once with
    /// [`Error::is_overloaded`](crate::Error::is_overloaded). Counted beside any
    /// concurrency limit of the service's traffic policy.
    pub max_requests: Option<u32>,
}
