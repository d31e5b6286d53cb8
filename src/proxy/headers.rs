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
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removes hop-by-hop headers: every header named in `Connection`, then the fixed list and `Transfer-Encoding`
/// (hyper frames bodies itself from the body's length).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in doomed_names(headers, |_| false) {
        headers.remove(name);
    }
}

/// The names to remove from a message, found in one pass over its names: the hop-by-hop ones, those its
/// `Connection` header names, and those `also` picks. Usually none, and then nothing is allocated.
fn doomed_names(headers: &HeaderMap, also: impl Fn(&HeaderName) -> bool) -> Vec<HeaderName> {
    let mut doomed = Vec::new();
    let mut connection = false;
    for name in headers.keys() {
        if is_hop_by_hop(name) || also(name) {
            connection |= name == header::CONNECTION;
            doomed.push(name.clone());
        }
    }
    if connection {
        let named = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok());
        doomed.extend(named);
    }
    doomed
}

/// A header that never crosses limpet whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || name == header::TRANSFER_ENCODING
        || name.as_str().starts_with("proxy-")
}

pub use crate::upstream::h1::head::has_token;

/// The text of an address as a header value, made once per client connection.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    let text = bytes::Bytes::from(match ip {
        IpAddr::V4(v4) => ipv4_text(v4),
        IpAddr::V6(_) => ip.to_string(),
    });
    HeaderValue::from_maybe_shared(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Dotted-decimal text of an IPv4 address, as `Display` writes it, without the formatting machinery (a tenth of
/// its cost, paid on every new connection).
fn ipv4_text(ip: std::net::Ipv4Addr) -> String {
    let mut text = String::with_capacity(15);
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// What the forwarding headers of one request say.
pub struct Forwarding<'a> {
    /// The peer's address as header text.
    pub peer: &'a HeaderValue,
    /// The client address, when it differs from the peer's (`trusted_proxies`).
    pub client: Option<IpAddr>,
    pub https: bool,
    /// The request's `Host`, when it has one.
    pub host: Option<&'a HeaderValue>,
    /// The peer is a trusted proxy: the `X-Forwarded-Proto`, `-Host`, `-Port` and `Forwarded` it sent stand.
    pub trusted_peer: bool,
}

/// Sets the forwarding headers: `X-Forwarded-For` gets the peer appended, `X-Real-IP` is the client address.
/// From a peer that is not a trusted proxy, `X-Forwarded-Proto` and `X-Forwarded-Host` are limpet's own
/// (`X-Forwarded-Host` absent when the request has no `Host`; [`strip_request`] has removed its
/// `X-Forwarded-Port` and `Forwarded`); a trusted proxy's stand, limpet's filling in what it left out.
pub fn set_forwarded(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    let xff = match join_values(headers, &X_FORWARDED_FOR) {
        Some(mut prior) => {
            prior.extend_from_slice(b", ");
            prior.extend_from_slice(f.peer.as_bytes());
            HeaderValue::from_maybe_shared(bytes::Bytes::from(prior)).ok()
        }
        None => Some(f.peer.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    let real = match f.client {
        Some(ip) => ip_value(ip),
        None => f.peer.clone(),
    };
    headers.insert(X_REAL_IP.clone(), real);
    let proto = HeaderValue::from_static(if f.https { "https" } else { "http" });
    if f.trusted_peer {
        headers.entry(X_FORWARDED_PROTO.clone()).or_insert(proto);
        if let Some(host) = f.host {
            headers
                .entry(X_FORWARDED_HOST.clone())
                .or_insert_with(|| host.clone());
        }
        return;
    }
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    match f.host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Removes from a request what must not reach a server: hop-by-hop headers, names holding `_` (nginx's
/// `underscores_in_headers off`: CGI and WSGI servers read `X_Forwarded_For` as `X-Forwarded-For`), and, from a
/// peer that is not a trusted proxy, `X-Forwarded-Port` and `Forwarded` (see [`set_forwarded`]). One pass over
/// the names when there is nothing to remove. True when it removed anything.
pub fn strip_request(headers: &mut HeaderMap, trusted_peer: bool) -> bool {
    let untrusted = |name: &HeaderName| {
        !trusted_peer && (name == header::FORWARDED || name == X_FORWARDED_PORT)
    };
    let doomed = doomed_names(headers, |k| underscored(k) || untrusted(k));
    if doomed.is_empty() {
        return false;
    }
    for name in doomed {
        headers.remove(name);
    }
    true
}

fn underscored(name: &HeaderName) -> bool {
    name.as_str().contains('_')
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

/// The client address `X-Forwarded-For` gives when the peer is a trusted proxy (nginx `real_ip_recursive on`):
/// walking from the right, the first address that `trusted` does not hold. The walk stops at an entry that is not
/// an address (`unknown`, garbage), keeping the last trusted hop; obs-text anywhere in the header keeps the peer.
pub fn forwarded_client(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let values = headers.get_all(&X_FORWARDED_FOR);
    if values.iter().any(|v| v.to_str().is_err()) {
        return peer;
    }
    let mut client = peer;
    let entries = values
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','))
        .map(str::trim)
        .filter(|e| !e.is_empty());
    for entry in entries {
        let Some(ip) = forwarded_ip(entry) else {
            break;
        };
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` entry as an address: `192.0.2.1`, `192.0.2.1:5555`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:443` (the port dropped, as nginx reads them).
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(crate::config::canonical_ip(ip));
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(valid_port);
        return port_ok
            .then(|| inside.parse::<std::net::Ipv6Addr>().ok())
            .flatten()
            .map(IpAddr::V6)
            .map(crate::config::canonical_ip);
    }
    let (ip, port) = entry.rsplit_once(':')?;
    let ip = ip.parse::<std::net::Ipv4Addr>().ok()?;
    valid_port(port).then_some(IpAddr::V4(ip))
}

fn valid_port(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_is_display() {
        for octet in 0..=255u8 {
            for ip in [
                std::net::Ipv4Addr::new(octet, 0, 255, octet),
                std::net::Ipv4Addr::new(10, octet, 7, 100),
            ] {
                assert_eq!(ipv4_text(ip), ip.to_string());
            }
        }
    }

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
        let peer = ip_value(ip);
        set_forwarded(
            &mut h,
            &Forwarding {
                peer: &peer,
                client: None,
                https: false,
                host: Some(&HeaderValue::from_static("example.com")),
                trusted_peer: false,
            },
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        let everyone = |_| true;
        assert_eq!(forwarded_client(&h, ip, everyone).to_string(), "1.1.1.1");
    }

    fn client(xff: &[&[u8]], trusted: &[&str]) -> String {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_bytes(v).unwrap());
        }
        let trusted: Vec<IpAddr> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        forwarded_client(&h, peer, |ip| ip == peer || trusted.contains(&ip)).to_string()
    }

    #[test]
    fn forwarded_walk_stops_at_what_is_not_an_address() {
        assert_eq!(client(&[b"6.6.6.6, 203.0.113.9"], &[]), "203.0.113.9");
        assert_eq!(client(&[b"6.6.6.6, 203.0.113.9:5555"], &[]), "203.0.113.9");
        assert_eq!(client(&[b"6.6.6.6, [2001:db8::1]:443"], &[]), "2001:db8::1");
        assert_eq!(client(&[b"6.6.6.6, [2001:db8::1]"], &[]), "2001:db8::1");
        assert_eq!(client(&[b"6.6.6.6, unknown"], &[]), "10.0.0.1");
        assert_eq!(
            client(&[b"6.6.6.6, 10.0.0.2, unknown"], &["10.0.0.2"]),
            "10.0.0.1"
        );
        assert_eq!(
            client(&[b"6.6.6.6, garbage, 10.0.0.2"], &["10.0.0.2"]),
            "10.0.0.2"
        );
        assert_eq!(client(&[b"6.6.6.6:99999"], &[]), "10.0.0.1");
        assert_eq!(client(&[b"6.6.6.6", b"\xff, 7.7.7.7"], &[]), "10.0.0.1");
        assert_eq!(client(&[b"1.1.1.1", b"2.2.2.2"], &[]), "2.2.2.2");
        assert_eq!(client(&[b"1.1.1.1, , "], &[]), "1.1.1.1");
    }

    #[test]
    fn a_request_loses_underscored_names_and_untrusted_forwarding() {
        let request = || {
            let mut h = HeaderMap::new();
            h.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
            h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
            h.insert("x-forwarded-port", HeaderValue::from_static("443"));
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            h.insert("x-keep", HeaderValue::from_static("1"));
            h
        };
        let mut untrusted = request();
        strip_request(&mut untrusted, false);
        assert_eq!(untrusted.keys().collect::<Vec<_>>(), ["x-keep"]);
        let mut trusted = request();
        strip_request(&mut trusted, true);
        assert_eq!(trusted.len(), 3);
        assert!(trusted.contains_key("forwarded") && trusted.contains_key("x-forwarded-port"));
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
