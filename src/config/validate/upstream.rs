//! `[upstream.NAME]`: the balancing method, hash key, pool and TLS settings, and its `[[upstream.NAME.server]]`
//! list (each server, then the set as a whole).

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use super::health_check::health_check;
use super::sticky::sticky;
use super::Checker;
use crate::config::raw::{RawStateFile, RawUpstream, RawUpstreamServer};
use crate::config::ServerEntry as Entry;
use crate::config::{
    Balance, DnsEntry, HashKey, Lookup, Origin, Problem, ServerSpec, Upstream, UpstreamTls,
};

const DEFAULT_KEEPALIVE: i64 = 64;
const DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_RETRIES: i64 = 1;
const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn upstreams(
    c: &mut Checker,
    raw: &BTreeMap<String, RawUpstream>,
) -> BTreeMap<String, Upstream> {
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

pub(super) fn balance(
    c: &mut Checker,
    path: &str,
    value: Option<&str>,
    default: Balance,
) -> Balance {
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
    let keepalive = c
        .at(path)
        .int("keepalive", u.keepalive, DEFAULT_KEEPALIVE, 0..=100_000) as usize;
    let keepalive_timeout = c.at(path).positive_duration(
        "keepalive_timeout",
        &u.keepalive_timeout,
        DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT,
    );
    let retries = c
        .at(path)
        .int("retries", u.retries, DEFAULT_RETRIES, 0..=100) as u32;
    let tls = upstream_tls(c, path, u);
    let sticky = sticky(c, &format!("{path}.sticky"), u.sticky.as_ref());
    if u.sticky.is_some() && balance != Balance::Sid {
        c.warn(
            format!("{path}.sticky"),
            "is used only with balance = \"sid\"",
        );
    }
    let state_file = u.state_file.as_ref().map(PathBuf::from);
    let (servers, dns) = match &state_file {
        Some(file) => server_list_from_state(c, path, file, &u.server, sticky.sid_prefix),
        None => server_list(c, path, &u.server, &HashSet::new(), sticky.sid_prefix),
    };
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
        dns,
        health_check,
        state_file,
    }
}

/// A server list: the servers with a fixed address, and the entries DNS fills in. Servers not among `from_config`
/// (names as written) were added by the runtime API.
fn server_list(
    c: &mut Checker,
    path: &str,
    raw: &[RawUpstreamServer],
    from_config: &HashSet<String>,
    sid_prefix: bool,
) -> (Vec<ServerSpec>, Vec<DnsEntry>) {
    if raw.is_empty() {
        c.error(
            format!("{path}.server"),
            format!("at least one [[{path}.server]] is needed"),
        );
    }
    let mut servers = Vec::new();
    let mut dns = Vec::new();
    let mut names = HashSet::new();
    let mut routes = HashSet::new();
    for (i, s) in raw.iter().enumerate() {
        let at = format!("{path}.server[{i}]");
        let Some(entry) = server_entry(c, &at, s) else {
            continue;
        };
        if !names.insert(entry.name().to_string()) {
            let key = if s.addr.is_some() { "addr" } else { "service" };
            c.error(
                format!("{at}.{key}"),
                format!("{:?} is listed twice", entry.name()),
            );
        }
        match entry {
            Entry::Fixed(mut spec) => {
                if sid_prefix {
                    prefix_route(c, &at, &spec.route, &mut routes);
                }
                if !from_config.is_empty() && !from_config.contains(&spec.name) {
                    spec.origin = Origin::Api;
                }
                servers.push(spec);
            }
            Entry::Dns(entry) => {
                if sid_prefix {
                    c.error(
                        &at,
                        "sticky.sid_prefix needs one route per server: a resolve or service entry names many",
                    );
                }
                dns.push(entry);
            }
        }
    }
    (servers, dns)
}

/// With `sticky.sid_prefix`, every server needs a route of its own.
fn prefix_route(c: &mut Checker, at: &str, route: &str, routes: &mut HashSet<String>) {
    if route.is_empty() {
        c.error(
            format!("{at}.route"),
            "sticky.sid_prefix needs a route on every server",
        );
    } else if !routes.insert(route.to_string()) {
        c.error(format!("{at}.route"), format!("{route:?} is used twice"));
    }
}

/// The server list of an upstream with `state_file`: the file's when it exists, else the config's (which seeds
/// the file when limpet starts).
fn server_list_from_state(
    c: &mut Checker,
    path: &str,
    file: &Path,
    config_servers: &[RawUpstreamServer],
    sid_prefix: bool,
) -> (Vec<ServerSpec>, Vec<DnsEntry>) {
    let at = format!("{path}.state_file");
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return server_list(c, path, config_servers, &HashSet::new(), sid_prefix);
        }
        Err(e) => {
            c.error(&at, format!("cannot read {}: {e}", file.display()));
            return (Vec::new(), Vec::new());
        }
    };
    let raw: RawStateFile = match toml::from_str::<toml::Table>(&text)
        .map_err(|e| e.message().to_string())
        .and_then(|t| {
            serde_path_to_error::deserialize(toml::Value::Table(t)).map_err(|e| e.to_string())
        }) {
        Ok(raw) => raw,
        Err(e) => {
            c.error(&at, format!("{}: {e}", file.display()));
            return (Vec::new(), Vec::new());
        }
    };
    let from_config: HashSet<String> = config_servers
        .iter()
        .filter_map(|s| s.addr.clone().or_else(|| s.service.clone()))
        .collect();
    let from_config = if from_config.is_empty() {
        // Without config entries to compare with, every server counts as the config's.
        raw.server
            .iter()
            .filter_map(|s| s.addr.clone().or_else(|| s.service.clone()))
            .collect()
    } else {
        from_config
    };
    server_list(
        c,
        &format!("{at} ({})", file.display()),
        &raw.server,
        &from_config,
        sid_prefix,
    )
}

/// A server list in the state file's form (`[[server]]` tables), validated with the config's rules.
pub(in crate::config) fn server_list_text(
    text: &str,
) -> Result<(Vec<ServerSpec>, Vec<DnsEntry>), Vec<Problem>> {
    let raw: RawStateFile = toml::from_str(text).map_err(|e| {
        vec![Problem {
            path: String::new(),
            message: e.message().to_string(),
        }]
    })?;
    let mut c = Checker::default();
    let list = server_list(&mut c, "", &raw.server, &HashSet::new(), false);
    if c.problems.is_empty() {
        Ok(list)
    } else {
        Err(c.problems)
    }
}

/// One server entry as the runtime API gives it (the keys of a `[[upstream.NAME.server]]`), validated with the
/// config's rules; it counts as added through the API.
pub(in crate::config) fn api_entry(raw: &RawUpstreamServer) -> Result<Entry, Vec<Problem>> {
    let mut c = Checker::default();
    let entry = server_entry(&mut c, "server", raw);
    match entry {
        Some(mut entry) if c.problems.is_empty() => {
            match &mut entry {
                Entry::Fixed(spec) => spec.origin = Origin::Api,
                Entry::Dns(dns) => dns.template.origin = Origin::Api,
            }
            Ok(entry)
        }
        _ => Err(c.problems),
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
        c.readable(&format!("{path}.tls_ca"), ca);
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

fn server_entry(c: &mut Checker, path: &str, s: &RawUpstreamServer) -> Option<Entry> {
    let resolve = s.resolve.unwrap_or(false);
    let lookup = match (&s.addr, &s.service) {
        (Some(_), Some(_)) => {
            c.error(
                format!("{path}.service"),
                "give either addr or service, not both",
            );
            return None;
        }
        (None, None) => {
            c.error(
                format!("{path}.addr"),
                "missing (host:port of the server, or service = \"_name._tcp.domain\")",
            );
            return None;
        }
        (None, Some(service)) => Some(service_lookup(c, &format!("{path}.service"), service)?),
        (Some(addr), None) if resolve => Some(host_lookup(c, &format!("{path}.addr"), addr)?),
        (Some(_), None) => None,
    };
    let name = s
        .addr
        .clone()
        .or_else(|| s.service.clone())
        .unwrap_or_default();
    let addr = match lookup {
        Some(_) => Some(SocketAddr::from(([0, 0, 0, 0], 0))),
        None => upstream_addr(c, &format!("{path}.addr"), &name),
    };
    let spec = server_settings(c, path, s, name, addr);
    Some(match lookup {
        Some(lookup) => Entry::Dns(DnsEntry {
            lookup,
            template: spec?,
        }),
        None => Entry::Fixed(spec?),
    })
}

/// The settings every server of an entry shares.
fn server_settings(
    c: &mut Checker,
    path: &str,
    s: &RawUpstreamServer,
    name: String,
    addr: Option<SocketAddr>,
) -> Option<ServerSpec> {
    let weight = c.at(path).int("weight", s.weight, 1, 1..=1000) as u32;
    let max_fails = c.at(path).int("max_fails", s.max_fails, 1, 0..=1000) as u32;
    let fail_timeout =
        c.at(path)
            .positive_duration("fail_timeout", &s.fail_timeout, DEFAULT_FAIL_TIMEOUT);
    let max_conns = c.at(path).int("max_conns", s.max_conns, 0, 0..=10_000_000) as u32;
    let slow_start = c
        .at(path)
        .duration("slow_start", &s.slow_start, Duration::ZERO);
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
        slow_start,
        origin: Origin::Config,
    })
}

/// `addr` with `resolve = true`: a host name and a port, looked up while running (not at load).
fn host_lookup(c: &mut Checker, path: &str, text: &str) -> Option<Lookup> {
    let parsed = text
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .filter(|(h, _)| valid_dns_name(h));
    match parsed {
        Some((host, port)) => Some(Lookup::Host {
            host: host.to_string(),
            port,
        }),
        None => {
            c.error(
                path,
                format!("invalid address {text:?} for resolve = true (write host:port, e.g. \"chat.default.svc:3000\")"),
            );
            None
        }
    }
}

/// `service`: an SRV name.
fn service_lookup(c: &mut Checker, path: &str, text: &str) -> Option<Lookup> {
    if valid_dns_name(text) && text.starts_with('_') {
        Some(Lookup::Service(text.to_string()))
    } else {
        c.error(
            path,
            format!("invalid SRV name {text:?} (write e.g. \"_http._tcp.chat.default.svc\")"),
        );
        None
    }
}

/// A DNS name: dot-separated labels of letters, digits, '-' and '_', each 1..=63 bytes, at most 253 in all.
fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
