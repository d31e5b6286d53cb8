//! The runtime server API: `GET|POST /upstreams/{name}/servers`, `PATCH|DELETE /upstreams/{name}/servers/{addr}`.
//!
//! Changes edit the upstream's loaded server list; an upstream with `state_file` keeps them in that file (and
//! reads them back at start and reload), one without keeps them until the next reload, and every answer says
//! which. A removed server drains first (no new sessions; its sessions and tunnels go on) and leaves once it
//! holds nothing. Bad input gets 400 with the reason and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use tracing::info;

use super::{json_response, server_state, AdminResponse};
use crate::app::{App, ChangeError};
use crate::clock::now_ms;
use crate::config::{self, ServerEntry};

/// Largest request body the API reads.
const BODY_LIMIT: usize = 64 * 1024;
/// A request body must arrive whole within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves a request under `/upstreams/`; `rest` is the path after it.
pub async fn route(app: &Arc<App>, req: Request<Incoming>, rest: &str) -> AdminResponse {
    let parts: Vec<&str> = rest.split('/').collect();
    let method = req.method().clone();
    match (method, parts.as_slice()) {
        (Method::GET | Method::HEAD, [upstream, "servers"]) => list(app, upstream),
        (Method::POST, [upstream, "servers"]) => {
            let upstream = upstream.to_string();
            match body(req).await {
                Ok(v) => answer(add(app, &upstream, v).await),
                Err(e) => answer(Err(e)),
            }
        }
        (Method::PATCH, [upstream, "servers", addr]) => {
            let (upstream, addr) = (upstream.to_string(), addr.to_string());
            match body(req).await {
                Ok(v) => answer(patch(app, &upstream, &addr, v).await),
                Err(e) => answer(Err(e)),
            }
        }
        (Method::DELETE, [upstream, "servers", addr]) => answer(remove(app, upstream, addr).await),
        (_, [_, "servers"] | [_, "servers", _]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET or POST on /upstreams/{name}/servers, PATCH or DELETE on /upstreams/{name}/servers/{addr}",
        ),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `GET`: every server of the running upstream with its origin, settings and state, and the entries DNS fills.
fn list(app: &App, upstream: &str) -> AdminResponse {
    let snap = app.snapshot();
    let (Some(up), Some(entries)) = (snap.upstream(upstream), app.entries(upstream)) else {
        return error(StatusCode::NOT_FOUND, format!("no upstream {upstream:?}"));
    };
    let now = now_ms();
    let servers: Vec<Value> = up
        .peers
        .iter()
        .map(|p| {
            let s = &p.spec;
            json!({
                "addr": s.name,
                "origin": s.origin.label(),
                "weight": s.weight,
                "backup": s.backup,
                "down": s.down,
                "drain": p.state.draining(s),
                "route": s.route,
                "slow_start": humantime::format_duration(s.slow_start).to_string(),
                "ramp": p.state.ramp(s, now),
                "departing": app.is_departing(upstream, &s.name),
                "state": server_state(p, now),
                "active": p.state.active(),
                "sticky_sessions": p.state.metrics.sticky_sessions.get(),
            })
        })
        .collect();
    let dns: Vec<Value> = entries
        .dns
        .iter()
        .map(|d| match &d.lookup {
            config::Lookup::Host { .. } => json!({"addr": d.template.name, "resolve": true}),
            config::Lookup::Service(name) => json!({"service": name}),
        })
        .collect();
    let mut doc = Map::new();
    doc.insert("upstream".into(), json!(upstream));
    doc.insert("servers".into(), Value::Array(servers));
    doc.insert("dns_entries".into(), Value::Array(dns));
    doc.insert("persisted".into(), persisted(&entries));
    json_response(StatusCode::OK, &Value::Object(doc))
}

/// Where API changes to this upstream are kept.
fn persisted(up: &config::Upstream) -> Value {
    match &up.state_file {
        Some(path) => json!(format!("in state_file {}", path.display())),
        None => json!("until the next reload (no state_file)"),
    }
}

/// What a change answers: 200 with what happened and where it is kept, or the reason it was refused.
fn answer(result: Result<(StatusCode, Value), ChangeError>) -> AdminResponse {
    match result {
        Ok((status, v)) => json_response(status, &v),
        Err(e) => {
            let status = match e {
                ChangeError::BadRequest(_) => StatusCode::BAD_REQUEST,
                ChangeError::NotFound(_) => StatusCode::NOT_FOUND,
                ChangeError::Conflict(_) => StatusCode::CONFLICT,
                ChangeError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.to_string())
        }
    }
}

fn error(status: StatusCode, reason: impl Into<String>) -> AdminResponse {
    json_response(status, &json!({ "error": reason.into() }))
}

/// The request body as a JSON object (bounded in size and time).
async fn body(req: Request<Incoming>) -> Result<Map<String, Value>, ChangeError> {
    let bad = |m: String| ChangeError::BadRequest(m);
    let collected = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), BODY_LIMIT).collect(),
    )
    .await
    .map_err(|_| bad("the request body did not arrive in time".into()))?
    .map_err(|e| {
        bad(format!(
            "cannot read the request body (at most {BODY_LIMIT} bytes): {e}"
        ))
    })?;
    let bytes: Bytes = collected.to_bytes();
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad("the body must be a JSON object".into())),
        Err(e) => Err(bad(format!("the body is not valid JSON: {e}"))),
    }
}

/// `POST`: adds a server (the keys of `[[upstream.NAME.server]]`: addr or service, weight, backup, route, …).
async fn add(
    app: &Arc<App>,
    upstream: &str,
    body: Map<String, Value>,
) -> Result<(StatusCode, Value), ChangeError> {
    // A host name in addr is resolved while validating: off the runtime's workers.
    let entry = tokio::task::spawn_blocking(move || config::api_server_entry(Value::Object(body)))
        .await
        .map_err(|e| ChangeError::BadRequest(format!("validation failed: {e}")))?
        .map_err(|problems| {
            let why: Vec<String> = problems.iter().map(ToString::to_string).collect();
            ChangeError::BadRequest(why.join("; "))
        })?;
    let name = entry.name().to_string();
    let running = app.snapshot();
    let taken = running
        .upstream(upstream)
        .is_some_and(|u| u.index_of_name(&name).is_some());
    let kept = app
        .change_servers(upstream, |up| {
            if taken || listed(up, &name) {
                return Err(ChangeError::Conflict(format!(
                    "{name} is already a server of {upstream}"
                )));
            }
            match entry {
                ServerEntry::Fixed(spec) => up.servers.push(spec),
                ServerEntry::Dns(dns) => up.dns.push(dns),
            }
            Ok(persisted(up))
        })
        .await?;
    info!(%upstream, server = %name, "runtime API: server added");
    Ok((
        StatusCode::CREATED,
        json!({ "added": name, "takes_traffic": "after its first health check", "persisted": kept }),
    ))
}

/// Is `name` an entry of `up` (a fixed server, or a DNS entry as written)?
fn listed(up: &config::Upstream, name: &str) -> bool {
    up.servers.iter().any(|s| s.name == name) || up.dns.iter().any(|d| d.template.name == name)
}

/// What `PATCH` may change.
#[derive(Default)]
struct Patch {
    weight: Option<u32>,
    drain: Option<bool>,
    down: Option<bool>,
}

impl Patch {
    fn parse(body: Map<String, Value>) -> Result<Patch, ChangeError> {
        let bad = |m: String| ChangeError::BadRequest(m);
        if body.is_empty() {
            return Err(bad("nothing to change: give weight, drain or down".into()));
        }
        let mut p = Patch::default();
        for (key, value) in body {
            match key.as_str() {
                "weight" => {
                    let w = value
                        .as_u64()
                        .filter(|w| (1..=1000).contains(w))
                        .ok_or_else(|| bad(format!("weight: must be 1..=1000, got {value}")))?;
                    p.weight = Some(w as u32);
                }
                "drain" | "down" => {
                    let b = value
                        .as_bool()
                        .ok_or_else(|| bad(format!("{key}: must be true or false, got {value}")))?;
                    if key == "drain" {
                        p.drain = Some(b);
                    } else {
                        p.down = Some(b);
                    }
                }
                other => return Err(bad(format!("{other}: unknown key (weight, drain, down)"))),
            }
        }
        Ok(p)
    }

    fn apply(&self, spec: &mut config::ServerSpec) {
        if let Some(w) = self.weight {
            spec.weight = w;
        }
        if let Some(d) = self.drain {
            spec.drain = d;
        }
        if let Some(d) = self.down {
            spec.down = d;
        }
    }
}

/// `PATCH`: changes `weight`, `drain` or `down` of a server (or of every server of a DNS entry, by its name).
async fn patch(
    app: &Arc<App>,
    upstream: &str,
    addr: &str,
    body: Map<String, Value>,
) -> Result<(StatusCode, Value), ChangeError> {
    let patch = Patch::parse(body)?;
    let named_by_dns = named_by_dns(app, upstream, addr);
    let kept = app
        .change_servers(upstream, |up| {
            let spec = up.servers.iter_mut().find(|s| s.name == addr).or_else(|| {
                up.dns
                    .iter_mut()
                    .find(|d| d.template.name == addr)
                    .map(|d| &mut d.template)
            });
            match spec {
                Some(spec) => patch.apply(spec),
                None => return Err(not_listed(upstream, addr, named_by_dns)),
            }
            Ok(persisted(up))
        })
        .await?;
    info!(%upstream, server = %addr, "runtime API: server changed");
    Ok((
        StatusCode::OK,
        json!({ "changed": addr, "persisted": kept }),
    ))
}

/// `DELETE`: removes a server (or a DNS entry, by its name); it drains, then leaves once it holds nothing.
async fn remove(
    app: &Arc<App>,
    upstream: &str,
    addr: &str,
) -> Result<(StatusCode, Value), ChangeError> {
    let named_by_dns = named_by_dns(app, upstream, addr);
    let kept = app
        .change_servers(upstream, |up| {
            if !listed(up, addr) {
                return Err(not_listed(upstream, addr, named_by_dns));
            }
            if up.servers.len() + up.dns.len() == 1 {
                return Err(ChangeError::Conflict(format!(
                    "{addr} is the last server of {upstream}: add another first"
                )));
            }
            up.servers.retain(|s| s.name != addr);
            up.dns.retain(|d| d.template.name != addr);
            Ok(persisted(up))
        })
        .await?;
    info!(%upstream, server = %addr, "runtime API: server removed (draining)");
    Ok((
        StatusCode::OK,
        json!({ "removed": addr, "draining": "until its sessions and tunnels end", "persisted": kept }),
    ))
}

/// Is `addr` a running server of `upstream` that a DNS answer named (not an entry of its own)?
fn named_by_dns(app: &App, upstream: &str, addr: &str) -> bool {
    app.snapshot().upstream(upstream).is_some_and(|u| {
        u.peers
            .iter()
            .any(|p| p.spec.name == addr && p.spec.origin == config::Origin::Dns)
    })
}

fn not_listed(upstream: &str, addr: &str, named_by_dns: bool) -> ChangeError {
    if named_by_dns {
        ChangeError::Conflict(format!(
            "{addr} is named by a DNS entry of {upstream}: change the entry (or its records), or drain it with POST /servers/{upstream}/{addr}/drain"
        ))
    } else {
        ChangeError::NotFound(format!("no server {addr} in upstream {upstream}"))
    }
}
