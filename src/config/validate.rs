//! Raw TOML types → the validated model, collecting every problem with its key path.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::raw::*;
use super::units::{parse_duration, parse_size, Cidr};
use super::*;

const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
const DEFAULT_MAX_HEADER_BYTES: i64 = 16_384;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CLIENT_MAX_BODY: u64 = 1 << 20;
const DEFAULT_KEEPALIVE: i64 = 64;
const DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_RETRIES: i64 = 1;
const DEFAULT_STICKY_PATH: &str = "/socket.io/";
const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(90);
const DEFAULT_MAX_SESSIONS: i64 = 1_000_000;
const DEFAULT_KEY_PREFIX: &str = "limpet:sid:";
const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEALTH_PATH: &str = "/socket.io/?EIO=4&transport=polling";
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest duration any key takes (HAProxy caps its timeouts near 24.8 days, nginx near 24.8 days too).
const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);
/// A token shorter than this is accepted with a warning.
const MIN_TOKEN_LEN: usize = 16;
/// Socket.IO's default pingInterval + pingTimeout: a shorter read timeout cuts long-polls and idle WebSockets.
const SOCKETIO_PING_WINDOW: Duration = Duration::from_secs(45);

/// Collects problems and warnings while walking the raw config.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Checker {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// A duration, at most [`MAX_DURATION`] (so deadlines computed from it never overflow).
    fn duration(&mut self, path: &str, value: &Option<String>, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(text) {
            Ok(d) if d <= MAX_DURATION => d,
            Ok(_) => {
                self.error(
                    path,
                    format!(
                        "{text:?} is too long: at most \"{}d\"",
                        MAX_DURATION.as_secs() / 86_400
                    ),
                );
                default
            }
            Err(e) => {
                self.error(path, e);
                default
            }
        }
    }

    /// A list of CIDRs (`10.0.0.0/8`, `::1`).
    fn cidrs(&mut self, path: &str, value: &Option<Vec<String>>) -> Vec<Cidr> {
        value
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, t)| {
                t.parse::<Cidr>()
                    .map_err(|e| self.error(format!("{path}[{i}]"), e))
                    .ok()
            })
            .collect()
    }

    fn positive_duration(
        &mut self,
        path: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path, value, default);
        if d.is_zero() {
            self.error(path, "must be greater than zero");
        }
        d
    }

    fn int(
        &mut self,
        path: &str,
        value: Option<i64>,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> i64 {
        let v = value.unwrap_or(default);
        if !range.contains(&v) {
            self.error(
                path,
                format!("must be {}..={}, got {v}", range.start(), range.end()),
            );
            return default;
        }
        v
    }

    fn listen_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Some(addr);
        }
        match text.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Some(addr),
            _ => {
                self.error(
                    path,
                    format!("invalid address {text:?} (write host:port, e.g. \"127.0.0.1:8080\")"),
                );
                None
            }
        }
    }
}

/// Validates a raw config into the typed model, or returns every problem found.
pub(super) fn validate(raw: RawConfig) -> Result<Loaded, Vec<Problem>> {
    let mut c = Checker::default();
    let global = global(&mut c, &raw.global);
    let admin = raw.admin.as_ref().and_then(|a| admin(&mut c, a));
    let upstreams = upstreams(&mut c, &raw.upstream);
    let servers = server_blocks(&mut c, &raw.server, &upstreams);
    check_listen_conflicts(&mut c, &servers, admin.as_ref());
    if c.problems.is_empty() {
        Ok(Loaded {
            config: Config {
                global,
                admin,
                servers,
                upstreams,
            },
            warnings: c.warnings,
        })
    } else {
        Err(c.problems)
    }
}

fn global(c: &mut Checker, g: &RawGlobal) -> Global {
    let workers = c.int("global.workers", g.workers, 0, 0..=1024) as usize;
    let max_connections = c.int(
        "global.max_connections",
        g.max_connections,
        DEFAULT_MAX_CONNECTIONS as i64,
        1..=10_000_000,
    ) as usize;
    let shutdown_timeout = c.duration(
        "global.shutdown_timeout",
        &g.shutdown_timeout,
        DEFAULT_SHUTDOWN_TIMEOUT,
    );
    let access_log = match g.access_log.as_deref() {
        None | Some("off") => AccessLog::Off,
        Some("stderr") => AccessLog::Stderr,
        Some("") => {
            c.error(
                "global.access_log",
                "must be \"off\", \"stderr\" or a file path",
            );
            AccessLog::Off
        }
        Some(path) => AccessLog::File(PathBuf::from(path)),
    };
    Global {
        workers,
        max_connections,
        shutdown_timeout,
        access_log,
    }
}

fn admin(c: &mut Checker, a: &RawAdmin) -> Option<Admin> {
    let text = a.listen.as_deref().unwrap_or("127.0.0.1:9100");
    let listen = c.listen_addr("admin.listen", text)?;
    let token = match a.token_file.as_deref() {
        Some(file) if !file.is_empty() => admin_token(c, file),
        _ => {
            if !listen.ip().is_loopback() {
                c.error(
                    "admin.listen",
                    format!("{listen} is not a loopback address: set admin.token_file (a bearer token for reload, drain and the server API)"),
                );
            }
            None
        }
    };
    Some(Admin { listen, token })
}

/// Reads the admin token: the file's text without surrounding whitespace, one line of visible ASCII.
fn admin_token(c: &mut Checker, file: &str) -> Option<AdminToken> {
    let path = "admin.token_file";
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            c.error(path, format!("cannot read {file}: {e}"));
            return None;
        }
    };
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        c.error(
            path,
            format!("{file} must hold one token of visible ASCII characters"),
        );
        return None;
    }
    if token.len() < MIN_TOKEN_LEN {
        c.warn(
            path,
            format!("the token in {file} is shorter than {MIN_TOKEN_LEN} characters"),
        );
    }
    Some(AdminToken(token.to_string()))
}

fn upstreams(c: &mut Checker, raw: &BTreeMap<String, RawUpstream>) -> BTreeMap<String, Upstream> {
    let mut out = BTreeMap::new();
    for (name, u) in raw {
        let path = format!("upstream.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            c.error(
                &path,
                "upstream names may hold only letters, digits, '_' and '-'",
            );
        }
        out.insert(name.clone(), upstream(c, &path, name, u));
    }
    out
}

fn balance(c: &mut Checker, path: &str, value: Option<&str>, default: Balance) -> Balance {
    match value {
        None => default,
        Some("round_robin") => Balance::RoundRobin,
        Some("least_conn") => Balance::LeastConn,
        Some("ip_hash") => Balance::IpHash,
        Some("hash") => Balance::Hash,
        Some("sid") => Balance::Sid,
        Some(other) => {
            c.error(
                path,
                format!(
                    "unknown method {other:?} (one of round_robin, least_conn, ip_hash, hash, sid)"
                ),
            );
            default
        }
    }
}

fn upstream(c: &mut Checker, path: &str, name: &str, u: &RawUpstream) -> Upstream {
    let balance = balance(
        c,
        &format!("{path}.balance"),
        u.balance.as_deref(),
        Balance::RoundRobin,
    );
    let hash_key = hash_key(c, &format!("{path}.hash_key"), u.hash_key.as_deref());
    let keepalive = c.int(
        &format!("{path}.keepalive"),
        u.keepalive,
        DEFAULT_KEEPALIVE,
        0..=100_000,
    ) as usize;
    let keepalive_timeout = c.positive_duration(
        &format!("{path}.keepalive_timeout"),
        &u.keepalive_timeout,
        DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT,
    );
    let retries = c.int(
        &format!("{path}.retries"),
        u.retries,
        DEFAULT_RETRIES,
        0..=100,
    ) as u32;
    let tls = upstream_tls(c, path, u);
    let sticky = sticky(c, &format!("{path}.sticky"), u.sticky.as_ref());
    if u.sticky.is_some() && balance != Balance::Sid {
        c.warn(
            format!("{path}.sticky"),
            "is used only with balance = \"sid\"",
        );
    }
    if u.server.is_empty() {
        c.error(
            format!("{path}.server"),
            format!("at least one [[{path}.server]] is needed"),
        );
    }
    let servers: Vec<ServerSpec> = u
        .server
        .iter()
        .enumerate()
        .filter_map(|(i, s)| server_spec(c, &format!("{path}.server[{i}]"), s))
        .collect();
    check_server_set(c, path, &servers, &sticky);
    let health_check = u
        .health_check
        .as_ref()
        .map(|h| health_check(c, &format!("{path}.health_check"), h));
    Upstream {
        name: name.to_string(),
        balance,
        hash_key,
        keepalive,
        keepalive_timeout,
        retries,
        tls,
        sticky,
        servers,
        health_check,
    }
}

fn upstream_tls(c: &mut Checker, path: &str, u: &RawUpstream) -> Option<UpstreamTls> {
    if u.tls != Some(true) {
        if u.tls_ca.is_some() || u.tls_server_name.is_some() {
            c.warn(
                format!("{path}.tls"),
                "tls_ca / tls_server_name are ignored while tls = false",
            );
        }
        return None;
    }
    let ca = u.tls_ca.as_ref().map(PathBuf::from);
    if let Some(ca) = &ca {
        if let Err(e) = std::fs::metadata(ca) {
            c.error(
                format!("{path}.tls_ca"),
                format!("cannot read {}: {e}", ca.display()),
            );
        }
    }
    Some(UpstreamTls {
        ca,
        server_name: u.tls_server_name.clone(),
    })
}

fn hash_key(c: &mut Checker, path: &str, value: Option<&str>) -> HashKey {
    let value = value.unwrap_or("$remote_addr");
    let parsed = if value == "$remote_addr" {
        Some(HashKey::RemoteAddr)
    } else if let Some(name) = value.strip_prefix("$cookie_").filter(|n| !n.is_empty()) {
        Some(HashKey::Cookie(name.to_string()))
    } else if let Some(name) = value.strip_prefix("$arg_").filter(|n| !n.is_empty()) {
        Some(HashKey::Arg(name.to_string()))
    } else if let Some(name) = value.strip_prefix("$http_") {
        HeaderName::from_bytes(name.replace('_', "-").as_bytes())
            .ok()
            .map(HashKey::Header)
    } else {
        None
    };
    parsed.unwrap_or_else(|| {
        c.error(
            path,
            format!("unsupported key {value:?} (one of $remote_addr, $cookie_NAME, $arg_NAME, $http_NAME)"),
        );
        HashKey::RemoteAddr
    })
}

fn sticky(c: &mut Checker, path: &str, s: Option<&RawSticky>) -> Sticky {
    let empty = RawSticky::default();
    let s = s.unwrap_or(&empty);
    let sticky_path = s
        .path
        .clone()
        .unwrap_or_else(|| DEFAULT_STICKY_PATH.to_string());
    if !sticky_path.starts_with('/') {
        c.error(
            format!("{path}.path"),
            format!("must start with '/', got {sticky_path:?}"),
        );
    }
    let fallback_path = format!("{path}.fallback");
    let fallback = balance(c, &fallback_path, s.fallback.as_deref(), Balance::LeastConn);
    if fallback == Balance::Sid {
        c.error(&fallback_path, "the fallback of sid must be another method");
    }
    let session_ttl = c.positive_duration(
        &format!("{path}.session_ttl"),
        &s.session_ttl,
        DEFAULT_SESSION_TTL,
    );
    let max_sessions = c.int(
        &format!("{path}.max_sessions"),
        s.max_sessions,
        DEFAULT_MAX_SESSIONS,
        1..=100_000_000,
    ) as usize;
    let store = match s.store.as_deref() {
        None | Some("local") => Store::Local,
        Some(url) if url.starts_with("redis://") => {
            if let Err(e) = redis::Client::open(url) {
                c.error(
                    format!("{path}.store"),
                    format!("invalid Redis URL {url:?}: {e} (write \"redis://host:port/db\")"),
                );
            }
            Store::Redis(url.to_string())
        }
        Some(other) => {
            c.error(
                format!("{path}.store"),
                format!("must be \"local\" or \"redis://host:port/db\", got {other:?}"),
            );
            Store::Local
        }
    };
    Sticky {
        path: sticky_path,
        fallback,
        session_ttl,
        max_sessions,
        store,
        key_prefix: s
            .key_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string()),
        sid_prefix: s.sid_prefix.unwrap_or(false),
    }
}

fn server_spec(c: &mut Checker, path: &str, s: &RawUpstreamServer) -> Option<ServerSpec> {
    let Some(name) = s.addr.clone() else {
        c.error(format!("{path}.addr"), "missing (host:port of the server)");
        return None;
    };
    let addr = upstream_addr(c, &format!("{path}.addr"), &name);
    let weight = c.int(&format!("{path}.weight"), s.weight, 1, 1..=1000) as u32;
    let max_fails = c.int(&format!("{path}.max_fails"), s.max_fails, 1, 0..=1000) as u32;
    let fail_timeout = c.positive_duration(
        &format!("{path}.fail_timeout"),
        &s.fail_timeout,
        DEFAULT_FAIL_TIMEOUT,
    );
    let max_conns = c.int(&format!("{path}.max_conns"), s.max_conns, 0, 0..=10_000_000) as u32;
    let route = s.route.clone().unwrap_or_default();
    if route.contains(['.', '/', ' ']) {
        c.error(
            format!("{path}.route"),
            "must not contain '.', '/' or spaces",
        );
    }
    Some(ServerSpec {
        name,
        addr: addr?,
        weight,
        max_fails,
        fail_timeout,
        max_conns,
        backup: s.backup.unwrap_or(false),
        down: s.down.unwrap_or(false),
        drain: s.drain.unwrap_or(false),
        route,
    })
}

fn upstream_addr(c: &mut Checker, path: &str, text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let has_port = text
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !has_port {
        c.error(
            path,
            format!("invalid address {text:?} (write host:port, e.g. \"10.0.0.1:3000\")"),
        );
        return None;
    }
    match text.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Some(addr),
        Ok(None) => {
            c.error(path, format!("{text:?} resolves to no address"));
            None
        }
        Err(e) => {
            c.error(path, format!("cannot resolve {text:?}: {e}"));
            None
        }
    }
}

fn check_server_set(c: &mut Checker, path: &str, servers: &[ServerSpec], sticky: &Sticky) {
    let mut seen = HashSet::new();
    for (i, s) in servers.iter().enumerate() {
        if !seen.insert(&s.name) {
            c.error(
                format!("{path}.server[{i}].addr"),
                format!("{:?} is listed twice", s.name),
            );
        }
    }
    if sticky.sid_prefix {
        let mut routes = HashSet::new();
        for (i, s) in servers.iter().enumerate() {
            if s.route.is_empty() {
                c.error(
                    format!("{path}.server[{i}].route"),
                    "sticky.sid_prefix needs a route on every server",
                );
            } else if !routes.insert(&s.route) {
                c.error(
                    format!("{path}.server[{i}].route"),
                    format!("{:?} is used twice", s.route),
                );
            }
        }
    }
}

fn health_check(c: &mut Checker, path: &str, h: &RawHealthCheck) -> HealthCheck {
    let check_path = h
        .path
        .clone()
        .unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_string());
    if !check_path.starts_with('/') {
        c.error(
            format!("{path}.path"),
            format!("must start with '/', got {check_path:?}"),
        );
    }
    let interval = c.positive_duration(
        &format!("{path}.interval"),
        &h.interval,
        DEFAULT_HEALTH_INTERVAL,
    );
    let timeout = c.positive_duration(
        &format!("{path}.timeout"),
        &h.timeout,
        DEFAULT_HEALTH_TIMEOUT,
    );
    let fails = c.int(&format!("{path}.fails"), h.fails, 2, 1..=100) as u32;
    let passes = c.int(&format!("{path}.passes"), h.passes, 2, 1..=100) as u32;
    let expect_status = status_range(
        c,
        &format!("{path}.expect_status"),
        h.expect_status.as_deref(),
    );
    HealthCheck {
        path: check_path,
        host: h.host.clone(),
        interval,
        timeout,
        fails,
        passes,
        expect_status,
    }
}

fn status_range(c: &mut Checker, path: &str, value: Option<&str>) -> (u16, u16) {
    let value = value.unwrap_or("200-399");
    let parse = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|v| (100..=599).contains(v))
    };
    let range = match value.split_once('-') {
        Some((a, b)) => parse(a).zip(parse(b)),
        None => parse(value).map(|v| (v, v)),
    };
    match range {
        Some((lo, hi)) if lo <= hi => (lo, hi),
        _ => {
            c.error(
                path,
                format!("invalid status range {value:?} (write e.g. \"200-399\" or \"200\")"),
            );
            (200, 399)
        }
    }
}

fn server_blocks(
    c: &mut Checker,
    raw: &[RawServer],
    ups: &BTreeMap<String, Upstream>,
) -> Vec<ServerBlock> {
    if raw.is_empty() {
        c.error("server", "at least one [[server]] is needed");
    }
    raw.iter()
        .enumerate()
        .map(|(i, s)| server_block(c, &format!("server[{i}]"), s, ups))
        .collect()
}

fn server_block(
    c: &mut Checker,
    path: &str,
    s: &RawServer,
    ups: &BTreeMap<String, Upstream>,
) -> ServerBlock {
    let listen_raw = s.listen.clone().unwrap_or_default();
    if listen_raw.is_empty() {
        c.error(format!("{path}.listen"), "at least one host:port is needed");
    }
    let listen = listen_raw
        .iter()
        .enumerate()
        .filter_map(|(i, l)| c.listen_addr(&format!("{path}.listen[{i}]"), l))
        .collect();
    let tls = s
        .tls
        .as_ref()
        .and_then(|t| tls_files(c, &format!("{path}.tls"), t));
    let trusted_proxies = c.cidrs(&format!("{path}.trusted_proxies"), &s.trusted_proxies);
    let proxy_protocol = s.proxy_protocol.unwrap_or(false);
    let proxy_protocol_from = c.cidrs(
        &format!("{path}.proxy_protocol_from"),
        &s.proxy_protocol_from,
    );
    if proxy_protocol && proxy_protocol_from.is_empty() {
        c.warn(
            format!("{path}.proxy_protocol_from"),
            "empty: any peer that reaches this listener may claim any client address (list the balancers' CIDRs)",
        );
    } else if !proxy_protocol && !proxy_protocol_from.is_empty() {
        c.warn(
            format!("{path}.proxy_protocol_from"),
            "has no effect without proxy_protocol = true",
        );
    }
    let max_connections_per_ip = c.int(
        &format!("{path}.max_connections_per_ip"),
        s.max_connections_per_ip,
        0,
        0..=10_000_000,
    ) as usize;
    let client_header_timeout = c.positive_duration(
        &format!("{path}.client_header_timeout"),
        &s.client_header_timeout,
        DEFAULT_CLIENT_HEADER_TIMEOUT,
    );
    let keepalive_timeout = c.duration(
        &format!("{path}.keepalive_timeout"),
        &s.keepalive_timeout,
        DEFAULT_KEEPALIVE_TIMEOUT,
    );
    let max_header_bytes = c.int(
        &format!("{path}.max_header_bytes"),
        s.max_header_bytes,
        DEFAULT_MAX_HEADER_BYTES,
        1024..=1 << 20,
    ) as usize;
    if s.location.is_empty() {
        c.error(
            format!("{path}.location"),
            "at least one [[server.location]] is needed",
        );
    }
    let mut locations: Vec<Location> = s
        .location
        .iter()
        .enumerate()
        .filter_map(|(i, l)| location(c, &format!("{path}.location[{i}]"), l, ups))
        .collect();
    // Longest prefix first, so routing takes the first match.
    locations.sort_by_key(|l| std::cmp::Reverse(l.path.len()));
    ServerBlock {
        listen,
        server_name: s.server_name.clone().unwrap_or_default(),
        tls,
        proxy_protocol,
        proxy_protocol_from,
        max_connections_per_ip,
        trusted_proxies,
        client_header_timeout,
        keepalive_timeout,
        max_header_bytes,
        locations,
    }
}

fn tls_files(c: &mut Checker, path: &str, t: &RawTls) -> Option<TlsFiles> {
    let mut file = |key: &str, value: &Option<String>| match value {
        None => {
            c.error(format!("{path}.{key}"), "missing (path of a PEM file)");
            None
        }
        Some(p) => {
            if let Err(e) = std::fs::metadata(p) {
                c.error(format!("{path}.{key}"), format!("cannot read {p}: {e}"));
            }
            Some(PathBuf::from(p))
        }
    };
    let cert = file("cert", &t.cert);
    let key = file("key", &t.key);
    Some(TlsFiles {
        cert: cert?,
        key: key?,
    })
}

fn location(
    c: &mut Checker,
    path: &str,
    l: &RawLocation,
    ups: &BTreeMap<String, Upstream>,
) -> Option<Location> {
    let loc_path = l.path.clone().unwrap_or_else(|| "/".to_string());
    if !loc_path.starts_with('/') {
        c.error(
            format!("{path}.path"),
            format!("must start with '/', got {loc_path:?}"),
        );
    }
    let proxy_pass = match &l.proxy_pass {
        None => {
            c.error(
                format!("{path}.proxy_pass"),
                "missing (the name of an [upstream.NAME])",
            );
            None
        }
        Some(name) if !ups.contains_key(name) => {
            let known: Vec<&str> = ups.keys().map(String::as_str).collect();
            c.error(
                format!("{path}.proxy_pass"),
                format!(
                    "no upstream named {name:?} (defined: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            None
        }
        Some(name) => Some(name.clone()),
    };
    let connect_timeout = c.positive_duration(
        &format!("{path}.connect_timeout"),
        &l.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    let read_timeout = c.positive_duration(
        &format!("{path}.read_timeout"),
        &l.read_timeout,
        DEFAULT_READ_TIMEOUT,
    );
    if read_timeout < SOCKETIO_PING_WINDOW {
        c.warn(
            format!("{path}.read_timeout"),
            format!(
                "{} is shorter than Socket.IO's pingInterval + pingTimeout (45s): long-polls and idle WebSockets will be cut",
                humantime::format_duration(read_timeout)
            ),
        );
    }
    let set_header = set_headers(c, &format!("{path}.set_header"), l.set_header.as_ref());
    let client_max_body_size = match &l.client_max_body_size {
        None => DEFAULT_CLIENT_MAX_BODY,
        Some(text) => parse_size(text).unwrap_or_else(|e| {
            c.error(format!("{path}.client_max_body_size"), e);
            DEFAULT_CLIENT_MAX_BODY
        }),
    };
    Some(Location {
        path: loc_path,
        proxy_pass: proxy_pass?,
        connect_timeout,
        read_timeout,
        set_header,
        client_max_body_size,
    })
}

fn set_headers(
    c: &mut Checker,
    path: &str,
    raw: Option<&BTreeMap<String, String>>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (k, v) in raw.into_iter().flatten() {
        let name = HeaderName::from_bytes(k.as_bytes());
        let value = HeaderValue::from_str(v);
        match (name, value) {
            (Ok(n), Ok(v)) => out.push((n, v)),
            (Err(_), _) => c.error(format!("{path}.{k}"), "invalid header name"),
            (_, Err(_)) => c.error(format!("{path}.{k}"), "invalid header value"),
        }
    }
    out
}

fn check_listen_conflicts(c: &mut Checker, servers: &[ServerBlock], admin: Option<&Admin>) {
    // Several [[server]] may share an address (name-based virtual hosts), but one block must not list it twice,
    // blocks sharing it must agree on TLS-ness and PROXY protocol, and the admin listener must not collide.
    let mut first_use: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for (i, s) in servers.iter().enumerate() {
        let mut own = HashSet::new();
        for (j, addr) in s.listen.iter().enumerate() {
            let path = format!("server[{i}].listen[{j}]");
            if !own.insert(addr) {
                c.error(&path, format!("{addr} is listed twice"));
                continue;
            }
            if addr.port() != 0 && admin.is_some_and(|a| a.listen == *addr) {
                c.error(&path, format!("{addr} is also admin.listen"));
            }
            match first_use.get(addr) {
                None => {
                    first_use.insert(*addr, i);
                }
                Some(&k) => check_shared_listen(c, &path, addr, (k, &servers[k]), s),
            }
        }
    }
}

fn check_shared_listen(
    c: &mut Checker,
    path: &str,
    addr: &SocketAddr,
    (k, a): (usize, &ServerBlock),
    b: &ServerBlock,
) {
    let connection_settings = |s: &ServerBlock| {
        (
            s.tls.is_some(),
            s.proxy_protocol,
            s.proxy_protocol_from.clone(),
            s.max_connections_per_ip,
        )
    };
    if connection_settings(a) != connection_settings(b) {
        c.error(
            path,
            format!(
                "{addr} is also used by server[{k}] with different tls/proxy_protocol/proxy_protocol_from/max_connections_per_ip settings"
            ),
        );
    } else if a.server_name.is_empty() && b.server_name.is_empty() {
        c.error(
            path,
            format!(
                "duplicate listen address {addr}: server[{k}] listens there too and neither has a server_name to tell them apart"
            ),
        );
    }
}
