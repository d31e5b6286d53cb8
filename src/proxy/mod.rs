//! Request forwarding: route, pick a server (sticky session or balancer), send over a pooled connection,
//! relay the answer, and hand `101 Switching Protocols` to the tunnel.

pub mod body;
pub mod error;
pub mod headers;
mod request;
pub mod sticky;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::balance::PickKey;
use crate::runtime::{Route, Snapshot};
use crate::upstream::{InFlight, Upstream};
use crate::warn_limit::WarnLimit;
use body::{Lease, RequestBody, ResponseBody, UpstreamBody};
pub use error::ProxyError;
use request::Prepared;
pub use request::{HeadCounts, HeadScan};
use sticky::{Learn, Plan, Target};

/// Failed requests, logged at most once a second (failed connects are limited per server).
static PROXY_ERRORS: WarnLimit = WarnLimit::new();

/// What limpet knows of the client connection a request came on.
#[derive(Clone)]
pub struct ClientInfo {
    /// The TCP peer (or the source a PROXY protocol header gave).
    pub peer: SocketAddr,
    /// The peer's address as header text (`X-Forwarded-For`, `X-Real-IP`), made once per connection.
    pub peer_text: HeaderValue,
    /// The listen address it was accepted on, as configured.
    pub listener: SocketAddr,
    pub https: bool,
    /// Held by the connection and by a tunnel it turns into.
    pub hold: Arc<ConnHold>,
}

/// What a client connection holds while it lives, tunnel included.
pub struct ConnHold {
    /// Tracks tunnels for graceful shutdown.
    pub tracker: tokio_util::task::TaskTracker,
    /// Its slot under `max_connections`.
    pub permit: crate::conn::slots::Permit,
    /// Its place under `max_connections_per_ip`, when the listener has one.
    pub _per_ip: Option<crate::conn::slots::IpPermit>,
}

/// The outcome of one request, for metrics and the access log.
pub struct Outcome {
    pub method: Method,
    pub uri: http::Uri,
    pub started: Instant,
    pub response: Response<ResponseBody>,
    pub upstream: Option<Arc<Upstream>>,
    pub server: Option<usize>,
    pub sticky: Option<&'static str>,
    /// The client address after PROXY protocol and `trusted_proxies` (None before it was known).
    pub client_ip: Option<std::net::IpAddr>,
    /// For a `101`: what the tunnel carried, once it has ended.
    pub tunnel: Option<tokio::sync::oneshot::Receiver<tunnel::Carried>>,
}

/// Answers one request: proxied, or limpet's own error answer. `head`: the framing lines counted on the raw
/// head, when the connection saw all of it.
pub async fn handle(
    snap: Arc<Snapshot>,
    client: &ClientInfo,
    req: Request<Incoming>,
    head: Option<HeadCounts>,
) -> Outcome {
    let started = Instant::now();
    // The target is kept for the access log only.
    let logged = snap.config.global.access_log != crate::config::AccessLog::Off;
    let mut out = Outcome {
        method: req.method().clone(),
        uri: if logged {
            req.uri().clone()
        } else {
            http::Uri::default()
        },
        started,
        response: Response::new(ResponseBody::empty()),
        upstream: None,
        server: None,
        sticky: None,
        client_ip: None,
        tunnel: None,
    };
    match forward(&snap, client, req, head, &mut out).await {
        Ok(resp) => out.response = resp,
        Err(e) => {
            if e.is_upstream() {
                if let Some(held_back) = PROXY_ERRORS.allow() {
                    warn!(client = %client.peer, error = %e, held_back, "proxy error");
                }
            } else {
                debug!(client = %client.peer, error = %e, "request refused");
            }
            out.response = e.response();
        }
    }
    if let Some(up) = &out.upstream {
        up.duration.observe(started.elapsed().as_secs_f64());
        let status = out.response.status().as_u16();
        match out.server {
            Some(i) => up.peers[i].state.metrics.record_status(status),
            None => up.no_server.record(status),
        }
    }
    out
}

async fn forward(
    snap: &Snapshot,
    client: &ClientInfo,
    mut req: Request<Incoming>,
    head: Option<HeadCounts>,
    out: &mut Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    let listener = snap
        .listeners
        .get(&client.listener)
        .ok_or(ProxyError::NoRoute)?;
    request::check_request_line(&req, listener.block().max_header_bytes)?;
    request::check_framing(&req, head)?;
    let host = request::host(&req)?;
    let site = listener.site(host.as_ref().map(http::uri::Authority::host));
    let route = site.route(req.uri().path()).ok_or(ProxyError::NoRoute)?;
    let upstream = route.upstream.clone();
    out.upstream = Some(upstream.clone());
    let limit = route.location.client_max_body_size;
    if limit != 0 && request::content_length(&req).is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge);
    }
    let source = request::source(client, &site.block.trusted_proxies, req.headers());
    let client_ip = source.ip;
    out.client_ip = Some(client_ip);
    let websocket = request::wants_websocket(&req);
    let plan = sticky::plan(&upstream, &req, websocket, out).await?;
    let upgrade = websocket.then(|| Upgrade {
        client: hyper::upgrade::on(&mut req),
        accept: request::expected_accept(&req),
    });
    let hash_key = request::hash_key(&upstream, &req, client_ip);
    let body_idle = listener.block().client_header_timeout;
    let prepared = request::prepare(req, route, client, source, websocket, body_idle);
    let key = match &hash_key {
        Some(bytes) => PickKey::Bytes(bytes),
        None => PickKey::Ip(client_ip),
    };
    let ctx = Ctx {
        route,
        upstream: &upstream,
        client,
        log_tunnels: snap.config.global.access_log != crate::config::AccessLog::Off,
    };
    send(&ctx, plan, &key, prepared, upgrade, out).await
}

/// Where a request is going and where it came from.
struct Ctx<'a> {
    route: &'a Route,
    upstream: &'a Arc<Upstream>,
    client: &'a ClientInfo,
    /// The access log is on: a tunnel reports what it carried when it ends.
    log_tunnels: bool,
}

/// The client half of a WebSocket upgrade and the accept value its server must answer.
struct Upgrade {
    client: hyper::upgrade::OnUpgrade,
    accept: Option<String>,
}

/// Tries servers until one answers: a failed connect moves on to another usable server, up to `retries`.
async fn send(
    ctx: &Ctx<'_>,
    plan: Plan,
    key: &PickKey<'_>,
    mut prepared: Prepared,
    upgrade: Option<Upgrade>,
    out: &mut Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    let upstream = ctx.upstream;
    let loc = &ctx.route.location;
    let target = plan.target;
    let name = upstream.name();
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let index = match target {
            Target::Fixed(i) => i,
            Target::Pick => upstream.pick(key, &tried).ok_or(ProxyError::NoServer)?,
        };
        out.server = Some(index);
        let peer = &upstream.peers[index];
        let in_flight = InFlight::new(peer.state.clone());
        let conn = match peer.pool.get(loc.connect_timeout).await {
            Ok(conn) => conn,
            Err(e) => {
                if let Some(held_back) = peer.state.connect_warnings.allow() {
                    warn!(upstream = %name, server = %peer.spec.name, error = %e, held_back, "connect failed");
                }
                peer.record_failure(name, &e);
                tried.push(index);
                if matches!(target, Target::Fixed(_)) {
                    let session = plan.session.as_deref();
                    return Err(sticky::lost_session(
                        upstream,
                        session,
                        upgrade.is_some(),
                        e.into(),
                    ));
                }
                if tried.len() > upstream.config.retries as usize {
                    return Err(e.into());
                }
                continue;
            }
        };
        if prepared.host_missing {
            if let Ok(host) = HeaderValue::from_str(&peer.spec.name) {
                prepared.request.headers_mut().insert(header::HOST, host);
            }
        }
        match exchange(conn, prepared, loc.read_timeout).await {
            Exchange::Done(resp, sender) => {
                if let Err(e) = check_response(&resp) {
                    peer.record_failure(name, &e);
                    return Err(e);
                }
                peer.state.record_success();
                let lease = Lease {
                    upstream: upstream.clone(),
                    index,
                    in_flight,
                    sender,
                };
                return respond(ctx, resp, lease, plan.learn, upgrade, out).await;
            }
            Exchange::Stale(req) => prepared = req,
            Exchange::Failed(e) => {
                if e.is_upstream() {
                    peer.record_failure(name, &e);
                }
                return Err(e);
            }
        }
    }
}

enum Exchange {
    Done(
        Response<Incoming>,
        Option<hyper::client::conn::http1::SendRequest<RequestBody>>,
    ),
    /// A pooled connection had closed before the request went out: try again on a fresh one.
    Stale(Prepared),
    Failed(ProxyError),
}

/// Sends a request and waits for the answer's head: `read_timeout` counts from the moment the request body has
/// been sent whole, so time spent waiting on a slow client is never the server's.
async fn exchange(
    mut conn: crate::upstream::Conn,
    prepared: Prepared,
    read_timeout: Duration,
) -> Exchange {
    let Prepared {
        request,
        reusable,
        body_sent,
        host_missing,
    } = prepared;
    let answer = conn.sender.try_send_request(request);
    tokio::pin!(answer);
    let answered = match body_sent {
        None => None,
        Some(sent) => tokio::select! {
            biased;
            r = answer.as_mut() => Some(r),
            _ = sent => None,
        },
    };
    let answered = match answered {
        Some(r) => r,
        None => match tokio::time::timeout(read_timeout, answer).await {
            Ok(r) => r,
            Err(_) => return Exchange::Failed(ProxyError::Timeout),
        },
    };
    match answered {
        Ok(resp) => Exchange::Done(resp, reusable.then_some(conn.sender)),
        Err(mut e) => match e.take_message() {
            Some(mut request) if conn.reused => {
                let body_sent = request.body_mut().watch_sent();
                Exchange::Stale(Prepared {
                    request,
                    reusable,
                    body_sent,
                    host_missing,
                })
            }
            _ => Exchange::Failed(upstream_error(e.into_error())),
        },
    }
}

fn upstream_error(e: hyper::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(e) = s.downcast_ref::<body::BodyError>() {
            if let Some(refused) = e.client_fault() {
                return refused;
            }
        }
        source = s.source();
    }
    ProxyError::Upstream(e)
}

/// Refuses an answer whose length is ambiguous: `Content-Length` beside `Transfer-Encoding` (RFC 9112 §6.3 lets
/// a proxy pick one; a client or cache behind it might pick the other).
fn check_response(resp: &Response<Incoming>) -> Result<(), ProxyError> {
    let h = resp.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadResponse(
            "Content-Length with Transfer-Encoding",
        ));
    }
    Ok(())
}

/// Turns a server's answer into the client's: tunnel on a valid 101, learn sticky sessions, strip hop headers.
async fn respond(
    ctx: &Ctx<'_>,
    resp: Response<Incoming>,
    lease: Lease,
    learn: Learn,
    upgrade: Option<Upgrade>,
    out: &mut Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    let route = ctx.route;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(upgrade) = upgrade else {
            return Err(ProxyError::BadUpgrade(
                "101 to a request that asked for no upgrade",
            ));
        };
        return switch_protocols(ctx, resp, lease, upgrade, out);
    }
    let (mut parts, body) = resp.into_parts();
    let (prefix, body) =
        sticky::learn(&lease, &parts, body, learn, route.location.read_timeout).await?;
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    let body = UpstreamBody::new(prefix, body, route.location.read_timeout, lease);
    Ok(Response::from_parts(
        parts,
        ResponseBody::Upstream(Box::new(body)),
    ))
}

fn switch_protocols(
    ctx: &Ctx<'_>,
    mut resp: Response<Incoming>,
    lease: Lease,
    upgrade: Upgrade,
    out: &mut Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (route, client) = (ctx.route, ctx.client);
    request::check_websocket_accept(&resp, upgrade.accept.as_deref())?;
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let mut client_resp = Response::new(ResponseBody::empty());
    *client_resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let mut h = resp.headers().clone();
    headers::strip_hop_by_hop(&mut h);
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    *client_resp.headers_mut() = h;
    let idle = route.location.read_timeout;
    let hold = client.hold.clone();
    let (client_upgrade, in_flight) = (upgrade.client, lease.in_flight);
    let ended = ctx.log_tunnels.then(|| {
        let (ended, carried) = tokio::sync::oneshot::channel();
        out.tunnel = Some(carried);
        ended
    });
    hold.tracker.clone().spawn(async move {
        // Made here rather than captured, so the task holds one copy of the tunnel's future, not two.
        let carried = tunnel::run(client_upgrade, upstream_upgrade, idle, in_flight).await;
        if let Some(ended) = ended {
            let _ = ended.send(carried);
        }
        drop(hold);
    });
    Ok(client_resp)
}
