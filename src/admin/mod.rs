//! The admin listener: `GET /metrics`, `/healthz`, `/status`; `POST /reload`,
//! `POST /servers/{upstream}/{addr}/drain` and `/undrain`; the runtime server API under `/upstreams/` (`servers`).
//!
//! Browsers are kept out: a request with a cross-site `Origin` or `Sec-Fetch-Site`, or a `Host` that is not an IP
//! address or `localhost` (DNS rebinding), gets 403. Every method but GET and HEAD changes state and needs the
//! bearer token of `[admin] token_file` when one is set (401 without it).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info};

use crate::app::App;
use crate::clock::now_ms;
use crate::config::{AdminToken, Balance};
use crate::upstream::state::DrainOverride;
use crate::upstream::{Health, Peer};

mod servers;

type AdminResponse = Response<Full<Bytes>>;

/// Admin connections held at once; past it, new ones are closed.
const MAX_CONNECTIONS: usize = 256;
/// A request head must arrive whole within this of its connection's start or of the previous answer: it bounds
/// both a slow head and an idle keep-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request head.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves the admin API on `listener` until the process stops.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    if let Ok(local) = listener.local_addr() {
        info!(local = %local, "admin listening");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // While another process accepts here (an upgrade taking over), this one does not.
    let mut paused = app.process().admin_paused();
    loop {
        if *paused.borrow() && paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = paused.wait_for(|p| *p) => continue,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "admin connections at their cap: connection closed");
            continue;
        };
        let app = app.clone();
        let tracker = app.process().admin_connections.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> AdminResponse {
    if let Some(refused) = guard(app, &req) {
        return refused;
    }
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => metrics(app),
        (&Method::GET, "/healthz") => healthz(app),
        (&Method::GET, "/status") => json_response(StatusCode::OK, &status(app)),
        (&Method::POST, "/reload") => match app.reload().await {
            Ok(()) => text(StatusCode::OK, "reloaded\n"),
            Err(e) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
        },
        (&Method::POST, p) if p.starts_with("/servers/") => drain(app, p),
        (&Method::POST, "/upgrade") => upgrade(app).await,
        (_, p) if p.starts_with("/upstreams/") => {
            let rest = p.trim_start_matches("/upstreams/").to_string();
            servers::route(app, req, &rest).await
        }
        (_, "/metrics" | "/healthz" | "/status" | "/reload" | "/upgrade") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// 403 for what a browser sends on behalf of another site, 401 for a state change without the token (when one is
/// set); None when the request may go on.
fn guard(app: &App, req: &Request<Incoming>) -> Option<AdminResponse> {
    if let Err(why) = same_origin(req) {
        return Some(text(StatusCode::FORBIDDEN, format!("forbidden: {why}\n")));
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let snap = app.snapshot();
    let token = snap.config.admin.as_ref()?.token.as_ref()?;
    if authorized(req, token) {
        return None;
    }
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "a bearer token is needed (admin.token_file)\n",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"limpet admin\""),
    );
    Some(r)
}

/// Refuses what a browser sends on behalf of another site: a cross-site `Origin` or `Sec-Fetch-Site`, and a `Host`
/// that is neither an IP address nor `localhost` (a page that rebinds its own name to this address).
fn same_origin(req: &Request<Incoming>) -> Result<(), &'static str> {
    let h = req.headers();
    let host = h.get(header::HOST).map(|v| v.as_bytes());
    if let Some(host) = host {
        if !local_host(host) {
            return Err("Host must be an IP address or localhost");
        }
    }
    if let Some(site) = h.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Err("cross-site request");
        }
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let authority = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, a)| a.as_bytes());
        if authority.is_none() || authority != host {
            return Err("cross-origin request");
        }
    }
    Ok(())
}

/// Is a `Host` value an IP address or `localhost`, with or without a port?
fn local_host(host: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(host) else {
        return false;
    };
    let Ok(authority) = text.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Does the request carry `Authorization: Bearer <token>`? Compared in constant time.
fn authorized(req: &Request<Incoming>, token: &AdminToken) -> bool {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(given) = value
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .and_then(|_| value.get(7..))
    else {
        return false;
    };
    let want = token.0.as_bytes();
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn metrics(app: &App) -> AdminResponse {
    refresh_gauges(app);
    let mut r = Response::new(Full::new(Bytes::from(crate::metrics::metrics().render())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Brings the up/down gauges to the state of this moment (passive marks expire without an event).
fn refresh_gauges(app: &App) {
    let now = now_ms();
    for up in app.snapshot().upstreams.values() {
        for p in &up.peers {
            p.state.metrics.up.set(i64::from(p.alive(now)));
        }
    }
}

/// 200 only while limpet routes: after its first round of health checks, before shutdown.
fn healthz(app: &App) -> AdminResponse {
    if app.is_stopping() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if !app.is_ready() {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: first health checks\n",
        )
    } else {
        text(StatusCode::OK, "ok\n")
    }
}

/// Every server with its state: up / down / draining / checking.
fn status(app: &App) -> serde_json::Value {
    let now = now_ms();
    let snap = app.snapshot();
    let upstreams: serde_json::Map<String, serde_json::Value> = snap
        .upstreams
        .values()
        .map(|up| {
            let servers: Vec<serde_json::Value> = up
                .peers
                .iter()
                .map(|p| {
                    json!({
                        "addr": p.spec.name,
                        "state": server_state(p, now),
                        "backup": p.spec.backup,
                        "weight": p.spec.weight,
                        "active": p.state.active(),
                        "tunnels": p.state.metrics.tunnels_open(),
                        "sticky_sessions": p.state.metrics.sticky_sessions.get(),
                    })
                })
                .collect();
            let sessions = up.sessions.as_ref().map_or(0, |t| t.len());
            let upstream = json!({
                "balance": balance_name(up.config.balance),
                "sessions": sessions,
                "servers": servers,
            });
            (up.name().to_string(), upstream)
        })
        .collect();
    json!({
        "ready": app.is_ready(),
        "stopping": app.is_stopping(),
        "process": app.process().status(),
        "upstreams": upstreams,
    })
}

/// `POST /upgrade`: hands this process over to the binary at its path; answers once the new one serves.
async fn upgrade(app: &Arc<App>) -> AdminResponse {
    match app.upgrade().await {
        Ok(pid) => json_response(
            StatusCode::OK,
            &json!({ "upgraded": true, "old_pid": std::process::id(), "new_pid": pid }),
        ),
        Err(e @ crate::app::UpgradeError::Busy(_)) => {
            json_response(StatusCode::CONFLICT, &json!({ "error": e.to_string() }))
        }
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "error": e.to_string() }),
        ),
    }
}

/// A balance method as the config spells it.
fn balance_name(b: Balance) -> &'static str {
    match b {
        Balance::RoundRobin => "round_robin",
        Balance::LeastConn => "least_conn",
        Balance::IpHash => "ip_hash",
        Balance::Hash => "hash",
        Balance::Sid => "sid",
    }
}

/// What `/status` says of a server: down (config, checks or passive mark), checking, draining, or up.
fn server_state(p: &Peer, now: u64) -> &'static str {
    if p.spec.down || p.state.passively_down(now) || p.state.health() == Health::Down {
        "down"
    } else if p.state.health() == Health::Checking {
        "checking"
    } else if p.state.draining(&p.spec) {
        "draining"
    } else {
        "up"
    }
}

/// `POST /servers/{upstream}/{addr}/drain|undrain`.
fn drain(app: &App, path: &str) -> AdminResponse {
    let parts: Vec<&str> = path.trim_start_matches("/servers/").split('/').collect();
    let [upstream, addr, action] = parts.as_slice() else {
        return text(
            StatusCode::NOT_FOUND,
            "use /servers/{upstream}/{addr}/drain or /undrain\n",
        );
    };
    let how = match *action {
        "drain" => DrainOverride::Drain,
        "undrain" => DrainOverride::Undrain,
        _ => return text(StatusCode::NOT_FOUND, "use /drain or /undrain\n"),
    };
    let snap = app.snapshot();
    let Some(peer) = snap
        .upstream(upstream)
        .and_then(|u| u.peers.iter().find(|p| p.spec.name == *addr))
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no server {addr} in upstream {upstream}\n"),
        );
    };
    peer.state.set_drain_override(how);
    info!(upstream = %upstream, server = %addr, action = %action, "admin drain");
    text(StatusCode::OK, format!("{action}ed {upstream}/{addr}\n"))
}
