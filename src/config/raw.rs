//! The TOML file as written: serde types with every key optional, so validation can name what is wrong.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub global: RawGlobal,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub server: Vec<RawServer>,
    #[serde(default)]
    pub upstream: BTreeMap<String, RawUpstream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    pub workers: Option<i64>,
    pub max_connections: Option<i64>,
    pub shutdown_timeout: Option<String>,
    pub access_log: Option<String>,
    pub resolver: Option<Vec<String>>,
    pub resolve_min: Option<String>,
    pub resolve_max: Option<String>,
    pub upgrade_linger: Option<String>,
    pub close_spread: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Vec<String>>,
    pub server_name: Option<Vec<String>>,
    pub tls: Option<RawTls>,
    pub proxy_protocol: Option<bool>,
    pub proxy_protocol_from: Option<Vec<String>>,
    pub max_connections_per_ip: Option<i64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub client_header_timeout: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub max_header_bytes: Option<i64>,
    pub http2: Option<bool>,
    pub h2c: Option<bool>,
    pub websocket_over_h2: Option<bool>,
    pub max_concurrent_streams: Option<i64>,
    #[serde(default)]
    pub location: Vec<RawLocation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocation {
    pub path: Option<String>,
    pub proxy_pass: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub set_header: Option<BTreeMap<String, String>>,
    pub client_max_body_size: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub balance: Option<String>,
    pub hash_key: Option<String>,
    pub keepalive: Option<i64>,
    pub keepalive_timeout: Option<String>,
    pub retries: Option<i64>,
    pub tls: Option<bool>,
    pub tls_ca: Option<String>,
    pub tls_server_name: Option<String>,
    pub sticky: Option<RawSticky>,
    #[serde(default)]
    pub server: Vec<RawUpstreamServer>,
    pub health_check: Option<RawHealthCheck>,
    pub state_file: Option<String>,
}

/// An upstream's `state_file`: its server list, in the config's `[[server]]` form.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStateFile {
    #[serde(default)]
    pub server: Vec<RawUpstreamServer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub path: Option<String>,
    pub fallback: Option<String>,
    pub session_ttl: Option<String>,
    pub max_sessions: Option<i64>,
    pub store: Option<String>,
    pub key_prefix: Option<String>,
    pub sid_prefix: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamServer {
    pub addr: Option<String>,
    pub resolve: Option<bool>,
    pub service: Option<String>,
    pub slow_start: Option<String>,
    pub weight: Option<i64>,
    pub max_fails: Option<i64>,
    pub fail_timeout: Option<String>,
    pub max_conns: Option<i64>,
    pub backup: Option<bool>,
    pub down: Option<bool>,
    pub drain: Option<bool>,
    pub route: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub fails: Option<i64>,
    pub passes: Option<i64>,
    pub expect_status: Option<String>,
    pub host: Option<String>,
}
