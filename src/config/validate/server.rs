//! `[[server]]` blocks and their `[[server.location]]`s: listen addresses, TLS files, PROXY protocol, client
//! limits and timeouts, and what each location proxies to.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::Checker;
use crate::config::raw::{RawLocation, RawServer, RawTls};
use crate::config::units::parse_size;
use crate::config::{Http2, Location, ServerBlock, TlsFiles, Upstream};

const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
const DEFAULT_MAX_HEADER_BYTES: i64 = 16_384;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CLIENT_MAX_BODY: u64 = 1 << 20;
const DEFAULT_MAX_CONCURRENT_STREAMS: i64 = 128;
/// Socket.IO's default pingInterval + pingTimeout: a shorter read timeout cuts long-polls and idle WebSockets.
const SOCKETIO_PING_WINDOW: Duration = Duration::from_secs(45);

pub(super) fn server_blocks(
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
    let trusted_proxies = c.at(path).cidrs("trusted_proxies", &s.trusted_proxies);
    let proxy_protocol = s.proxy_protocol.unwrap_or(false);
    let proxy_protocol_from = c
        .at(path)
        .cidrs("proxy_protocol_from", &s.proxy_protocol_from);
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
    let max_connections_per_ip = c.at(path).int(
        "max_connections_per_ip",
        s.max_connections_per_ip,
        0,
        0..=10_000_000,
    ) as usize;
    let client_header_timeout = c.at(path).positive_duration(
        "client_header_timeout",
        &s.client_header_timeout,
        DEFAULT_CLIENT_HEADER_TIMEOUT,
    );
    let keepalive_timeout = c.at(path).duration(
        "keepalive_timeout",
        &s.keepalive_timeout,
        DEFAULT_KEEPALIVE_TIMEOUT,
    );
    let max_header_bytes = c.at(path).int(
        "max_header_bytes",
        s.max_header_bytes,
        DEFAULT_MAX_HEADER_BYTES,
        1024..=1 << 20,
    ) as usize;
    let h2 = http2(c, path, s);
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
        h2,
        locations,
    }
}

fn http2(c: &mut Checker, path: &str, s: &RawServer) -> Http2 {
    let h2c = s.h2c.unwrap_or(false);
    if h2c && s.tls.is_some() {
        c.warn(
            format!("{path}.h2c"),
            "has no effect on a TLS listener (HTTP/2 is offered there by ALPN: http2 = true)",
        );
    }
    let max_concurrent_streams = c.at(path).int(
        "max_concurrent_streams",
        s.max_concurrent_streams,
        DEFAULT_MAX_CONCURRENT_STREAMS,
        1..=65_536,
    ) as u32;
    Http2 {
        over_tls: s.http2.unwrap_or(true),
        h2c,
        websocket: s.websocket_over_h2.unwrap_or(true),
        max_concurrent_streams,
    }
}

fn tls_files(c: &mut Checker, path: &str, t: &RawTls) -> Option<TlsFiles> {
    let mut file = |key: &str, value: &Option<String>| match value {
        None => {
            c.error(format!("{path}.{key}"), "missing (path of a PEM file)");
            None
        }
        Some(p) => {
            let p = PathBuf::from(p);
            c.readable(&format!("{path}.{key}"), &p);
            Some(p)
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
    c.url_path(&format!("{path}.path"), &loc_path);
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
    let connect_timeout = c.at(path).positive_duration(
        "connect_timeout",
        &l.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    let read_timeout =
        c.at(path)
            .positive_duration("read_timeout", &l.read_timeout, DEFAULT_READ_TIMEOUT);
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
