use std::sync::Arc;

use tower::Layer;

use super::{Breaker, BreakerConfig, CircuitBreaker};
use crate::classify::HttpClassifier;
use crate::error::Error;

/// Puts a [`Breaker`] in front of a service. Clones of the layer, and every service it
/// makes, share the one breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = HttpClassifier> {
    breaker: Arc<Breaker>,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A breaker with `config`, classifying outcomes with [`HttpClassifier`].
    pub fn new(config: BreakerConfig) -> Result<Self, Error> {
        Ok(CircuitBreakerLayer {
            breaker: Breaker::new(config)?,
            classifier: HttpClassifier,
        })
    }

    /// Like [`CircuitBreakerLayer::new`], naming `service` in the breaker's metrics.
    pub(crate) fn for_service(config: BreakerConfig, service: &str) -> Result<Self, Error> {
        Ok(CircuitBreakerLayer {
            breaker: Breaker::for_service(config, service.to_owned())?,
            classifier: HttpClassifier,
        })
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Classifies outcomes with `classifier` instead.
    pub fn with_classifier<D>(self, classifier: D) -> CircuitBreakerLayer<D> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }

    /// The shared breaker, to read its state.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.breaker.clone(), self.classifier.clone())
    }
}
