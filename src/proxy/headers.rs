//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1) and forwarding headers.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop and never cross limpet, besides those a `Connection` header names and every
/// `Proxy-*` header (`Proxy-Authorization`, `Proxy-Authenticate`, `Proxy-Connection`, …).
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removes hop-by-hop headers: every header named in `Connection`, then the fixed list and `Transfer-Encoding`
/// (hyper frames bodies itself from the body's length).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names, usually all the work there is: most messages carry no hop-by-hop header.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
    let is_proxy = |k: &&HeaderName| k.as_str().starts_with("proxy-");
    if headers.keys().any(|k| is_proxy(&k)) {
        let proxy: Vec<HeaderName> = headers.keys().filter(is_proxy).cloned().collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

/// A header that never crosses limpet whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || name == header::TRANSFER_ENCODING
        || name.as_str().starts_with("proxy-")
}

/// Does a comma-separated header hold `token` (case-insensitive), in any of its values?
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The text of an address as a header value, made once per client connection.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    let text = bytes::Bytes::from(ip.to_string());
    HeaderValue::from_maybe_shared(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Sets `X-Forwarded-For` (appending the peer, whose text is `peer`), `X-Real-IP`, `X-Forwarded-Proto` and
/// `X-Forwarded-Host`. `client` is the client address when it differs from the peer's (`trusted_proxies`).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    client: Option<IpAddr>,
    https: bool,
    host: Option<&HeaderValue>,
) {
    let xff = match join_values(headers, &X_FORWARDED_FOR) {
        Some(mut prior) => {
            prior.extend_from_slice(b", ");
            prior.extend_from_slice(peer.as_bytes());
            HeaderValue::from_maybe_shared(bytes::Bytes::from(prior)).ok()
        }
        None => Some(peer.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    let real = match client {
        Some(ip) => ip_value(ip),
        None => peer.clone(),
    };
    headers.insert(X_REAL_IP.clone(), real);
    let proto = HeaderValue::from_static(if https { "https" } else { "http" });
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
}

/// All values of a header joined with ", ", if it is present.
fn join_values(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    Some(values.fold(first.as_bytes().to_vec(), |mut acc, v| {
        acc.extend_from_slice(b", ");
        acc.extend_from_slice(v.as_bytes());
        acc
    }))
}

/// The `X-Forwarded-For` addresses, left to right, that parse as IPs.
pub fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| t.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_fixed_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("proxy-foo", HeaderValue::from_static("x"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn appends_to_x_forwarded_for() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        set_forwarded(
            &mut h,
            &ip_value(ip),
            None,
            false,
            Some(&HeaderValue::from_static("example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(forwarded_for(&h).len(), 3);
    }

    #[test]
    fn tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&h, &header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, &header::CONNECTION, "close"));
    }
}
