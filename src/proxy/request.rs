//! Reading a client request (Host, length, client address, upgrade intent) and preparing its upstream copy.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::body::RequestBody;
use super::headers::{forwarded_for, has_token, set_forwarded, strip_hop_by_hop};
use super::{ClientInfo, ProxyError};
use crate::balance::Method as Balance;
use crate::config::{Cidr, HashKey};
use crate::runtime::Route;
use crate::upstream::Upstream;

/// A request ready for a server.
pub struct Prepared {
    pub request: Request<RequestBody>,
    /// May its connection go back to the pool afterwards? Not after an upgrade attempt: a server that refused
    /// one may still treat what follows as tunnel bytes.
    pub reusable: bool,
}

/// The request's host (lowercase, port stripped), validating `Host`: exactly one on HTTP/1.1, well-formed, and
/// the authority of an absolute-form target wins over it.
pub fn host(req: &Request<Incoming>) -> Result<Option<String>, ProxyError> {
    let mut values = req.headers().get_all(header::HOST).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ProxyError::BadRequest("duplicate Host header"));
    }
    if let Some(authority) = req.uri().authority() {
        return Ok(Some(authority.host().to_ascii_lowercase()));
    }
    let Some(value) = first else {
        return if req.version() == Version::HTTP_11 {
            Err(ProxyError::BadRequest("missing Host header"))
        } else {
            Ok(None)
        };
    };
    let text = value
        .to_str()
        .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
    let authority: http::uri::Authority = text
        .parse()
        .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
    if authority.as_str().contains('@') || text.is_empty() {
        return Err(ProxyError::BadRequest("invalid Host header"));
    }
    Ok(Some(authority.host().to_ascii_lowercase()))
}

/// The declared body length, if any.
pub fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The client's address: the peer's, or when the peer is a trusted proxy the right-most untrusted address of
/// `X-Forwarded-For` (nginx `real_ip_recursive on`).
pub fn client_ip(client: &ClientInfo, trusted: &[Cidr], headers: &http::HeaderMap) -> IpAddr {
    let peer = crate::config::canonical_ip(client.peer.ip());
    if trusted.is_empty() || !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let mut client = peer;
    for ip in forwarded_for(headers).into_iter().rev() {
        client = crate::config::canonical_ip(ip);
        if !trusted.iter().any(|c| c.contains(client)) {
            break;
        }
    }
    client
}

/// Is this a WebSocket opening handshake (GET, `Connection: upgrade`, `Upgrade: websocket`, a key)?
pub fn wants_websocket(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(h, &header::CONNECTION, "upgrade")
        && h.get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && h.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// The `Sec-WebSocket-Accept` a server must answer to this request's key.
pub fn expected_accept(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
}

/// Checks a 101: `Upgrade: websocket` and the accept value matching the client's key.
pub fn check_websocket_accept(
    resp: &Response<Incoming>,
    expected: Option<&str>,
) -> Result<(), ProxyError> {
    let h = resp.headers();
    let upgrade_ok = h
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !upgrade_ok {
        return Err(ProxyError::BadUpgrade("101 without Upgrade: websocket"));
    }
    let accept = h.get(header::SEC_WEBSOCKET_ACCEPT).map(|v| v.as_bytes());
    match (accept, expected) {
        (Some(got), Some(want)) if got == want.as_bytes() => Ok(()),
        _ => Err(ProxyError::BadUpgrade(
            "101 with a missing or wrong Sec-WebSocket-Accept",
        )),
    }
}

/// The bytes `balance = "hash"` hashes, when its key is not the client address.
pub fn hash_key(upstream: &Upstream, req: &Request<Incoming>, _ip: IpAddr) -> Option<Vec<u8>> {
    if upstream.method != Balance::Hash {
        return None;
    }
    match &upstream.config.hash_key {
        HashKey::RemoteAddr => None,
        HashKey::Cookie(name) => Some(cookie(req, name).unwrap_or("").as_bytes().to_vec()),
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

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The upstream copy of a request: origin-form target, hop-by-hop headers removed, forwarding headers set.
pub fn prepare(
    req: Request<Incoming>,
    route: &Route,
    client: &ClientInfo,
    client_ip: IpAddr,
    websocket: bool,
) -> Prepared {
    let (mut parts, body) = req.into_parts();
    if let Some(authority) = parts.uri.authority() {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let upgrade = websocket
        .then(|| parts.headers.get(header::UPGRADE).cloned())
        .flatten();
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        // hyper framed the body by Transfer-Encoding; a Content-Length beside it must not reach the server.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers);
    if let Some(upgrade) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, upgrade);
    }
    let host = parts.headers.get(header::HOST).cloned();
    set_forwarded(
        &mut parts.headers,
        client.peer.ip(),
        client_ip,
        client.https,
        host.as_ref(),
    );
    for (name, value) in &route.location.set_header {
        parts.headers.insert(name.clone(), value.clone());
    }
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;
    let body = RequestBody::new(body, route.location.client_max_body_size);
    Prepared {
        request: Request::from_parts(parts, body),
        reusable: !websocket,
    }
}

fn origin_form(uri: &Uri) -> Uri {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(pq)
}
