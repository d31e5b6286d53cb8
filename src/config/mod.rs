//! The configuration: TOML types as written (`raw`), the validated model below, and the checks between them.
//!
//! Loading is total: every problem is collected with its key path (`upstream.io.server[2].weight`) before
//! failing, so `limpet --check` lists them all the way `nginx -t` would if it could.

mod de;
mod raw;
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
    pub servers: Vec<ServerSpec>,
    pub health_check: Option<HealthCheck>,
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
