//! Reading a client request (Host, length, client address, upgrade intent) and preparing its upstream copy.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Request, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use super::headers::{forwarded_client, has_token, set_forwarded, strip_request, Forwarding};
use super::ProxyError;
use crate::balance::Method as Balance;
use crate::config::{Cidr, HashKey};
use crate::conn::{ClientInfo, HeadCounts};
use crate::request_body::RequestBody;
use crate::runtime::{Route, Snapshot};
use crate::upstream::Upstream;

/// A request ready for a server.
pub struct Prepared {
    pub request: Request<RequestBody>,
    /// May its connection go back to the pool afterwards? Not after an upgrade attempt: a server that refused
    /// one may still treat what follows as tunnel bytes.
    pub reusable: bool,
    /// The client sent no `Host` (HTTP/1.0): the server's address is sent as one, as nginx's `$proxy_host`.
    pub host_missing: bool,
}

/// The request's authority (its `host()` is the host, port stripped, in the case the client sent), validating
/// `Host`: exactly one on HTTP/1.1, well-formed, and the authority of an absolute-form target wins over it.
fn host(req: &Request<Incoming>) -> Result<Option<Authority>, ProxyError> {
    let mut values = req.headers().get_all(header::HOST).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ProxyError::BadRequest("duplicate Host header"));
    }
    if let Some(authority) = req.uri().authority() {
        // RFC 9112 §3.2.2: the target's authority replaces Host; `prepare` sends it as the Host.
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(ProxyError::BadRequest(
                "invalid authority in request target",
            ));
        }
        return Ok(Some(authority.clone()));
    }
    let Some(value) = first else {
        return if req.version() >= Version::HTTP_11 {
            Err(ProxyError::BadRequest("missing Host header"))
        } else {
            Ok(None)
        };
    };
    let text = value
        .to_str()
        .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
    let authority: Authority = text
        .parse()
        .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
    if authority.as_str().contains('@') || text.is_empty() {
        return Err(ProxyError::BadRequest("invalid Host header"));
    }
    Ok(Some(authority))
}

/// Refuses a request whose body framing is ambiguous or that limpet cannot frame (RFC 9112 §6), before any of
/// it reaches a server. hyper has already refused malformed `Content-Length` values, `Transfer-Encoding` on
/// HTTP/1.0 and a `Transfer-Encoding` whose last coding is not `chunked`; this refuses what it lets through:
/// `Content-Length` beside `Transfer-Encoding`, `Content-Length` repeated, `chunked` given twice (400), and a
/// transfer coding other than `chunked` (501: limpet would pass it on undecoded).
fn check_framing(req: &Request<Incoming>, head: Option<HeadCounts>) -> Result<(), ProxyError> {
    let h = req.headers();
    if let Some(raw) = head {
        // What hyper merged away: a Content-Length it dropped for Transfer-Encoding, or repeated ones.
        if raw.content_length > 0 && raw.transfer_encoding > 0 {
            return Err(ProxyError::BadRequest(
                "Content-Length with Transfer-Encoding",
            ));
        }
        if raw.content_length > 1 {
            return Err(ProxyError::BadRequest("repeated Content-Length"));
        }
        if raw.padded_coding {
            return Err(ProxyError::BadRequest("whitespace after Transfer-Encoding"));
        }
    }
    if h.get_all(header::CONTENT_LENGTH).iter().nth(1).is_some() {
        return Err(ProxyError::BadRequest("repeated Content-Length"));
    }
    let mut te = h.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = te.next() else {
        return Ok(());
    };
    if h.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "Content-Length with Transfer-Encoding",
        ));
    }
    if te.next().is_some() {
        return Err(ProxyError::BadRequest("repeated Transfer-Encoding"));
    }
    let codings = first.to_str().unwrap_or("").split(',').map(str::trim);
    let mut chunked = 0;
    let mut other = 0;
    for coding in codings {
        if coding.eq_ignore_ascii_case("chunked") {
            chunked += 1;
        } else {
            other += 1;
        }
    }
    match (chunked, other) {
        (1, 0) => Ok(()),
        (1, _) => Err(ProxyError::Refused(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported transfer coding",
        )),
        _ => Err(ProxyError::BadRequest("invalid Transfer-Encoding")),
    }
}

/// Refuses a request line longer than half of `max_header_bytes` with 414. A head longer than the whole of
/// `max_header_bytes` never gets here: hyper answers it with 431.
fn check_request_line(req: &Request<Incoming>, max_header_bytes: usize) -> Result<(), ProxyError> {
    let uri = req.uri();
    let pq = uri.path_and_query().map_or(0, |p| p.as_str().len());
    let target = match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(a)) => scheme.len() + 3 + a.as_str().len() + pq,
        (None, Some(a)) => a.as_str().len() + pq,
        _ => pq,
    };
    // Method, target, "HTTP/1.1", two spaces and CRLF.
    let line = req.method().as_str().len() + target + 12;
    if line > max_header_bytes / 2 {
        return Err(ProxyError::Refused(
            StatusCode::URI_TOO_LONG,
            "request line too long",
        ));
    }
    Ok(())
}

/// The declared body length, if any.
fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Who sent a request, as far as limpet believes it.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// The client's address: the peer's, or when the peer is a trusted proxy the one `X-Forwarded-For` gives
    /// (see [`forwarded_client`]).
    pub ip: IpAddr,
    /// The peer is one of `trusted_proxies`.
    pub trusted_peer: bool,
}

/// Where a request comes from, given the listener's `trusted_proxies`.
fn source(client: &ClientInfo, trusted: &[Cidr], headers: &http::HeaderMap) -> Source {
    let peer = crate::config::canonical_ip(client.peer.ip());
    if trusted.is_empty() || !trusted.iter().any(|c| c.contains(peer)) {
        return Source {
            ip: peer,
            trusted_peer: false,
        };
    }
    Source {
        ip: forwarded_client(headers, peer, |ip| trusted.iter().any(|c| c.contains(ip))),
        trusted_peer: true,
    }
}

/// Is this an HTTP/2 WebSocket opening (RFC 8441: an extended CONNECT with `:protocol = websocket`)? hyper
/// lets `:protocol` through only on listeners with `websocket_over_h2`.
fn wants_h2_websocket(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT
        && req.version() == Version::HTTP_2
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// A fresh `Sec-WebSocket-Key` (16 random bytes, base64), for the HTTP/1.1 upgrade an HTTP/2 WebSocket opening
/// becomes.
fn new_websocket_key() -> Result<String, ProxyError> {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    getrandom::getrandom(&mut nonce).map_err(|_| {
        ProxyError::Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "no randomness for a WebSocket key",
        )
    })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(nonce))
}

/// Is this an HTTP/1.1 WebSocket opening handshake (GET, `Connection: upgrade`, `Upgrade: websocket`, a key)?
fn wants_websocket(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(h, &header::CONNECTION, "upgrade")
        && h.get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && h.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// The `Sec-WebSocket-Accept` a server must answer to this request's key.
fn expected_accept(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| accept_key(k.as_bytes()))
}

/// RFC 6455 §4.2.2: base64 of the SHA-1 of the key followed by the protocol's GUID.
fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let digest = sha1::Sha1::new()
        .chain_update(key)
        .chain_update(GUID)
        .finalize();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The bytes `balance = "hash"` hashes, when its key is not the client address.
fn hash_key(upstream: &Upstream, req: &Request<Incoming>) -> Option<Vec<u8>> {
    if upstream.method != Balance::Hash {
        return None;
    }
    match &upstream.config.hash_key {
        HashKey::RemoteAddr => None,
        HashKey::Cookie(name) => Some(
            crate::cookie::in_headers(req.headers(), name)
                .unwrap_or("")
                .as_bytes()
                .to_vec(),
        ),
        HashKey::Arg(name) => {
            let q = req.uri().query().unwrap_or("");
            Some(
                crate::sticky::engineio::query_param(q, name)
                    .unwrap_or("")
                    .as_bytes()
                    .to_vec(),
            )
        }
        HashKey::Header(name) => Some(
            req.headers()
                .get(name)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
        ),
    }
}

/// What limpet reads from a request, once, before it routes and forwards it.
pub struct Facts<'s> {
    pub route: &'s Route,
    pub source: Source,
    /// The declared body length, if any.
    pub content_length: Option<u64>,
    /// A WebSocket opening handshake.
    pub websocket: bool,
    /// The `Sec-WebSocket-Key` limpet sends for an HTTP/2 WebSocket opening (whose client sent none).
    pub h2_websocket_key: Option<String>,
    /// The `Sec-WebSocket-Accept` its server must answer (a WebSocket handshake's).
    pub accept: Option<String>,
    /// What `balance = "hash"` hashes, when its key is not the client address.
    pub hash_key: Option<Vec<u8>>,
    /// How long the body may stay silent between two reads.
    pub body_idle: Duration,
}

impl Facts<'_> {
    /// The declared body is over the location's `client_max_body_size`.
    pub fn too_large(&self) -> bool {
        let limit = self.route.location.client_max_body_size;
        limit != 0 && self.content_length.is_some_and(|n| n > limit)
    }
}

/// Checks a request (method, request line, framing, Host) and reads what routing and forwarding need of it.
pub fn read<'s>(
    snap: &'s Snapshot,
    client: &ClientInfo,
    req: &Request<Incoming>,
    head: Option<HeadCounts>,
) -> Result<Facts<'s>, ProxyError> {
    let h2_websocket = wants_h2_websocket(req);
    if req.method() == Method::CONNECT && !h2_websocket {
        return Err(ProxyError::MethodNotAllowed);
    }
    let sites = snap
        .by_addr
        .get(&client.listener)
        .ok_or(ProxyError::NoRoute)?;
    check_request_line(req, sites.block().max_header_bytes)?;
    check_framing(req, head)?;
    let host = host(req)?;
    let site = sites.site(host.as_ref().map(Authority::host));
    let route = site.route(req.uri().path()).ok_or(ProxyError::NoRoute)?;
    let h2_websocket_key = h2_websocket.then(new_websocket_key).transpose()?;
    let websocket = h2_websocket || wants_websocket(req);
    let accept = match &h2_websocket_key {
        Some(key) => Some(accept_key(key.as_bytes())),
        None => websocket.then(|| expected_accept(req)).flatten(),
    };
    Ok(Facts {
        route,
        source: source(client, &site.block.trusted_proxies, req.headers()),
        content_length: content_length(req),
        websocket,
        h2_websocket_key,
        accept,
        hash_key: hash_key(&route.upstream, req),
        body_idle: sites.block().client_header_timeout,
    })
}

/// The upstream copy of a request: origin-form target, hop-by-hop headers removed, forwarding headers set;
/// its body may stay silent at most `body_idle` between two reads.
pub fn prepare(req: Request<Incoming>, facts: &Facts<'_>, client: &ClientInfo) -> Prepared {
    let (route, source, websocket) = (facts.route, facts.source, facts.websocket);
    let (mut parts, body) = req.into_parts();
    if let Some(authority) = parts.uri.authority() {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    // `Host` is not hop-by-hop whatever `Connection` says, and the length sent is the one hyper framed the
    // body by (`check_framing` has refused every ambiguous case), written by limpet.
    let host = parts.headers.get(header::HOST).cloned();
    let length = parts
        .headers
        .contains_key(header::CONTENT_LENGTH)
        .then(|| body.size_hint().exact())
        .flatten();
    let upgrade = match &facts.h2_websocket_key {
        Some(key) => Some(h2_websocket_to_h1(&mut parts, key)),
        None => websocket
            .then(|| parts.headers.get(header::UPGRADE).cloned())
            .flatten(),
    };
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    // Room for the forwarding headers, so adding them grows the map once at most.
    parts.headers.reserve(5);
    if strip_request(&mut parts.headers, source.trusted_peer) {
        // `Connection: host` must not take the Host header away.
        if let Some(host) = &host {
            parts.headers.insert(header::HOST, host.clone());
        }
    }
    if let Some(n) = length {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if let Some(upgrade) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, upgrade);
    }
    let other = (source.ip != client.peer.ip()).then_some(source.ip);
    set_forwarded(
        &mut parts.headers,
        &Forwarding {
            peer: &client.peer_text,
            client: other,
            https: client.https,
            host: host.as_ref(),
            trusted_peer: source.trusted_peer,
        },
    );
    for (name, value) in &route.location.set_header {
        parts.headers.insert(name.clone(), value.clone());
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = origin_form(&parts.uri);
    }
    parts.version = Version::HTTP_11;
    let body = RequestBody::new(body, route.location.client_max_body_size, facts.body_idle);
    let host_missing = host.is_none();
    Prepared {
        request: Request::from_parts(parts, body),
        reusable: !websocket,
        host_missing,
    }
}

/// Turns an HTTP/2 WebSocket opening (extended CONNECT) into the head of an HTTP/1.1 one: GET, limpet's key,
/// version 13 when the client named none. Returns the `Upgrade` value to send.
fn h2_websocket_to_h1(parts: &mut http::request::Parts, key: &str) -> HeaderValue {
    parts.method = Method::GET;
    parts.extensions.remove::<hyper::ext::Protocol>();
    if let Ok(key) = HeaderValue::from_str(key) {
        parts.headers.insert(header::SEC_WEBSOCKET_KEY, key);
    }
    if !parts.headers.contains_key(header::SEC_WEBSOCKET_VERSION) {
        parts.headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    HeaderValue::from_static("websocket")
}

/// HTTP/2 may split `Cookie` into one field per cookie; HTTP/1.1 wants one line, joined with "; "
/// (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

fn origin_form(uri: &Uri) -> Uri {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(pq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
