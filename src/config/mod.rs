//! The configuration: TOML types as written (`raw`), the validated model below, and the checks between them.
//!
//! Loading is total: every problem is collected with its key path (`upstream.io.server[2].weight`) before
//! failing, so `limpet --check` lists them all the way `nginx -t` would if it could.

mod de;
mod raw;
pub mod state_file;
mod units;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};

pub use units::{canonical as canonical_ip, Cidr};

/// The default config file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/limpet.toml";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub global: Global,
    pub admin: Option<Admin>,
    pub servers: Vec<ServerBlock>,
    pub upstreams: BTreeMap<String, Upstream>,
}

#[derive(Debug, Clone)]
pub struct Global {
    /// Runtime worker threads; 0 = one per core.
    pub workers: usize,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
    pub access_log: AccessLog,
    /// DNS servers for servers with `resolve` or `service`; empty = the system's.
    pub resolver: Vec<SocketAddr>,
    /// Re-resolve no sooner than this, however short the record's TTL.
    pub resolve_min: Duration,
    /// Re-resolve no later than this, however long the record's TTL.
    pub resolve_max: Duration,
    /// After a binary upgrade, how long the old process keeps its tunnels and in-flight requests.
    pub upgrade_linger: Duration,
    /// Many tunnels to close at once (shutdown, the end of `upgrade_linger`) are closed over this time.
    pub close_spread: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// The bearer token every state-changing endpoint asks for (read from `token_file`); None = no token set,
    /// allowed on a loopback `listen` only.
    pub token: Option<AdminToken>,
}

/// The admin bearer token; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// One `[[server]]`: a set of listen addresses and the locations served on them.
#[derive(Debug, Clone)]
pub struct ServerBlock {
    pub listen: Vec<SocketAddr>,
    pub server_name: Vec<String>,
    pub tls: Option<TlsFiles>,
    pub proxy_protocol: bool,
    /// Peers that may (and must) send a PROXY header; empty = every peer. A PROXY header from any other peer
    /// closes its connection.
    pub proxy_protocol_from: Vec<Cidr>,
    /// Client connections one address may hold on each listen address; 0 = no cap.
    pub max_connections_per_ip: usize,
    pub trusted_proxies: Vec<Cidr>,
    pub client_header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
    /// HTTP/2 settings of the client side.
    pub h2: Http2,
    pub locations: Vec<Location>,
}

/// How a listener speaks HTTP/2 to clients (every stream still goes to the fleet as HTTP/1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2 {
    /// TLS listeners offer `h2` by ALPN.
    pub over_tls: bool,
    /// Plaintext listeners accept HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// RFC 8441 extended CONNECT (`:protocol = websocket`), relayed to the server as an HTTP/1.1 Upgrade.
    pub websocket: bool,
    /// Streams one connection may have open at once.
    pub max_concurrent_streams: u32,
}

/// A certificate chain file and its private key file, both PEM (loaded by [`crate::tls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Location {
    pub path: String,
    pub proxy_pass: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub set_header: Vec<(HeaderName, HeaderValue)>,
    /// 0 = unlimited.
    pub client_max_body_size: u64,
}

/// How an upstream picks a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    IpHash,
    Hash,
    Sid,
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    RemoteAddr,
    Cookie(String),
    Arg(String),
    Header(HeaderName),
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    pub hash_key: HashKey,
    pub keepalive: usize,
    /// How long a pooled connection may stay idle before it is closed.
    pub keepalive_timeout: Duration,
    pub retries: u32,
    pub tls: Option<UpstreamTls>,
    pub sticky: Sticky,
    /// The servers with a fixed address (and, in a running snapshot, those DNS and the runtime API added).
    pub servers: Vec<ServerSpec>,
    /// The entries whose servers DNS names while running (`resolve = true` or `service`).
    pub dns: Vec<DnsEntry>,
    pub health_check: Option<HealthCheck>,
    /// Where this upstream's server list lives, when the runtime API keeps it in a file.
    pub state_file: Option<PathBuf>,
}

/// A server entry whose addresses DNS gives while running: each one is a server with the entry's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEntry {
    pub lookup: Lookup,
    /// The entry's settings; `name` is the entry as written, `addr` is unused.
    pub template: ServerSpec,
}

/// What a [`DnsEntry`] looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A and AAAA records of `host`, each at `port` (`addr` with `resolve = true`).
    Host { host: String, port: u16 },
    /// SRV records (`service`): hosts, ports and weights.
    Service(String),
}

/// One validated server entry: a fixed address, or one DNS fills in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEntry {
    Fixed(ServerSpec),
    Dns(DnsEntry),
}

impl ServerEntry {
    /// The entry as written: its address or its service name.
    pub fn name(&self) -> &str {
        match self {
            ServerEntry::Fixed(s) => &s.name,
            ServerEntry::Dns(d) => &d.template.name,
        }
    }
}

/// A server entry sent to the runtime API as JSON with the keys of `[[upstream.NAME.server]]`, validated with the
/// config's rules (a host name in `addr` is resolved here: call it off the runtime's workers). Every problem comes
/// back with its key.
pub fn api_server_entry(json: serde_json::Value) -> Result<ServerEntry, Vec<Problem>> {
    let raw: raw::RawUpstreamServer = serde_path_to_error::deserialize(json).map_err(|e| {
        vec![Problem {
            path: e.path().to_string().replace('?', ""),
            message: e.into_inner().to_string(),
        }]
    })?;
    validate::api_entry(&raw)
}

/// Where a server of a running upstream comes from (the `origin` label of `limpet_upstream_servers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Listed in the config file (or, with `state_file`, in the file as first seeded from it).
    Config,
    /// Named by a DNS answer for a `resolve` or `service` entry.
    Dns,
    /// Added through the runtime API.
    Api,
}

impl Origin {
    pub const ALL: [Origin; 3] = [Origin::Config, Origin::Dns, Origin::Api];

    /// The origin a [`Origin::label`] names.
    pub fn from_label(label: &str) -> Option<Origin> {
        Origin::ALL.into_iter().find(|o| o.label() == label)
    }

    pub fn label(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Dns => "dns",
            Origin::Api => "api",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Sticky {
    pub path: String,
    /// Never `Balance::Sid`.
    pub fallback: Balance,
    pub session_ttl: Duration,
    pub max_sessions: usize,
    pub store: Store,
    pub key_prefix: String,
    pub sid_prefix: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    Local,
    Redis(String),
}

/// One `[[upstream.NAME.server]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// The address as written (`host:port`): the label in metrics and the key for carried-over state.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// 0 = unlimited.
    pub max_conns: u32,
    pub backup: bool,
    pub down: bool,
    pub drain: bool,
    pub route: String,
    /// A server coming up ramps from near zero to its weight over this time.
    pub slow_start: Duration,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub fails: u32,
    pub passes: u32,
    pub expect_status: (u16, u16),
}

/// One problem in a config file, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
#[error("{}", display_problems(.file, .problems))]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

fn display_problems(file: &str, problems: &[Problem]) -> String {
    let mut out = format!("{file}: {} error(s)", problems.len());
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out
}

/// A loaded config and the warnings it raised (things that work but are probably not meant).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        problems: vec![Problem {
            path: String::new(),
            message: format!("cannot read file: {e}"),
        }],
    })?;
    parse(&text).map_err(|problems| ConfigError { file, problems })
}

/// Parses and validates config text; relative file paths in it stay relative to the working directory,
/// as nginx's do relative to its prefix.
pub fn parse(text: &str) -> Result<Loaded, Vec<Problem>> {
    let de::Parsed {
        raw,
        mut problems,
        removed,
    } = de::parse(text);
    let Some(raw) = raw else {
        return Err(problems);
    };
    // Semantic checks run on what was understood; a key already reported as malformed is not reported again
    // as missing.
    match validate::validate(raw) {
        Ok(loaded) if problems.is_empty() => Ok(loaded),
        Ok(_) => Err(problems),
        Err(more) => {
            problems.extend(
                more.into_iter()
                    .filter(|p| !de::under_removed(&p.path, &removed)),
            );
            Err(problems)
        }
    }
}
