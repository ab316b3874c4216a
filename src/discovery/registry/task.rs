//! A service's watch task: the backend's stream, the maintenance tick, and the confirmation
//! of mass removals.

use super::*;

/// How often a watch task looks at its service's use and age.
const MAINTENANCE_PERIOD: Duration = Duration::from_secs(1);

/// How long a held mass removal waits before the backend is asked again, before jitter.
const HELD_REMOVAL_RECHECK: Duration = Duration::from_secs(30);

/// A mass removal held back, and the timer of its re-check.
type Held = Option<(Arc<[Endpoint]>, Pin<Box<tokio::time::Sleep>>)>;

/// A second fetch that confirms or refuses an update removing most endpoints.
type Confirmation = BoxFuture<'static, (Arc<[Endpoint]>, Result<Valid, DiscoveryError>)>;

/// Marks a service's watch as ended when the task running it ends in any way: returning,
/// panicking, or dropped with its runtime. The next request for the service restarts it.
pub(super) struct WatchAlive(pub(super) Arc<ServiceEntry>);

impl Drop for WatchAlive {
    fn drop(&mut self) {
        let entry = &self.0;
        entry.watching.store(false, Ordering::Release);
        if entry.forgotten.load(Ordering::Acquire) {
            return;
        }
        let why = if std::thread::panicking() {
            "the watch task panicked"
        } else {
            "the watch task ended"
        };
        tracing::error!(service = %entry.name, "{why}; the next request restarts it");
        entry.record_error(DiscoveryError::watch_ended(why));
    }
}

/// A service's watch task: follows the backend's stream for as long as the registry lives.
///
/// Beside the stream it runs the maintenance tick (the idle timeout, the age gauge), a
/// second fetch that confirms a mass removal, and the re-check of a held one: none
/// of them waits for another.
pub(super) async fn watch(
    alive: WatchAlive,
    discovery: Arc<dyn Discovery>,
    registry: Weak<RegistryInner>,
) {
    // The guard came in with the task, so that it marks the watch ended even if the task is
    // dropped before it first runs.
    let entry = alive.0.clone();
    let period = MAINTENANCE_PERIOD;
    let mut ticks = {
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(ticks)
    };
    // A configured service is never forgotten: the configuration bounds those.
    let idle_timeout = registry
        .upgrade()
        .filter(|r| !r.routes.contains_key(&entry.name))
        .and_then(|r| r.idle_timeout);
    let mut last_used = Instant::now();
    let mut confirming: Option<Confirmation> = None;
    // A held removal, and when to ask the backend about it again.
    let mut held: Held = None;
    loop {
        let mut snapshots = discovery.clone().watch(entry.name.clone());
        loop {
            let result = tokio::select! {
                result = snapshots.next() => match result {
                    Some(result) => result.and_then(canonical),
                    None => break,
                },
                (proposed, second) = poll_opt(&mut confirming) => {
                    confirming = None;
                    match second {
                        Ok(second) => {
                            entry.note_rejected(second.rejected);
                            let policy = second.policy;
                            let second = second.endpoints;
                            if second == proposed || !entry.is_mass_removal(&second) {
                                held = None;
                                entry.apply(second, policy);
                            } else {
                                entry.hold_removal(second.len());
                                let recheck = crate::backoff::jitter(HELD_REMOVAL_RECHECK, 0.2);
                                held = Some((second, Box::pin(tokio::time::sleep(recheck))));
                            }
                        }
                        Err(error) => {
                            // Not a failed refresh: the stream, which is, still answers.
                            tracing::warn!(
                                service = %entry.name,
                                error = %error,
                                "the second fetch confirming a mass removal failed; asking again later"
                            );
                            entry.hold_removal(proposed.len());
                            let recheck = crate::backoff::jitter(HELD_REMOVAL_RECHECK, 0.2);
                            held = Some((proposed, Box::pin(tokio::time::sleep(recheck))));
                        }
                    }
                    continue;
                }
                () = poll_held(&mut held) => {
                    if let Some((proposed, _)) = held.take() {
                        confirming = Some(confirm(&entry, &discovery, proposed));
                    }
                    continue;
                }
                _ = tick(&mut ticks) => {
                    let now = Instant::now();
                    if entry.used.swap(false, Ordering::Relaxed) {
                        last_used = now;
                    } else if idle_timeout.is_some_and(|idle| now - last_used >= idle)
                        // Its last good set is all a later call would have while the
                        // backend fails: kept until the backend answers again.
                        && entry.failing_since.load(Ordering::Relaxed) == 0
                    {
                        tracing::info!(service = %entry.name, "no calls for the idle timeout; forgetting the service");
                        if let Some(registry) = registry.upgrade() {
                            registry.forget(&entry);
                        }
                        return;
                    }
                    let refreshed_at = entry.lock_status().refreshed_at;
                    if let Some(age) = refreshed_at.map(|at| at.elapsed()) {
                        metrics::gauge!(crate::names::DISCOVERY_AGE, "server.address" => entry.name.to_string())
                            .set(age.as_secs_f64());
                    }
                    continue;
                }
            };
            let error = match result {
                Ok(valid) => {
                    entry.note_rejected(valid.rejected);
                    if entry.is_mass_removal(&valid.endpoints) {
                        // Asked again beside the stream; a newer answer replaces the question,
                        // and any removal held before it.
                        held = None;
                        confirming = Some(confirm(&entry, &discovery, valid.endpoints));
                    } else {
                        confirming = None;
                        held = None;
                        entry.apply(valid.endpoints, valid.policy);
                    }
                    continue;
                }
                Err(error) => error,
            };
            let never_resolved = entry.current.load().is_none();
            let unknown = error.is_unknown_service();
            if error.kind() == DiscoveryErrorKind::NotOffered {
                confirming = None;
                held = None;
                entry.withdraw();
            }
            entry.record_error(error);
            if unknown && never_resolved {
                // Do not keep a task (and a map entry) for every name a caller invents.
                if let Some(registry) = registry.upgrade() {
                    registry.forget(&entry);
                }
                return;
            }
        }
        tracing::warn!(service = %entry.name, "discovery stream ended; restarting it");
        tokio::time::sleep(WATCH_RESTART_DELAY).await;
    }
}

/// Asks the backend again about `proposed`, an update that removes most endpoints: the
/// answer confirms it if it is the same set, or if it no longer removes too many.
fn confirm(
    entry: &ServiceEntry,
    discovery: &Arc<dyn Discovery>,
    proposed: Arc<[Endpoint]>,
) -> Confirmation {
    let current = entry.current.load().as_ref().map_or(0, |s| s.len());
    tracing::info!(
        service = %entry.name,
        endpoints = current,
        proposed = proposed.len(),
        "update removes most endpoints; asking the backend again"
    );
    let discovery = discovery.clone();
    let name = entry.name.clone();
    Box::pin(async move {
        let second = discovery.discover(&name).await.and_then(canonical);
        (proposed, second)
    })
}

/// The confirmation in flight, or never.
async fn poll_opt<T>(future: &mut Option<BoxFuture<'static, T>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// The re-check of a held removal coming due, or never.
async fn poll_held(held: &mut Held) {
    match held {
        Some((_, sleep)) => sleep.await,
        None => std::future::pending().await,
    }
}

/// The next maintenance tick, or never.
async fn tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}
