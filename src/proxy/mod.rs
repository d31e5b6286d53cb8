//! Request forwarding: route, pick a server (sticky session or balancer), send over a pooled connection,
//! relay the answer, and hand `101 Switching Protocols` to the tunnel.

pub mod affinity;
pub mod error;
pub mod headers;
pub mod request;
pub mod response_body;
pub mod tunnel;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::access_log::{AccessLog, Entry, Logged};
use crate::balance::PickKey;
use crate::conn::{ClientInfo, HeadCounts};
use crate::metrics::TunnelProtocol;
use crate::runtime::{Route, Snapshot};
use crate::upstream::conn::{Answer, Failure};
use crate::upstream::{Conn, InFlight, Upstream};
use crate::warn_limit::WarnLimit;
use affinity::{Learn, Lookup, Plan, Target};
pub use error::ProxyError;
use request::Prepared;
use response_body::{Lease, ResponseBody, UpstreamBody};

/// Failed requests, logged at most once a second (failed connects are limited per server).
static PROXY_ERRORS: WarnLimit = WarnLimit::new();

/// Answers one request: proxied, or limpet's own error answer, with its access log line to come. `head`: the
/// framing lines counted on the raw head, when the connection saw all of it.
pub async fn handle(
    snap: Arc<Snapshot>,
    client: &ClientInfo,
    req: Request<Incoming>,
    head: Option<HeadCounts>,
) -> Response<Logged<ResponseBody>> {
    let started = Instant::now();
    let log = &snap.access_log;
    // The request line is kept for the access log only.
    let request_line = log
        .is_on()
        .then(|| (req.method().clone(), req.uri().clone()));
    let from = Requester {
        client,
        started,
        request_line: request_line.as_ref(),
        log,
    };
    let Forwarded { result, trail } = forward(&snap, &from, req, head).await;
    let response = answer(result, client);
    trail.record(&response, started);
    // A tunnel writes its own line when it ends.
    let entry = request_line
        .filter(|_| response.extensions().get::<TunnelOpened>().is_none())
        .map(|line| trail.entry(client, started, line, response.status()));
    response.map(|body| log.wrap(entry, body))
}

/// Marks the answer that opened a tunnel (a 101 on HTTP/1.1, a 200 to an extended CONNECT on HTTP/2).
#[derive(Clone, Copy)]
pub struct TunnelOpened;

/// Who asked, and what its access log line needs.
struct Requester<'a> {
    client: &'a ClientInfo,
    started: Instant,
    /// Method and target, when the access log is on.
    request_line: Option<&'a (Method, Uri)>,
    log: &'a Arc<AccessLog>,
}

/// What became of a request: the answer, and what metrics and the access log say of it.
struct Forwarded {
    result: Result<Response<ResponseBody>, ProxyError>,
    trail: Trail,
}

/// What is known of where a request went.
#[derive(Default)]
struct Trail {
    upstream: Option<Arc<Upstream>>,
    server: Option<usize>,
    lookup: Option<Lookup>,
    /// The client address after PROXY protocol and `trusted_proxies` (None before it was known).
    client_ip: Option<IpAddr>,
}

/// The client's answer: the server's, or limpet's own for an error (logged).
fn answer(
    result: Result<Response<ResponseBody>, ProxyError>,
    client: &ClientInfo,
) -> Response<ResponseBody> {
    result.unwrap_or_else(|e| {
        if e.is_upstream() {
            if let Some(held_back) = PROXY_ERRORS.allow() {
                warn!(client = %client.peer, error = %e, held_back, "proxy error");
            }
        } else {
            debug!(client = %client.peer, error = %e, "request refused");
        }
        e.response()
    })
}

impl Trail {
    /// Counts the answer against its upstream and server.
    fn record(&self, response: &Response<ResponseBody>, started: Instant) {
        let Some(up) = &self.upstream else { return };
        up.duration.observe(started.elapsed().as_secs_f64());
        let status = response.status().as_u16();
        match self.server {
            Some(i) => up.peers[i].state.metrics.record_status(status),
            None => up.no_server.record(status),
        }
    }

    /// The access log line's fields.
    fn entry(
        &self,
        client: &ClientInfo,
        started: Instant,
        (method, uri): (Method, Uri),
        status: StatusCode,
    ) -> Entry {
        Entry {
            client: self.client_ip.unwrap_or_else(|| client.peer.ip()),
            method,
            uri,
            status: status.as_u16(),
            upstream: self.upstream.as_ref().map(|u| u.name().to_string()),
            server: self
                .upstream
                .as_ref()
                .zip(self.server)
                .and_then(|(u, i)| u.peers.get(i))
                .map(|p| p.spec.name.clone()),
            sticky: self.lookup.map(Lookup::as_str),
            started,
        }
    }
}

/// Reads the request, plans where it goes and sends it.
async fn forward(
    snap: &Snapshot,
    from: &Requester<'_>,
    mut req: Request<Incoming>,
    head: Option<HeadCounts>,
) -> Forwarded {
    let facts = match request::read(snap, from.client, &req, head) {
        Ok(facts) => facts,
        Err(e) => return Forwarded::untraced(e),
    };
    let route = facts.route;
    let upstream = route.upstream.clone();
    if facts.too_large() {
        let trail = Trail {
            upstream: Some(upstream),
            ..Trail::default()
        };
        let result = Err(ProxyError::BodyTooLarge);
        return Forwarded { result, trail };
    }
    let decision = affinity::plan(&upstream, &req, facts.websocket).await;
    let mut trail = Trail {
        upstream: Some(upstream.clone()),
        server: None,
        lookup: decision.lookup,
        client_ip: Some(facts.source.ip),
    };
    let plan = match decision.plan {
        Ok(plan) => plan,
        Err(e) => {
            return Forwarded {
                result: Err(e),
                trail,
            }
        }
    };
    let upgrade = facts.websocket.then(|| Upgrade {
        client: tunnel::ClientEnd {
            upgrade: hyper::upgrade::on(&mut req),
            protocol: match facts.h2_websocket_key {
                Some(_) => TunnelProtocol::H2,
                None => TunnelProtocol::H1,
            },
        },
        accept: facts.accept.clone(),
    });
    let key = match &facts.hash_key {
        Some(bytes) => PickKey::Bytes(bytes),
        None => PickKey::Ip(facts.source.ip),
    };
    let ctx = Ctx {
        route,
        upstream: &upstream,
        from,
        log_line: from.request_line.map(|line| LogLine {
            line,
            client_ip: facts.source.ip,
            lookup: decision.lookup,
        }),
    };
    let prepared = request::prepare(req, &facts, from.client);
    let sent = send(&ctx, plan, &key, prepared, upgrade).await;
    trail.server = sent.server;
    Forwarded {
        result: sent.result,
        trail,
    }
}

impl Forwarded {
    /// Refused before it was routed.
    fn untraced(e: ProxyError) -> Forwarded {
        Forwarded {
            result: Err(e),
            trail: Trail::default(),
        }
    }
}

/// Where a request is going and where it came from.
struct Ctx<'a> {
    route: &'a Route,
    upstream: &'a Arc<Upstream>,
    from: &'a Requester<'a>,
    /// What a tunnel's access log line says, when the access log is on.
    log_line: Option<LogLine<'a>>,
}

/// The parts of an access log line known before the request is sent.
#[derive(Clone, Copy)]
struct LogLine<'a> {
    line: &'a (Method, Uri),
    client_ip: IpAddr,
    lookup: Option<Lookup>,
}

/// The client half of a WebSocket upgrade and the accept value its server must answer.
struct Upgrade {
    client: tunnel::ClientEnd,
    accept: Option<String>,
}

/// What sending a request came to, and the server it went to last.
struct Sent {
    server: Option<usize>,
    result: Result<Response<ResponseBody>, ProxyError>,
}

/// Tries servers until one answers: a failed connect moves on to another usable server, up to `retries`.
async fn send(
    ctx: &Ctx<'_>,
    plan: Plan,
    key: &PickKey<'_>,
    mut prepared: Prepared,
    upgrade: Option<Upgrade>,
) -> Sent {
    let upstream = ctx.upstream;
    let loc = &ctx.route.location;
    let target = plan.target;
    let name = upstream.name();
    let mut tried: Vec<usize> = Vec::new();
    let mut server = None;
    let fail = |server, e| Sent {
        server,
        result: Err(e),
    };
    loop {
        let index = match target {
            Target::Fixed(i) => i,
            Target::Pick => match upstream.pick(key, &tried) {
                Some(i) => i,
                None => return fail(server, ProxyError::NoServer),
            },
        };
        server = Some(index);
        let peer = &upstream.peers[index];
        let in_flight = InFlight::new(peer.state.clone());
        let mut conn = match peer.pool.get(loc.connect_timeout).await {
            Ok(conn) => conn,
            Err(e) => {
                if let Some(held_back) = peer.state.connect_warnings.allow() {
                    warn!(upstream = %name, server = %peer.spec.name, error = %e, held_back, "connect failed");
                }
                peer.record_failure(name, &e);
                tried.push(index);
                if matches!(target, Target::Fixed(_)) {
                    let session = plan.session.as_deref();
                    let e = affinity::lost_session(upstream, session, upgrade.is_some(), e.into());
                    return fail(server, e);
                }
                if tried.len() > upstream.config.retries as usize {
                    return fail(server, e.into());
                }
                continue;
            }
        };
        if prepared.host_missing {
            if let Ok(host) = HeaderValue::from_str(&peer.spec.name) {
                prepared.request.headers_mut().insert(header::HOST, host);
            }
        }
        let e = match conn.exchange(prepared.request, loc.read_timeout).await {
            Ok(answer) => {
                let reply = Reply {
                    conn,
                    answer,
                    reusable: prepared.reusable,
                };
                let result = answered(ctx, index, in_flight, reply, plan.learn, upgrade).await;
                return Sent { server, result };
            }
            Err(Failure::Stale(request)) => {
                prepared.request = *request;
                continue;
            }
            Err(Failure::Upstream(e)) => ProxyError::Upstream(e),
            Err(Failure::Timeout) => ProxyError::Timeout,
            Err(Failure::Client(e)) => error::client_fault(&e)
                .unwrap_or_else(|| ProxyError::Upstream(std::io::Error::other(e))),
        };
        if e.is_upstream() {
            peer.record_failure(name, &e);
        }
        return fail(server, e);
    }
}
/// Relays the answer server `index` gave (its framing was checked as it was read: `Content-Length` beside
/// `Transfer-Encoding` and other ambiguous lengths are refused there).
async fn answered(
    ctx: &Ctx<'_>,
    index: usize,
    in_flight: InFlight,
    reply: Reply,
    learn: Learn,
    upgrade: Option<Upgrade>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let upstream = ctx.upstream;
    upstream.peers[index].state.record_success();
    let lease = Lease {
        upstream: upstream.clone(),
        index,
        in_flight,
    };
    respond(ctx, lease, reply, learn, upgrade).await
}

/// An answer's head and the connection its body is to be read from; the connection goes back to the pool after
/// when `reusable`.
struct Reply {
    conn: Conn,
    answer: Answer,
    reusable: bool,
}

/// Turns a server's answer into the client's: tunnel on a valid 101, learn sticky sessions, strip hop headers.
async fn respond(
    ctx: &Ctx<'_>,
    lease: Lease,
    reply: Reply,
    learn: Learn,
    upgrade: Option<Upgrade>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let head = &reply.answer.head;
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(upgrade) = upgrade else {
            return Err(ProxyError::BadUpgrade(
                "101 to a request that asked for no upgrade",
            ));
        };
        check_websocket_accept(&head.headers, upgrade.accept.as_deref())?;
        return Ok(switch_protocols(ctx, reply, lease, upgrade));
    }
    // On HTTP/2 a 2xx to the CONNECT opens the tunnel: a server that answered the upgrade with one did not
    // switch protocols.
    if head.status.is_success()
        && upgrade
            .as_ref()
            .is_some_and(|u| u.client.protocol == TunnelProtocol::H2)
    {
        return Err(ProxyError::BadUpgrade(
            "success without 101 to a WebSocket upgrade",
        ));
    }
    let Reply {
        conn,
        answer,
        reusable,
    } = reply;
    let Answer {
        head,
        body,
        keep_alive,
    } = answer;
    let mut resp = Response::new(());
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    let (mut parts, ()) = resp.into_parts();
    let index = lease.index;
    let mut body = UpstreamBody::new(conn, body, keep_alive && reusable, lease);
    affinity::learn(ctx.upstream, index, &mut body, &parts, learn).await?;
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(
        parts,
        ResponseBody::Upstream(Box::new(body)),
    ))
}

/// Answers the client's upgrade (101 on HTTP/1.1; 200 on HTTP/2, without the HTTP/1.1 handshake's headers) and
/// starts the tunnel, which begins once that answer is out.
fn switch_protocols(
    ctx: &Ctx<'_>,
    reply: Reply,
    lease: Lease,
    upgrade: Upgrade,
) -> Response<ResponseBody> {
    let mut client_resp = Response::new(ResponseBody::empty());
    let Reply { conn, answer, .. } = reply;
    let mut h = answer.head.headers;
    headers::strip_hop_by_hop(&mut h);
    match upgrade.client.protocol {
        TunnelProtocol::H1 => {
            *client_resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        TunnelProtocol::H2 => {
            *client_resp.status_mut() = StatusCode::OK;
            h.remove(header::SEC_WEBSOCKET_ACCEPT);
            h.remove(header::CONTENT_LENGTH);
        }
    }
    *client_resp.headers_mut() = h;
    client_resp.extensions_mut().insert(TunnelOpened);
    let idle = ctx.route.location.read_timeout;
    let hold = ctx.from.client.hold.clone();
    let log = ctx.log_line.map(|l| {
        let trail = Trail {
            upstream: Some(lease.upstream.clone()),
            server: Some(lease.index),
            lookup: l.lookup,
            client_ip: Some(l.client_ip),
        };
        let status = client_resp.status();
        let entry = trail.entry(ctx.from.client, ctx.from.started, l.line.clone(), status);
        Box::new(tunnel::TunnelLog {
            log: ctx.from.log.clone(),
            entry,
        })
    });
    let (client_upgrade, in_flight) = (upgrade.client, lease.in_flight);
    let tracker = hold.tracker.clone();
    let tunnels = hold.tunnels.clone();
    let key = tunnels.reserve();
    let task = tracker.spawn(tunnel::serve(
        client_upgrade,
        Box::new(conn.into_upgraded()),
        idle,
        in_flight,
        log,
        (hold, key),
    ));
    tunnels.insert(key, task.abort_handle());
    client_resp
}

/// Checks a 101: `Upgrade: websocket` and the accept value matching the client's key.
fn check_websocket_accept(h: &http::HeaderMap, expected: Option<&str>) -> Result<(), ProxyError> {
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
