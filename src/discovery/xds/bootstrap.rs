//! gRPC's xDS bootstrap (gRFC A27): the control plane's address and the node's identity, read
//! from `GRPC_XDS_BOOTSTRAP` (a file) or `GRPC_XDS_BOOTSTRAP_CONFIG` (the JSON itself), and
//! Istio's usual environment for the node when the bootstrap names none.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node, node::UserAgentVersionType};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use serde::Deserialize;

use crate::error::Error;

/// The bootstrap's fields this client reads; the rest are ignored.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Bootstrap {
    #[serde(default)]
    pub(crate) xds_servers: Vec<Server>,
    #[serde(default)]
    pub(crate) node: Option<NodeJson>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Server {
    pub(crate) server_uri: String,
    #[serde(default)]
    pub(crate) channel_creds: Vec<Creds>,
    #[serde(default)]
    pub(crate) server_features: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Creds {
    #[serde(rename = "type")]
    pub(crate) kind: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct NodeJson {
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) cluster: String,
    #[serde(default)]
    pub(crate) locality: Option<LocalityJson>,
    #[serde(default)]
    pub(crate) metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LocalityJson {
    #[serde(default)]
    pub(crate) region: String,
    #[serde(default)]
    pub(crate) zone: String,
    #[serde(default)]
    pub(crate) sub_zone: String,
}

impl Bootstrap {
    pub(crate) fn parse(json: &str, source: &str) -> Result<Bootstrap, Error> {
        let mut de = serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            Error::builder(
                format!("{source}: {}", e.path()),
                format!("not a valid xDS bootstrap: {}", e.inner()),
            )
        })
    }

    /// The bootstrap named by the environment: `GRPC_XDS_BOOTSTRAP` (a file's path) or else
    /// `GRPC_XDS_BOOTSTRAP_CONFIG` (the JSON).
    pub(crate) fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Bootstrap, Error> {
        if let Some(path) = env("GRPC_XDS_BOOTSTRAP").filter(|p| !p.is_empty()) {
            let json = std::fs::read_to_string(&path).map_err(|e| {
                Error::builder("GRPC_XDS_BOOTSTRAP", format!("cannot read {path:?}: {e}"))
            })?;
            return Bootstrap::parse(&json, "GRPC_XDS_BOOTSTRAP");
        }
        if let Some(json) = env("GRPC_XDS_BOOTSTRAP_CONFIG").filter(|j| !j.is_empty()) {
            return Bootstrap::parse(&json, "GRPC_XDS_BOOTSTRAP_CONFIG");
        }
        Err(Error::builder(
            "GRPC_XDS_BOOTSTRAP",
            "neither GRPC_XDS_BOOTSTRAP nor GRPC_XDS_BOOTSTRAP_CONFIG is set",
        ))
    }
}

/// A control plane's address as a URI tonic connects to: `host:port`, `dns:///host:port` and
/// `http://host:port` are accepted.
pub(crate) fn server_uri(uri: &str) -> Result<String, Error> {
    let bare = uri
        .strip_prefix("dns:///")
        .or_else(|| uri.strip_prefix("http://"))
        .unwrap_or(uri);
    if bare.contains("://") || bare.starts_with("unix:") || bare.starts_with("https:") {
        return Err(Error::builder(
            "xds_servers[0].server_uri",
            "only host:port, dns:///host:port and http://host:port are supported",
        ));
    }
    let url = format!("http://{bare}");
    match url::Url::parse(&url) {
        Ok(u) if u.host_str().is_some() && u.port().is_some() && u.path() == "/" => Ok(url),
        _ => Err(Error::builder(
            "xds_servers[0].server_uri",
            "must be host:port with a port",
        )),
    }
}

/// Checks a server's channel credentials: only `insecure` is supported (the connection to
/// the control plane is plaintext HTTP/2, as Istio's port 15010 serves).
pub(crate) fn check_creds(server: &Server) -> Result<(), Error> {
    if server.channel_creds.is_empty() || server.channel_creds.iter().any(|c| c.kind == "insecure")
    {
        return Ok(());
    }
    Err(Error::builder(
        "xds_servers[0].channel_creds",
        "only \"insecure\" is supported; TLS to the control plane is not yet",
    ))
}

/// The node as sent: the bootstrap's, else filled from Istio's environment (`POD_NAME`,
/// `POD_NAMESPACE`, `INSTANCE_IP`, `ISTIO_META_*`), as istio-agent writes a gRPC
/// bootstrap.
pub(crate) fn node(
    json: Option<&NodeJson>,
    env: &dyn Fn(&str) -> Option<String>,
    vars: &[(String, String)],
) -> Node {
    let mut node = Node {
        user_agent_name: "proxyless".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        client_features: vec!["envoy.lb.does_not_support_overprovisioning".into()],
        ..Default::default()
    };
    if let Some(json) = json {
        node.id.clone_from(&json.id);
        node.cluster.clone_from(&json.cluster);
        if let Some(l) = &json.locality {
            node.locality = Some(Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            });
        }
        if !json.metadata.is_empty() {
            node.metadata = Some(to_struct(&json.metadata));
        }
    }
    if node.id.is_empty()
        && let (Some(pod), Some(ns), Some(ip)) =
            (env("POD_NAME"), env("POD_NAMESPACE"), env("INSTANCE_IP"))
    {
        {
            node.id = format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local");
            let mut fields: HashMap<String, Value> =
                node.metadata.take().map(|s| s.fields).unwrap_or_default();
            // What istio-agent's gRPC bootstrap sends: istiod then generates gRPC's flavour.
            fields
                .entry("GENERATOR".into())
                .or_insert_with(|| string("grpc"));
            fields
                .entry("NAMESPACE".into())
                .or_insert_with(|| string(&ns));
            fields
                .entry("INSTANCE_IPS".into())
                .or_insert_with(|| string(&ip));
            for (key, value) in vars {
                if let Some(name) = key.strip_prefix("ISTIO_META_") {
                    fields.entry(name.into()).or_insert_with(|| string(value));
                }
            }
            node.metadata = Some(Struct { fields });
        }
    }
    if node.cluster.is_empty()
        && let Some(cluster) = env("ISTIO_META_CLUSTER_ID").or_else(|| env("SERVICE_CLUSTER"))
    {
        node.cluster = cluster;
    }
    node
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn to_struct(map: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn to_value(v: &serde_json::Value) -> Value {
    use envoy_types::pb::google::protobuf::ListValue;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_bootstrap_is_read() {
        let b = Bootstrap::parse(
            r#"{"xds_servers": [{"server_uri": "dns:///istiod.istio-system.svc:15010",
                 "channel_creds": [{"type": "google_default"}, {"type": "insecure"}],
                 "server_features": ["xds_v3", "ignore_resource_deletion"]}],
                "node": {"id": "n1", "cluster": "c", "locality": {"zone": "z1"},
                         "metadata": {"GENERATOR": "grpc", "N": 2}},
                "certificate_providers": {}}"#,
            "test",
        )
        .unwrap();
        assert_eq!(
            server_uri(&b.xds_servers[0].server_uri).unwrap(),
            "http://istiod.istio-system.svc:15010"
        );
        check_creds(&b.xds_servers[0]).unwrap();
        let node = node(b.node.as_ref(), &|_| None, &[]);
        assert_eq!(node.id, "n1");
        assert_eq!(node.locality.unwrap().zone, "z1");
        assert_eq!(node.metadata.unwrap().fields.len(), 2);
    }

    #[test]
    fn the_node_follows_istios_environment_when_the_bootstrap_names_none() {
        let env = |k: &str| match k {
            "POD_NAME" => Some("orders-7f9c".to_owned()),
            "POD_NAMESPACE" => Some("shop".to_owned()),
            "INSTANCE_IP" => Some("10.1.2.3".to_owned()),
            _ => None,
        };
        let vars = [("ISTIO_META_MESH_ID".to_owned(), "m1".to_owned())];
        let node = node(None, &env, &vars);
        assert_eq!(
            node.id,
            "sidecar~10.1.2.3~orders-7f9c.shop~shop.svc.cluster.local"
        );
        let meta = node.metadata.unwrap().fields;
        assert_eq!(meta["GENERATOR"], string("grpc"));
        assert_eq!(meta["MESH_ID"], string("m1"));
    }

    #[test]
    fn bad_bootstraps_are_builder_errors_with_their_path() {
        let e = Bootstrap::parse(r#"{"xds_servers": [{"server_uri": 7}]}"#, "f").unwrap_err();
        assert!(e.to_string().contains("xds_servers[0].server_uri"), "{e}");
        assert!(server_uri("unix:///var/run/xds.sock").is_err());
        assert!(server_uri("istiod").is_err());
        let tls_only = Server {
            server_uri: "a:1".into(),
            channel_creds: vec![Creds { kind: "tls".into() }],
            server_features: vec![],
        };
        assert!(check_creds(&tls_only).is_err());
    }
}
