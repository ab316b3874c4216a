use tower::{Layer, ServiceExt};

use super::*;
use crate::balance::BalanceLayer;
use crate::client::TrafficPolicy;
use crate::{Endpoint, Registry, StaticDiscovery};

fn assert_send<T: Send>(_: &T) {}

#[tokio::test]
async fn a_transport_that_is_send_but_not_sync_gives_a_send_future() {
    let registry = Registry::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [Endpoint::new(([10, 0, 0, 1], 8080))])
                .expect("valid"),
        )
        .build()
        .expect("valid registry");
    registry.endpoints("orders").await.expect("resolved");
    // tower's boxed clonable service is `Send` and not `Sync`.
    let transport = tower::util::BoxCloneService::new(tower::service_fn(
        |request: reqwest::Request| async move {
            let url = request.url().to_string();
            Ok::<_, Error>(reqwest::Response::from(http::Response::new(
                reqwest::Body::from(url),
            )))
        },
    ));
    let service = TrafficPolicy::default()
        .layer("orders", BalanceLayer::new(registry))
        .expect("valid policy")
        .layer(transport);
    let request = reqwest::Request::new(
        reqwest::Method::GET,
        "http://orders/items".parse().expect("url"),
    );
    let future = service.oneshot(request);
    assert_send(&future);
    let response = future.await.expect("answered");
    let body = response.text().await.expect("body");
    assert_eq!(body, "http://10.0.0.1:8080/items", "sent to the endpoint");
}
