//! The admin listener: `GET /metrics`, `/healthz`, `/status`; `POST /reload`,
//! `POST /servers/{upstream}/{addr}/drain` and `/undrain`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::app::App;
use crate::config::Balance;
use crate::upstream::state::DrainOverride;
use crate::upstream::{now_ms, Health, Peer};

type AdminResponse = Response<Full<Bytes>>;

/// Serves the admin API on `listener` until the process stops.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    if let Ok(local) = listener.local_addr() {
        info!(local = %local, "admin listening");
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> AdminResponse {
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
        (_, "/metrics" | "/healthz" | "/status" | "/reload") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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
                        "tunnels": p.state.metrics.tunnels_active.get(),
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
    json!({ "ready": app.is_ready(), "stopping": app.is_stopping(), "upstreams": upstreams })
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
