//! The name of every metric the mesh emits, OpenTelemetry's where one exists; re-exported
//! by [`observe`](crate::observe), whose documentation lists their kinds and labels.

/// `http.client.request.duration`, seconds.
pub const REQUEST_DURATION: &str = "http.client.request.duration";
/// Retries sent (counter; `server.address`).
pub const RETRIES: &str = "proxyless.retries";
/// Hedges sent: second copies of slow idempotent calls (counter; `server.address`).
pub const HEDGES: &str = "proxyless.hedges";
/// Calls refused by the mesh itself (counter; `server.address`, `reason`: `rate_limited`,
/// `overloaded`, `circuit_open`).
pub const REJECTED: &str = "proxyless.rejected";
/// A service breaker's state (gauge; `server.address`): 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "proxyless.breaker.state";
/// Fleet-wide rate limit decisions made by the fallback while Redis could not decide
/// (counter; `server.address`, `reason`: `timeout`, `error`, `down`; `mode`: `open`,
/// `closed`).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub const RATE_LIMIT_FALLBACKS: &str = "proxyless.rate_limit.fallbacks";
/// Breaker transitions (counter; `server.address`, `to`).
pub const BREAKER_TRANSITIONS: &str = "proxyless.breaker.transitions";
/// Endpoints ejected (counter; `server.address`).
pub const EJECTIONS: &str = "proxyless.endpoint.ejections";
/// Endpoints in a service's snapshot (gauge; `server.address`).
pub const DISCOVERY_ENDPOINTS: &str = "proxyless.discovery.endpoints";
/// Seconds since a service's last successful refresh (gauge; `server.address`).
pub const DISCOVERY_AGE: &str = "proxyless.discovery.snapshot_age";
/// Failed discovery refreshes (counter; `server.address`).
pub const DISCOVERY_ERRORS: &str = "proxyless.discovery.refresh_errors";
/// Instances of a registry's answer skipped as unusable, counted when each first appears
/// (counter; `server.address`, `reason`: see
/// [`RejectReason::as_str`](crate::discovery::RejectReason::as_str)).
pub const REJECTED_INSTANCES: &str = "proxyless.discovery.rejected_instances";
/// Keys of a fetched JWKS that cannot verify a signature and were skipped (counter; `reason`:
/// `not_for_signing`, `unsupported`, `malformed`).
pub const JWKS_KEYS_SKIPPED: &str = "proxyless.auth.jwks_keys_skipped";
/// Outbound tokens signed or fetched (counter; `source`: `jwt`, `oauth2`).
pub const TOKEN_REFRESHES: &str = "proxyless.auth.token_refreshes";
/// Inbound tokens refused (counter; `reason`, from
/// `Rejection::label`).
pub const VERIFICATION_FAILURES: &str = "proxyless.auth.verification_failures";
/// Each attempt's duration by endpoint, when per-endpoint labels are on (histogram, seconds;
/// `server.address`, `endpoint`, `outcome`).
pub const ENDPOINT_ATTEMPT_DURATION: &str = "proxyless.endpoint.attempt.duration";

/// Counter: client certificate reloads after their files changed, by `outcome`
/// (`reloaded`, `failed`).
#[cfg_attr(not(feature = "rustls"), allow(dead_code))]
pub const TLS_CERT_RELOADS: &str = "proxyless.tls.cert_reloads";

/// Counter: trust-root reloads after their files changed, by `outcome` (`reloaded`,
/// `failed`).
#[cfg_attr(not(feature = "rustls"), allow(dead_code))]
pub const TLS_ROOTS_RELOADS: &str = "proxyless.tls.roots_reloads";

/// Gauge: 1 while the xDS stream to the control plane is open, 0 while it reconnects.
#[cfg_attr(not(feature = "xds"), allow(dead_code))]
pub const XDS_CONNECTED: &str = "proxyless.xds.connected";
/// Counter: xDS responses answered, by `type` (`listener`, `route`, `cluster`,
/// `endpoints`) and `outcome` (`ack`, `nack`).
#[cfg_attr(not(feature = "xds"), allow(dead_code))]
pub const XDS_UPDATES: &str = "proxyless.xds.updates";
