//! Active health checks: one task per server, `GET path` every `interval`; `fails` consecutive failures mark it
//! down, `passes` consecutive successes up. A server still in its first "checking" state is checked at once and
//! decided by that first result (a pass admits it, a failure or silence past `timeout` marks it down).
//! An Engine.IO handshake path passes only with a valid open packet, and the session it opened is closed again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::HealthCheck;
use crate::runtime::Snapshot;
use crate::sticky::engineio;
use crate::upstream::{Health, Peer, Pool, Upstream};

/// Most body bytes a check reads.
const BODY_LIMIT: usize = 16 * 1024;

/// The first check of every server that was still "checking" when the checks started: done once each has
/// its verdict.
pub struct FirstRound(mpsc::Receiver<()>);

impl FirstRound {
    /// A round that is done once every sender of `rx` is gone.
    pub fn new(rx: mpsc::Receiver<()>) -> FirstRound {
        FirstRound(rx)
    }

    /// Returns once every server of the round has its first verdict. Each check is bounded by its `timeout`.
    pub async fn done(mut self) {
        while self.0.recv().await.is_some() {}
    }
}

/// Starts the checks of every upstream that has them; they stop when `stop` turns true or its sender drops.
/// The answer says when the servers still "checking" (new ones) have had their first check.
pub fn start(snap: &Arc<Snapshot>, stop: watch::Receiver<bool>) -> FirstRound {
    let (first_tx, first_rx) = mpsc::channel(1);
    for up in snap.upstreams.values() {
        let Some(hc) = up.config.health_check.clone() else {
            for p in &up.peers {
                p.state.set_checked(false);
                p.state.set_health(Health::Up);
            }
            continue;
        };
        for index in 0..up.peers.len() {
            let state = &up.peers[index].state;
            state.set_checked(true);
            let first = (state.health() == Health::Checking).then(|| first_tx.clone());
            tokio::spawn(check_loop(
                up.clone(),
                index,
                hc.clone(),
                stop.clone(),
                first,
            ));
        }
    }
    FirstRound(first_rx)
}

/// The new health when a result that came `in_a_row` times flips it. A server still "checking" is decided by its
/// first result either way.
fn verdict(in_a_row: u32, ok: bool, current: Health, hc: &HealthCheck) -> Option<Health> {
    let needed = |n: u32| if current == Health::Checking { 1 } else { n };
    if ok {
        (current != Health::Up && in_a_row >= needed(hc.passes)).then_some(Health::Up)
    } else {
        (current != Health::Down && in_a_row >= needed(hc.fails)).then_some(Health::Down)
    }
}

/// Checks one server until `stop`. A server still "checking" is checked at once; `first` is dropped once it has
/// its first verdict (readiness waits on that).
async fn check_loop(
    up: Arc<Upstream>,
    index: usize,
    hc: HealthCheck,
    mut stop: watch::Receiver<bool>,
    mut first: Option<mpsc::Sender<()>>,
) {
    let peer = &up.peers[index];
    let host = hc.host.clone().unwrap_or_else(|| peer.spec.name.clone());
    let mut wait = if first.is_some() {
        Duration::ZERO
    } else {
        jitter(&peer.spec.name, hc.interval) / 4
    };
    loop {
        tokio::select! {
            biased;
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            _ = tokio::time::sleep(wait) => {}
        }
        wait = hc.interval + jitter(&peer.spec.name, hc.interval / 10);
        let result = check_once(peer, &host, &hc).await;
        let ok = result.is_ok();
        let m = &peer.state.metrics;
        if ok {
            m.checks_ok.inc()
        } else {
            m.checks_fail.inc()
        };
        if ok && peer.state.clear_passive() {
            info!(upstream = %up.name(), server = %peer.spec.name, "passive mark cleared: an active check passed");
        }
        let current = peer.state.health();
        let (sid, reason) = match result {
            Ok(sid) => (sid, None),
            Err(e) => (None, Some(e)),
        };
        let in_a_row = peer.state.check_streak.count(ok);
        if let Some(next) = verdict(in_a_row, ok, current, &hc) {
            apply(&up, index, next, reason);
        }
        drop(first.take());
        if let Some(sid) = sid {
            close_session(&peer.pool, &host, &hc.path, &sid, hc.timeout).await;
        }
    }
}

/// Records a health flip, once: log line, and sticky sessions of a server that went down are dropped.
fn apply(up: &Upstream, index: usize, next: Health, reason: Option<String>) {
    let peer = &up.peers[index];
    if !peer.state.set_health(next) {
        return;
    }
    match next {
        Health::Up => {
            info!(upstream = %up.name(), server = %peer.spec.name, by = "active check", "server is up")
        }
        _ => {
            let dropped = up
                .sessions
                .as_ref()
                .map_or(0, |t| t.forget_server(peer.state.id));
            warn!(upstream = %up.name(), server = %peer.spec.name, by = "active check", reason = %reason.unwrap_or_default(), until = "checks pass", sessions_dropped = dropped, "server is down");
        }
    }
}

/// A random delay under `span` (from the server's name and the clock's nanoseconds), so the checks of many servers
/// and of many limpet instances do not fire together.
fn jitter(name: &str, span: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = siphasher::sip::SipHasher13::new_with_keys(7, 11);
    name.hash(&mut h);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        .hash(&mut h);
    let ms = span.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % ms)
}

/// One check: Ok when the answer's status is in range (and, for an Engine.IO path, it is an open packet, whose
/// sid is returned so the session can be closed).
async fn check_once(peer: &Peer, host: &str, hc: &HealthCheck) -> Result<Option<String>, String> {
    let (status, body) = tokio::time::timeout(
        hc.timeout,
        one_off_request(&peer.pool, host, Method::GET, &hc.path, Bytes::new()),
    )
    .await
    .map_err(|_| {
        format!(
            "no answer within {}",
            humantime::format_duration(hc.timeout)
        )
    })??;
    if status < hc.expect_status.0 || status > hc.expect_status.1 {
        return Err(format!("status {status}"));
    }
    if !is_engineio(&hc.path) {
        return Ok(None);
    }
    let sid = engineio::handshake_sid(&body).ok_or("no Engine.IO open packet")?;
    Ok(Some(sid.to_string()))
}

fn is_engineio(path: &str) -> bool {
    path.split_once('?')
        .is_some_and(|(_, q)| engineio::query_param(q, "EIO").is_some())
}

/// Closes the session a check opened: a polling POST of the close packet.
async fn close_session(pool: &Pool, host: &str, path: &str, sid: &str, timeout: Duration) {
    let eio3 = path.contains("EIO=3");
    let body = Bytes::from_static(if eio3 { b"1:1" } else { b"1" });
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = format!("{path}{sep}sid={sid}");
    let request = one_off_request(pool, host, Method::POST, &url, body);
    let _ = tokio::time::timeout(timeout, request).await;
}

/// A one-off request on a fresh connection (TLS for a TLS upstream): (status, body up to BODY_LIMIT).
async fn one_off_request(
    pool: &Pool,
    host: &str,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    // The caller's timeout bounds the whole check.
    let stream = pool.open(Duration::MAX).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().map_err(|_| "bad check path".to_string())?;
    let h = req.headers_mut();
    h.insert(
        header::HOST,
        HeaderValue::from_str(host).map_err(|_| "bad host")?,
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("limpet-health-check"),
    );
    if !body.is_empty() {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain;charset=UTF-8"),
        );
    }
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::state::CheckStreak;

    fn hc() -> HealthCheck {
        HealthCheck {
            path: "/".into(),
            host: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            fails: 2,
            passes: 3,
            expect_status: (200, 399),
        }
    }

    #[test]
    fn first_pass_admits_a_checking_server() {
        let s = CheckStreak::default();
        assert_eq!(
            verdict(s.count(true), true, Health::Checking, &hc()),
            Some(Health::Up)
        );
    }

    #[test]
    fn first_failure_marks_a_checking_server_down() {
        let s = CheckStreak::default();
        assert_eq!(
            verdict(s.count(false), false, Health::Checking, &hc()),
            Some(Health::Down)
        );
    }

    #[test]
    fn flips_after_consecutive_results_only() {
        let hc = hc();
        let s = CheckStreak::default();
        let observe = |ok: bool, current: Health| verdict(s.count(ok), ok, current, &hc);
        assert_eq!(observe(false, Health::Up), None);
        assert_eq!(observe(true, Health::Up), None);
        assert_eq!(observe(false, Health::Up), None);
        assert_eq!(observe(false, Health::Up), Some(Health::Down));
        assert_eq!(observe(true, Health::Down), None);
        assert_eq!(observe(true, Health::Down), None);
        assert_eq!(observe(true, Health::Down), Some(Health::Up));
    }

    #[test]
    fn engineio_paths_are_recognised() {
        assert!(is_engineio("/socket.io/?EIO=4&transport=polling"));
        assert!(!is_engineio("/health"));
    }
}
