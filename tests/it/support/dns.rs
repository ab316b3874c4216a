//! An authoritative DNS server on 127.0.0.1 (hickory-server, in-process, UDP and TCP on one
//! port) whose records a test can change, and a dnsmasq runner.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

/// The catalog, logging each query's name and type.
struct Logged {
    catalog: Catalog,
    log: Arc<std::sync::Mutex<Vec<(String, RecordType)>>>,
}

#[async_trait::async_trait]
impl RequestHandler for Logged {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        if let Ok(info) = request.request_info() {
            self.log
                .lock()
                .expect("lock")
                .push((info.query.name().to_string(), info.query.query_type()));
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

pub struct TestDns {
    pub addr: SocketAddr,
    log: Arc<std::sync::Mutex<Vec<(String, RecordType)>>>,
    zones: BTreeMap<String, Arc<InMemoryZoneHandler>>,
    serial: u32,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn name(text: &str) -> Name {
    Name::from_str(text).expect("valid name")
}

/// An SRV record's data.
pub fn srv(priority: u16, weight: u16, port: u16, target: &str) -> RData {
    RData::SRV(SRV::new(priority, weight, port, name(target)))
}

/// An A record's data.
pub fn a(ip: [u8; 4]) -> RData {
    RData::A(A(Ipv4Addr::from(ip)))
}

impl TestDns {
    /// A server authoritative for each of `zones` (such as `"test."`).
    pub async fn start(zones: &[&str]) -> TestDns {
        let mut catalog = Catalog::new();
        let mut handlers = BTreeMap::new();
        for &origin in zones {
            let zone = Arc::new(InMemoryZoneHandler::empty(
                name(origin),
                ZoneType::Primary,
                AxfrPolicy::Deny,
            ));
            let soa = SOA::new(
                name(&format!("ns.{origin}")),
                name(&format!("admin.{origin}")),
                1,
                60,
                60,
                600,
                1,
            );
            zone.upsert(Record::from_rdata(name(origin), 1, RData::SOA(soa)), 1)
                .await;
            catalog.upsert(
                LowerName::from(name(origin)),
                vec![zone.clone() as Arc<dyn ZoneHandler>],
            );
            handlers.insert(origin.to_owned(), zone);
        }
        // UDP and TCP on the same port, as resolvers expect.
        let (udp, tcp) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind udp");
            let port = udp.local_addr().expect("addr").port();
            if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("addr");
        let log = Arc::default();
        let mut server = Server::new(Logged {
            catalog,
            log: Arc::clone(&log),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        let task = tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        TestDns {
            addr,
            log,
            zones: handlers,
            serial: 1,
            task,
        }
    }

    /// The queries received so far: name and type.
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.log.lock().expect("lock").clone()
    }

    /// Replaces the records of one name and type, each with `ttl` seconds.
    pub async fn set(&mut self, owner: &str, record_type: RecordType, ttl: u32, data: Vec<RData>) {
        self.serial += 1;
        let owner = name(owner);
        let zone = self
            .zones
            .iter()
            .find(|(origin, _)| name(origin).zone_of(&owner))
            .map(|(_, zone)| zone.clone())
            .expect("a zone for the name");
        let key = RrKey::new(LowerName::from(owner.clone()), record_type);
        let mut records = zone.records_mut().await;
        if data.is_empty() {
            records.remove(&key);
            return;
        }
        let mut set = RecordSet::new(owner.clone(), record_type, self.serial);
        for rdata in data {
            set.insert(Record::from_rdata(owner.clone(), ttl, rdata), self.serial);
        }
        records.insert(key, Arc::new(set));
    }
}

/// A dnsmasq process serving records given as its command-line options, on 127.0.0.1.
pub struct Dnsmasq {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where dnsmasq is, if it is installed. Under CI (`CI=true`) it must be: a missing binary
/// fails the test instead of skipping it, so a green run cannot hide a missing install step.
pub fn dnsmasq_binary() -> Option<std::path::PathBuf> {
    let found = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "dnsmasq is not installed, and CI=true: .ci/run must install it (apt-get install dnsmasq-base)"
        );
        eprintln!("dnsmasq is not installed; skipping (it is required when CI=true)");
    }
    found
}

impl Dnsmasq {
    pub fn start(binary: &std::path::Path, records: &[String]) -> Dnsmasq {
        // A port free for UDP is not always free for TCP: another test's server may hold
        // it, and then dnsmasq exits, and the check below would reach that server. So the
        // port is taken on both first, and a dnsmasq that exits is started again on another.
        for _ in 0..10 {
            let Some(port) = free_udp_and_tcp_port() else {
                continue;
            };
            let mut command = std::process::Command::new(binary);
            command.args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--conf-file=/dev/null",
                "--pid-file=",
                "--user=root",
                "--log-facility=-",
                &format!("--port={port}"),
            ]);
            command.args(records);
            command.stdout(std::process::Stdio::null());
            command.stderr(std::process::Stdio::null());
            let mut child = command.spawn().expect("dnsmasq starts");
            // Wait until it answers on TCP (it opens UDP and TCP together), up to 10 s: a
            // machine busy with the rest of the suite can be slow to start it.
            let mut up = false;
            for _ in 0..1000 {
                if child.try_wait().expect("a child").is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if up && child.try_wait().expect("a child").is_none() {
                return Dnsmasq {
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    child,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start on a free port in ten tries");
    }
}

/// A port that was free for both UDP and TCP on 127.0.0.1 a moment ago.
fn free_udp_and_tcp_port() -> Option<u16> {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    let port = udp.local_addr().ok()?.port();
    let _tcp = std::net::TcpListener::bind(("127.0.0.1", port)).ok()?;
    Some(port)
}
