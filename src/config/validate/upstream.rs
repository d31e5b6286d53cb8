//! `[upstream.NAME]`: the balancing method, hash key, pool and TLS settings, and its `[[upstream.NAME.server]]`
//! list (each server, then the set as a whole).

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::health_check::health_check;
use super::sticky::sticky;
use super::Checker;
use crate::config::raw::{RawUpstream, RawUpstreamServer};
use crate::config::{Balance, HashKey, ServerSpec, Sticky, Upstream, UpstreamTls};

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

fn server_spec(c: &mut Checker, path: &str, s: &RawUpstreamServer) -> Option<ServerSpec> {
    let Some(name) = s.addr.clone() else {
        c.error(format!("{path}.addr"), "missing (host:port of the server)");
        return None;
    };
    let addr = upstream_addr(c, &format!("{path}.addr"), &name);
    let weight = c.at(path).int("weight", s.weight, 1, 1..=1000) as u32;
    let max_fails = c.at(path).int("max_fails", s.max_fails, 1, 0..=1000) as u32;
    let fail_timeout =
        c.at(path)
            .positive_duration("fail_timeout", &s.fail_timeout, DEFAULT_FAIL_TIMEOUT);
    let max_conns = c.at(path).int("max_conns", s.max_conns, 0, 0..=10_000_000) as u32;
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
