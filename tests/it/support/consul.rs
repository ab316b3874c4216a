//! A stand-in for a Consul agent's HTTP API, enough of it to test the Consul backend: the
//! health endpoint `GET /v1/health/service/:name` with its filters (`passing`, `tag`) and
//! blocking-query semantics (`index`, `wait`, `X-Consul-Index`), serving bodies shaped like
//! the examples of Consul's documentation. Knobs let a test misbehave it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// How the stand-in answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// As Consul does.
    Normal,
    /// `500 No cluster leader`, at once.
    NoLeader,
    /// Answers at once even to a blocking query whose index is current.
    Immediate,
    /// This body, with the current index, at once.
    RawBody(String),
}

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub service: String,
    pub query: Vec<(String, String)>,
    pub token: Option<String>,
}

impl Seen {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

struct Catalog {
    index: u64,
    /// The index to report instead of the real one, when set.
    forced_index: Option<u64>,
    services: HashMap<String, Vec<Value>>,
    mode: Mode,
    seen: Vec<Seen>,
    /// Queries being answered now, and the most there ever were.
    in_flight: usize,
    max_in_flight: usize,
}

/// Counts a query in flight while it lives.
struct InFlight(Arc<Mutex<Catalog>>);

impl InFlight {
    fn new(catalog: &Arc<Mutex<Catalog>>) -> Self {
        let mut locked = catalog.lock().expect("lock");
        locked.in_flight += 1;
        locked.max_in_flight = locked.max_in_flight.max(locked.in_flight);
        InFlight(catalog.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().expect("lock").in_flight -= 1;
    }
}

pub struct FakeConsul {
    pub addr: SocketAddr,
    catalog: Arc<Mutex<Catalog>>,
    changed: Arc<Notify>,
    served: super::Served,
}

/// One element of a health response, shaped like the example in Consul's documentation of
/// `/v1/health/service/:service`. `weights` of `None` leaves `Weights` out; an empty
/// `service_addr` leaves `Service.Address` empty, as for a service registered without one.
pub fn instance(
    node: &str,
    node_addr: &str,
    service_addr: &str,
    port: u16,
    weights: Option<(u32, u32)>,
    status: &str,
    tags: &[&str],
) -> Value {
    let mut service = json!({
        "ID": format!("my-service-{node}"),
        "Service": "my-service",
        "Tags": tags,
        "Address": service_addr,
        "TaggedAddresses": {
            "lan": {"address": node_addr, "port": port},
            "wan": {"address": node_addr, "port": port}
        },
        "Meta": {"version": "1.2.3"},
        "Port": port,
        "Namespace": "default",
        "Partition": "default"
    });
    if let Some((passing, warning)) = weights {
        service["Weights"] = json!({"Passing": passing, "Warning": warning});
    }
    json!({
        "Node": {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
            "Node": node,
            "Address": node_addr,
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": node_addr, "wan": node_addr},
            "Meta": {"instance_type": "t2.medium"}
        },
        "Service": service,
        "Checks": [
            {
                "Node": node,
                "CheckID": "service:my-service",
                "Name": "Service 'my-service' check",
                "Status": status,
                "Notes": "",
                "Output": "",
                "ServiceID": format!("my-service-{node}"),
                "ServiceName": "my-service",
                "ServiceTags": tags,
                "Namespace": "default"
            },
            {
                "Node": node,
                "CheckID": "serfHealth",
                "Name": "Serf Health Status",
                "Status": "passing",
                "Notes": "",
                "Output": "",
                "ServiceID": "",
                "ServiceName": "",
                "ServiceTags": [],
                "Namespace": "default"
            }
        ]
    })
}

impl FakeConsul {
    pub async fn start() -> FakeConsul {
        let catalog = Arc::new(Mutex::new(Catalog {
            index: 1,
            forced_index: None,
            services: HashMap::new(),
            mode: Mode::Normal,
            seen: Vec::new(),
            in_flight: 0,
            max_in_flight: 0,
        }));
        let changed = Arc::new(Notify::new());
        let router = Router::new()
            .fallback(health)
            .with_state((catalog.clone(), changed.clone()));
        let served = super::Served::start(router);
        FakeConsul {
            addr: served.addr,
            catalog,
            changed,
            served,
        }
    }

    /// Stops the agent and closes its connections.
    pub fn kill(&mut self) {
        self.served.kill();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces a service's instances and bumps the index, waking blocked queries.
    pub fn set(&self, service: &str, instances: Vec<Value>) {
        let mut catalog = self.catalog.lock().expect("lock");
        catalog.index += 1;
        catalog.services.insert(service.to_owned(), instances);
        drop(catalog);
        self.changed.notify_waiters();
    }

    /// Reports `index` in `X-Consul-Index` from now on, whatever the data, and wakes blocked
    /// queries; `None` goes back to the real index.
    pub fn force_index(&self, index: Option<u64>) {
        self.catalog.lock().expect("lock").forced_index = index;
        self.changed.notify_waiters();
    }

    pub fn set_mode(&self, mode: Mode) {
        self.catalog.lock().expect("lock").mode = mode;
        self.changed.notify_waiters();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.catalog.lock().expect("lock").seen.clone()
    }

    /// The most queries it was ever answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.catalog.lock().expect("lock").max_in_flight
    }

    pub fn requests(&self) -> usize {
        self.catalog.lock().expect("lock").seen.len()
    }
}

type Shared = (Arc<Mutex<Catalog>>, Arc<Notify>);

fn parse_wait(text: &str) -> Duration {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number.parse().unwrap_or(300);
    match unit {
        "ms" => Duration::from_millis(number),
        "m" => Duration::from_secs(60 * number),
        _ => Duration::from_secs(number),
    }
}

async fn health(State((catalog, changed)): State<Shared>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let Some(service) = path.strip_prefix("/v1/health/service/") else {
        return respond(StatusCode::NOT_FOUND, None, "not found".into());
    };
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let seen = Seen {
        service: service.to_owned(),
        query: query.clone(),
        token: request
            .headers()
            .get("x-consul-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let param = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let index: Option<u64> = param("index").and_then(|i| i.parse().ok());
    let wait = parse_wait(&param("wait").unwrap_or_else(|| "300s".into()));

    catalog.lock().expect("lock").seen.push(seen);
    let _in_flight = InFlight::new(&catalog);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let catalog = catalog.lock().expect("lock");
            let reported = catalog.forced_index.unwrap_or(catalog.index);
            let blocking = index.is_some_and(|i| i >= 1 && i == reported);
            let answer_now = match &catalog.mode {
                Mode::Normal => !blocking,
                _ => true,
            };
            if answer_now || tokio::time::Instant::now() >= deadline {
                return match catalog.mode.clone() {
                    Mode::NoLeader => respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        None,
                        "No cluster leader".into(),
                    ),
                    Mode::RawBody(body) => respond(StatusCode::OK, Some(reported), body),
                    Mode::Normal | Mode::Immediate => {
                        let instances = catalog.services.get(service).cloned().unwrap_or_default();
                        let passing_only = param("passing").is_some_and(|p| p != "false");
                        let tags: Vec<String> = query
                            .iter()
                            .filter(|(k, _)| k == "tag")
                            .map(|(_, v)| v.clone())
                            .collect();
                        let filtered: Vec<Value> = instances
                            .into_iter()
                            .filter(|i| {
                                !passing_only
                                    || i["Checks"]
                                        .as_array()
                                        .is_some_and(|c| c.iter().all(|c| c["Status"] == "passing"))
                            })
                            .filter(|i| {
                                tags.iter().all(|t| {
                                    i["Service"]["Tags"]
                                        .as_array()
                                        .is_some_and(|ts| ts.iter().any(|x| x == t.as_str()))
                                })
                            })
                            .collect();
                        respond(
                            StatusCode::OK,
                            Some(reported),
                            Value::Array(filtered).to_string(),
                        )
                    }
                };
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

fn respond(status: StatusCode, index: Option<u64>, body: String) -> Response {
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-consul-knownleader", "true")
        .header("x-consul-lastcontact", "0");
    if let Some(index) = index {
        response = response.header("x-consul-index", index.to_string());
    }
    response.body(Body::from(body)).expect("valid response")
}
