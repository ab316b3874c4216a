//! A server on a runtime of its own.

use std::net::SocketAddr;

use axum::Router;

/// An HTTP server on 127.0.0.1, on a runtime of its own, so that killing it closes every
/// connection it has, as the death of a process would.
pub struct Served {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Served {
    pub fn start(router: Router) -> Served {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, router).await.expect("serve");
        });
        Served {
            addr,
            runtime: Some(runtime),
        }
    }

    /// Stops the server and closes its connections.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}
