//! Sticky routing for `balance = "sid"`: which server a request of an Engine.IO session goes to, and learning
//! new sessions from the handshake answers servers give.

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::response_body::UpstreamBody;
use super::ProxyError;
use crate::request_body::BodyError;
use crate::sticky::engineio;
use crate::upstream::Upstream;

/// Where a request must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The server of its session: no other will do.
    Fixed(usize),
    /// Whichever server the balancer picks.
    Pick,
}

/// What to learn from the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    No,
    /// An `io` Set-Cookie, if the server sends one.
    Cookie,
    /// A handshake: the open packet in the body (and the cookie).
    Handshake,
}

/// Where a request of a sticky upstream goes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub learn: Learn,
    /// The session a `Fixed` target holds in the local table: forgotten when its server cannot be reached.
    pub session: Option<String>,
}

const PICK: Plan = Plan {
    target: Target::Pick,
    learn: Learn::No,
    session: None,
};

/// What a sticky lookup found, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A handshake: a session to be.
    New,
    Hit,
    Miss,
    /// The session's server is gone: the session is lost.
    Dead,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::New => "new",
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Dead => "dead",
        }
    }
}

/// The plan for a request, or why it cannot go anywhere, and what the lookup found.
pub struct Decision {
    pub plan: Result<Plan, ProxyError>,
    pub lookup: Option<Lookup>,
}

impl Decision {
    fn go(plan: Plan, lookup: Option<Lookup>) -> Decision {
        Decision {
            plan: Ok(plan),
            lookup,
        }
    }

    fn refuse(e: ProxyError, lookup: Lookup) -> Decision {
        Decision {
            plan: Err(e),
            lookup: Some(lookup),
        }
    }
}

/// Decides where a request goes; a session whose server is gone gets Engine.IO's "Session ID unknown".
/// The local table decides first; only a sid it does not hold is looked up in the shared store, if any.
pub async fn plan(upstream: &Upstream, req: &Request<Incoming>, upgrade: bool) -> Decision {
    match local_plan(upstream, req, upgrade) {
        Local::Decided(decision) => decision,
        Local::Unknown(sid) => shared_plan(upstream, &sid, upgrade).await,
    }
}

/// What the local table (or the sid's route prefix) made of a request.
enum Local {
    Decided(Decision),
    /// A well-formed sid the table does not hold.
    Unknown(String),
}

fn local_plan(upstream: &Upstream, req: &Request<Incoming>, upgrade: bool) -> Local {
    let decided = Local::Decided;
    let Some(table) = &upstream.sessions else {
        return decided(Decision::go(PICK, None));
    };
    if !req
        .uri()
        .path()
        .starts_with(upstream.config.sticky.path.as_str())
    {
        return decided(Decision::go(PICK, None));
    }
    let query = req.uri().query().unwrap_or("");
    if engineio::is_handshake(query) {
        // A new session: an `io` cookie left from an old one must not steer it.
        let plan = Plan {
            learn: Learn::Handshake,
            ..PICK
        };
        return decided(Decision::go(plan, Some(Lookup::New)));
    }
    let Some(raw) = engineio::query_sid(query).or_else(|| cookie_sid(req)) else {
        let plan = Plan {
            learn: Learn::Cookie,
            ..PICK
        };
        return decided(Decision::go(plan, None));
    };
    // A sid that does not decode to 1..=MAX_SID_LEN bytes cannot be in the table: unknown.
    let Some(sid) = engineio::decode_sid(raw) else {
        return decided(miss(upstream));
    };
    if let Some(index) = prefix_route(upstream, &sid) {
        return decided(fixed_or_dead(upstream, index, upgrade, None));
    }
    let Some((id, refresh)) = table.lookup_stored(&sid) else {
        return Local::Unknown(sid.into_owned());
    };
    match upstream.index_of(id) {
        Some(index) => {
            let decision = fixed_or_dead(upstream, index, upgrade, Some(sid.into_owned()));
            // The session goes to its server: its expiry in the shared store is due a refresh.
            let store = upstream.store.as_ref().filter(|_| refresh);
            if let (
                Some(store),
                Ok(Plan {
                    session: Some(sid), ..
                }),
            ) = (store, &decision.plan)
            {
                store.touch(sid, &upstream.peers[index].spec.name);
            }
            decided(decision)
        }
        // Removed from the config: the session is lost.
        None => {
            table.forget(&sid);
            decided(dead(upstream, upgrade))
        }
    }
}

/// A sid the local table does not hold: the shared store, when there is one, may know its server.
async fn shared_plan(upstream: &Upstream, sid: &str, upgrade: bool) -> Decision {
    let (Some(store), Some(table)) = (&upstream.store, &upstream.sessions) else {
        return miss(upstream);
    };
    let Some(server) = store.get(sid).await else {
        return miss(upstream);
    };
    match upstream.index_of_name(&server) {
        Some(index) if upstream.peers[index].full() => full(upstream),
        Some(index) if upstream.peers[index].holds_sessions() => {
            table.learn(sid, upstream.peers[index].state.id);
            hit(upstream, index, Learn::Cookie, Some(sid.to_string()))
        }
        // Learned by another instance for a server that is down or not in this config: the session is lost.
        _ => dead(upstream, upgrade),
    }
}

/// With `sticky.sid_prefix`, the server a sid names by its `route` + `.` prefix.
fn prefix_route(upstream: &Upstream, sid: &str) -> Option<usize> {
    if !upstream.config.sticky.sid_prefix {
        return None;
    }
    let (route, _) = sid.split_once('.')?;
    upstream.index_of_route(route)
}

fn hit(upstream: &Upstream, index: usize, learn: Learn, session: Option<String>) -> Decision {
    upstream.lookups.hit.inc();
    let plan = Plan {
        target: Target::Fixed(index),
        learn,
        session,
    };
    Decision::go(plan, Some(Lookup::Hit))
}

/// A session whose server is at its `max_conns`: answered as any request no server can take (the session stays).
fn full(upstream: &Upstream) -> Decision {
    upstream.lookups.hit.inc();
    Decision::refuse(ProxyError::NoServer, Lookup::Hit)
}

fn dead(upstream: &Upstream, upgrade: bool) -> Decision {
    upstream.lookups.dead.inc();
    Decision::refuse(ProxyError::SessionUnknown { upgrade }, Lookup::Dead)
}

/// A sid the table does not hold goes where the fallback places it (and may be learned from a cookie).
fn miss(upstream: &Upstream) -> Decision {
    upstream.lookups.miss.inc();
    let plan = Plan {
        learn: Learn::Cookie,
        ..PICK
    };
    Decision::go(plan, Some(Lookup::Miss))
}

/// The session's server, when it takes the request: `session` is the table's entry, forgotten when its server
/// is confirmed gone (a prefix-routed sid has none: it is not learned from the answer either).
fn fixed_or_dead(
    upstream: &Upstream,
    index: usize,
    upgrade: bool,
    session: Option<String>,
) -> Decision {
    let peer = &upstream.peers[index];
    if peer.full() {
        return full(upstream);
    }
    if peer.holds_sessions() {
        let learn = if session.is_some() {
            Learn::Cookie
        } else {
            Learn::No
        };
        return hit(upstream, index, learn, session);
    }
    if let (Some(table), Some(sid)) = (&upstream.sessions, &session) {
        table.forget(sid);
    }
    dead(upstream, upgrade)
}

fn cookie_sid(req: &Request<Incoming>) -> Option<&str> {
    crate::cookie::find_in_headers(req.headers(), engineio::cookie_sid)
}

/// A session pinned to a server that could not be reached is lost (counted as a `dead` lookup): it is
/// forgotten, and the client told at once, as Engine.IO would.
pub fn lost_session(
    upstream: &Upstream,
    session: Option<&str>,
    upgrade: bool,
    error: ProxyError,
) -> ProxyError {
    let Some(table) = &upstream.sessions else {
        return error;
    };
    if let Some(sid) = session {
        table.forget(sid);
    }
    upstream.lookups.dead.inc();
    ProxyError::SessionUnknown { upgrade }
}

/// Learns the session server `index` of `upstream` just opened or confirmed. For a handshake, reads (at most
/// `HANDSHAKE_PEEK_LIMIT` bytes of) the open packet, which is put back in front of the body.
pub async fn learn(
    upstream: &Upstream,
    index: usize,
    body: &mut UpstreamBody,
    parts: &http::response::Parts,
    learn: Learn,
) -> Result<(), ProxyError> {
    let Some(table) = upstream.sessions.as_ref().filter(|_| learn != Learn::No) else {
        return Ok(());
    };
    let peer = &upstream.peers[index];
    let cookie = parts
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(engineio::set_cookie_sid)
        .and_then(engineio::decode_sid);
    if learn == Learn::Cookie || parts.status != StatusCode::OK {
        if let Some(sid) = cookie {
            table.learn(&sid, peer.state.id);
        }
        return Ok(());
    }
    let prefix = peek_open_packet(body).await?;
    if let Some(sid) = engineio::handshake_sid(&prefix)
        .map(std::borrow::Cow::Borrowed)
        .or(cookie)
    {
        table.learn(&sid, peer.state.id);
        peer.state.metrics.sticky_learned.inc();
        if let Some(store) = upstream
            .store
            .as_ref()
            .filter(|_| prefix_route(upstream, &sid).is_none())
        {
            // Before the client has its sid, so any instance can route its next request. A failed write is
            // counted by the store; the session then lives in this instance's table only.
            store.put(&sid, &peer.spec.name).await;
        }
    }
    body.set_prefix(prefix);
    Ok(())
}

/// Reads the start of a body until it holds a complete open packet, ends, or passes the peek limit.
/// (The body's own read timeout bounds each wait.)
async fn peek_open_packet(body: &mut UpstreamBody) -> Result<Bytes, ProxyError> {
    let mut buf = BytesMut::new();
    while buf.len() < engineio::HANDSHAKE_PEEK_LIMIT && engineio::handshake_sid(&buf).is_none() {
        let frame = match body.frame().await {
            None => break,
            Some(Err(BodyError::UpstreamTimeout)) => return Err(ProxyError::Timeout),
            Some(Err(BodyError::Upstream(e))) => return Err(ProxyError::Upstream(e)),
            Some(Err(e)) => return Err(ProxyError::Upstream(std::io::Error::other(e))),
            Some(Ok(frame)) => frame,
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
