//! The mesh as a `reqwest_middleware::Middleware`, in a chain with another middleware, over
//! real servers on 127.0.0.1.

use std::sync::{Arc, Mutex};

use crate::support::TestServer;
use proxyless::middleware::MeshMiddleware;
use proxyless::{MeshClient, StaticDiscovery};
use reqwest_middleware::{ClientBuilder, Middleware, Next};

/// A middleware before the mesh: it notes the URL it is given and adds a header.
#[derive(Clone, Default)]
struct Outer {
    seen: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl Middleware for Outer {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.seen
            .lock()
            .expect("not poisoned")
            .push(request.url().to_string());
        request
            .headers_mut()
            .insert("x-test-default", "from-outer".parse().expect("a value"));
        next.run(request, extensions).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_with_the_mesh_last_resolves_balances_and_keeps_the_other_middleware() {
    let a = TestServer::start("a").await;
    let b = TestServer::start("b").await;
    let mesh = MeshClient::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [a.endpoint(), b.endpoint()])
                .expect("valid"),
        )
        .build()
        .expect("valid client");
    let outer = Outer::default();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(outer.clone())
        .with(MeshMiddleware::new(mesh.clone()))
        .build();

    let mut by_server = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..40 {
        let response = client
            .get(format!("http://orders/items/{i}?q=1"))
            .send()
            .await
            .expect("a response");
        assert_eq!(response.status(), 200);
        let header = |name: &str| response.headers()[name].to_str().expect("ascii").to_owned();
        // The path and query reached the endpoint, with the outer middleware's header.
        assert_eq!(header("x-path"), format!("/items/{i}"));
        assert_eq!(header("x-query"), "q=1");
        assert_eq!(header("x-test-default"), "from-outer");
        *by_server.entry(header("x-server")).or_default() += 1;
    }
    assert_eq!(
        by_server.keys().collect::<Vec<_>>(),
        ["a", "b"],
        "{by_server:?}"
    );
    assert!(by_server.values().all(|&n| n >= 8), "{by_server:?}");
    // The outer middleware saw the logical URLs, once per call.
    let seen = outer.seen.lock().expect("not poisoned").clone();
    assert_eq!(seen.len(), 40);
    assert!(
        seen.iter()
            .all(|url| url.starts_with("http://orders/items/"))
    );
    // The mesh counted the calls as its own.
    assert_eq!(mesh.stats("orders").expect("called").requests, 40);

    // A host the mesh does not know goes on down the chain (here, to `b` by its name in a
    // URL the chain's own client can reach: `localhost`).
    let response = client
        .get(format!("http://localhost:{}/outside", b.addr.port()))
        .send()
        .await
        .expect("passed on");
    assert_eq!(response.headers()["x-server"], "b");
    assert_eq!(response.headers()["x-path"], "/outside");
    assert!(
        mesh.stats("localhost").is_none(),
        "not a call of the mesh's"
    );

    // Registry only: the mesh's typed error, through the chain.
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(outer.clone())
        .with(MeshMiddleware::new(mesh.clone()).registry_only())
        .build();
    let error = client
        .get("http://nowhere/")
        .send()
        .await
        .expect_err("unknown service");
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("{error:?}");
    };
    let error = error
        .downcast_ref::<proxyless::Error>()
        .expect("the mesh's error");
    assert!(error.is_unknown_service(), "{error}");

    // An address is not a service's name: the rest of the chain sends it.
    let response = client
        .get(format!("http://{}/direct", a.addr))
        .send()
        .await
        .expect("a response");
    assert_eq!(response.headers()["x-server"], "a");
    assert_eq!(response.headers()["x-test-default"], "from-outer");
    assert_eq!(mesh.stats("orders").expect("called").requests, 40);
}
