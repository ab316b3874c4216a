//! A fixed, in-memory list of endpoints per service, replaceable at run time.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::{BoxFuture, BoxStream, Discovery, DiscoveryError, DiscoveryResult};
use crate::endpoint::{Endpoint, ServiceName};
use crate::error::Error;

/// Endpoints listed in code or configuration.
///
/// Clones share the same lists, so a handle kept by the application can replace a service's
/// endpoints while clients use them: every client watching the service sees the new set on
/// its next request.
///
/// ```
/// use proxyless::{Endpoint, StaticDiscovery};
/// let discovery = StaticDiscovery::new();
/// discovery.set("orders", [Endpoint::new(([127, 0, 0, 1], 8081))])?;
/// // later: scale out
/// discovery.set(
///     "orders",
///     [
///         Endpoint::new(([127, 0, 0, 1], 8081)),
///         Endpoint::new(([127, 0, 0, 1], 8082)).with_weight(2),
///     ],
/// )?;
/// assert_eq!(discovery.get("orders").map(|e| e.len()), Some(2));
/// # Ok::<(), proxyless::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct StaticDiscovery {
    services: Arc<Mutex<Lists>>,
}

/// Each service's list, in a channel that its watchers follow.
type Lists = HashMap<ServiceName, watch::Sender<Arc<[Endpoint]>>>;

impl StaticDiscovery {
    /// An empty list: every service is unknown until [`StaticDiscovery::set`].
    pub fn new() -> Self {
        StaticDiscovery::default()
    }

    /// Adds `service` with `endpoints`, consuming and returning `self`, for building in one
    /// expression.
    pub fn with(
        self,
        service: impl AsRef<str>,
        endpoints: impl IntoIterator<Item = Endpoint>,
    ) -> Result<Self, Error> {
        self.set(service, endpoints)?;
        Ok(self)
    }

    /// Sets (or replaces) the endpoints of `service`. Watchers see the new set at once.
    pub fn set(
        &self,
        service: impl AsRef<str>,
        endpoints: impl IntoIterator<Item = Endpoint>,
    ) -> Result<(), Error> {
        let name = ServiceName::new(service)?;
        let endpoints: Arc<[Endpoint]> = endpoints.into_iter().collect();
        let mut services = self.lock();
        match services.get(&name) {
            Some(sender) => {
                sender.send_replace(endpoints);
            }
            None => {
                services.insert(name, watch::Sender::new(endpoints));
            }
        }
        Ok(())
    }

    /// The current endpoints of `service`, if it is listed.
    pub fn get(&self, service: &str) -> Option<Arc<[Endpoint]>> {
        let name = ServiceName::new(service).ok()?;
        self.lock().get(&name).map(|sender| sender.borrow().clone())
    }

    /// The names of the services listed.
    pub fn services(&self) -> Vec<ServiceName> {
        let mut names: Vec<_> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lists> {
        // The map is always left consistent, so a panic elsewhere cannot corrupt it.
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for StaticDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticDiscovery")
            .field("services", &self.services())
            .finish()
    }
}

impl Discovery for StaticDiscovery {
    fn discover<'a>(&'a self, service: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        let result = match self.lock().get(service) {
            Some(sender) => Ok(sender.borrow().to_vec().into()),
            None => Err(DiscoveryError::unknown_service()),
        };
        Box::pin(std::future::ready(result))
    }

    /// Pushes each new set the moment [`StaticDiscovery::set`] is called; never polls.
    fn watch(self: Arc<Self>, service: ServiceName) -> BoxStream<'static, DiscoveryResult> {
        let receiver = self.lock().get(&service).map(watch::Sender::subscribe);
        let Some(mut receiver) = receiver else {
            return Box::pin(futures_util::stream::iter([Err(
                DiscoveryError::unknown_service(),
            )]));
        };
        receiver.mark_changed();
        Box::pin(futures_util::stream::unfold(
            receiver,
            |mut receiver| async move {
                // Ends when every handle to this StaticDiscovery is gone.
                receiver.changed().await.ok()?;
                let endpoints = receiver.borrow_and_update().to_vec();
                Some((Ok(endpoints.into()), receiver))
            },
        ))
    }
}
