//! The aggregated discovery stream: one gRPC stream to the control plane, its requests,
//! ACKs and NACKs, and the reconnects when it breaks.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
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
    /// How long the control plane may take to answer a new stream at all (its response
    /// headers): the resource timeout.
    pub(crate) open_timeout: Duration,
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
    let opened = Instant::now();
    {
        let mut state = shared.lock();
        state.stream_started(opened);
        state.requests().into_iter().for_each(&mut send);
    }
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|request| (request, rx))
    });
    // The call resolves when the control plane sends its response headers, which a server
    // may hold back until it has something to send (grpc-go sends them with the first
    // message) or forever (a hung server behind a live connection, whose pings are still
    // answered). Meanwhile the requests go out, new subscriptions are sent and the timers
    // run, in the loop below; a stream not answered within `open_timeout` is dropped and
    // another one opened, perhaps to a healthier replica.
    let response = client.stream_aggregated_resources(outbound);
    tokio::pin!(response);
    let mut inbound = None;
    let mut answered = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            headers = &mut response, if inbound.is_none() => match headers {
                Ok(response) => {
                    inbound = Some(response.into_inner());
                    metrics::gauge!(names::XDS_CONNECTED).set(1.0);
                }
                Err(status) => return ended(false, format!("the stream was refused: {status}")),
            },
            message = next_message(inbound.as_mut()) => {
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
                let now = Instant::now();
                // Before the timers: a server that has not answered at all is no evidence
                // that a resource does not exist.
                if inbound.is_none() && now.duration_since(opened) >= link.open_timeout {
                    return ended(false, format!("no answer to the stream in {:?}", link.open_timeout));
                }
                let mut state = shared.lock();
                state.expire(now);
                state.requests().into_iter().for_each(&mut send);
            }
        }
    }
}

/// The next message of an open stream; pending while the stream is not open yet.
async fn next_message(
    inbound: Option<&mut tonic::Streaming<DiscoveryResponse>>,
) -> Result<Option<DiscoveryResponse>, tonic::Status> {
    match inbound {
        Some(inbound) => inbound.message().await,
        None => std::future::pending().await,
    }
}
