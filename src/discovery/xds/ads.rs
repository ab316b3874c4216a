//! The aggregated discovery stream: one gRPC stream to the control plane, its requests,
//! ACKs and NACKs, and the reconnects when it breaks.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::resources::Type;
use super::state::State;
use crate::backoff::Backoff;
use crate::names;

/// What the stream task and the discovery handles share.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Told when a subscription changes, so that the stream sends it.
    pub(crate) wake: Notify,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every method.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How the stream task connects.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) uri: String,
    pub(crate) node: Node,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) max_message: usize,
}

/// Keeps one stream open for as long as the discovery lives: after a stream breaks (or never
/// opens), waits with exponential backoff and jitter, then opens another. What the control
/// plane sent stays in use meanwhile.
pub(crate) async fn run(shared: Arc<Shared>, link: Link) {
    let mut backoff = Backoff::new(link.backoff.0, link.backoff.1);
    loop {
        let outcome = stream(&shared, &link).await;
        shared.lock().stream_ended();
        metrics::gauge!(names::XDS_CONNECTED).set(0.0);
        if outcome.answered {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(server = %link.uri, reason = %outcome.reason, retry_in = ?delay, "xDS stream ended; keeping the last resources and reconnecting");
        tokio::time::sleep(delay).await;
    }
}

struct Outcome {
    /// Whether the control plane answered on this stream.
    answered: bool,
    reason: String,
}

async fn stream(shared: &Shared, link: &Link) -> Outcome {
    let ended = |answered, reason: String| Outcome { answered, reason };
    let endpoint = match tonic::transport::Endpoint::from_shared(link.uri.clone()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10)),
        Err(e) => return ended(false, e.to_string()),
    };
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => return ended(false, format!("cannot connect: {e}")),
    };
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(link.max_message);
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let mut node = Some(link.node.clone());
    let mut send = |mut request: DiscoveryRequest| {
        // The node goes in the first request of a stream only.
        if let Some(node) = node.take() {
            request.node = Some(node);
        }
        let _ = tx.send(request);
    };
    {
        let mut state = shared.lock();
        state.stream_started(Instant::now());
        state.requests().into_iter().for_each(&mut send);
    }
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|request| (request, rx))
    });
    let mut inbound = match client.stream_aggregated_resources(outbound).await {
        Ok(response) => response.into_inner(),
        Err(status) => return ended(false, format!("the stream was refused: {status}")),
    };
    metrics::gauge!(names::XDS_CONNECTED).set(1.0);
    let mut answered = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = inbound.message() => {
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => return ended(answered, "the control plane closed the stream".into()),
                    Err(status) => return ended(answered, status.to_string()),
                };
                answered = true;
                let Some(ty) = Type::from_url(&response.type_url) else {
                    tracing::debug!(type_url = %super::resources::printable(&response.type_url), "ignoring a response of a type not asked for");
                    continue;
                };
                let mut state = shared.lock();
                if !state.asked(ty) {
                    tracing::debug!(kind = ty.as_str(), "ignoring a response of a type not asked for on this stream");
                    continue;
                }
                let outcome = state.apply(ty, &response);
                let (label, error) = match outcome {
                    Ok(()) => ("ack", None),
                    Err(why) => ("nack", Some(why)),
                };
                metrics::counter!(names::XDS_UPDATES, "type" => ty.as_str(), "outcome" => label).increment(1);
                send(state.request(ty, error));
                state.requests().into_iter().for_each(&mut send);
            }
            () = shared.wake.notified() => {
                shared.lock().requests().into_iter().for_each(&mut send);
            }
            _ = tick.tick() => {
                let mut state = shared.lock();
                state.expire(Instant::now());
                state.requests().into_iter().for_each(&mut send);
            }
        }
    }
}
