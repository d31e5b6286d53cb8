//! Active health checks, passive failure marks, and failover to backups and back, against real backends:
//! HTTP servers that answer 200, 500 or nothing, closed ports, and real Socket.IO nodes.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::polling::{handshake, post, whoami, ws_read};
use support::*;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);
/// The checks most tests use: quick, and tolerant of a slow moment on a busy machine.
const CHECKS: &str = "[upstream.app.health_check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nfails = 2\npasses = 2\n";

// ---------------------------------------------------------------------------------------------------------------
// A backend the test switches between answering, failing and hanging.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 200 with its name.
    Ok,
    /// 500.
    Error,
    /// No answer until the mode changes.
    Hang,
}

/// An HTTP backend whose answers follow `mode`. `GET /fail` from a client closes the connection without an answer.
struct Switch {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Requests from clients (anything but limpet's health checks).
    clients: Arc<AtomicUsize>,
    /// Health checks waiting for a `Hang` to end.
    hanging: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl Switch {
    async fn start(name: &'static str, mode: Mode) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(mode);
        let (stop, stop_rx) = watch::channel(false);
        let s = Switch {
            addr,
            mode,
            clients: Arc::new(AtomicUsize::new(0)),
            hanging: Arc::new(AtomicUsize::new(0)),
            stop,
        };
        let (mode_tx, clients, hanging) = (s.mode.clone(), s.clients.clone(), s.hanging.clone());
        tokio::spawn(async move {
            let mut stop_rx = stop_rx;
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                let (mode_tx, clients, hanging) =
                    (mode_tx.clone(), clients.clone(), hanging.clone());
                let mut conn_stop = stop_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        answer(name, mode_tx.clone(), clients.clone(), hanging.clone(), req)
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stop.changed() => {}
                    }
                });
            }
        });
        s
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    fn clients(&self) -> usize {
        self.clients.load(SeqCst)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn answer(
    name: &'static str,
    mode: watch::Sender<Mode>,
    clients: Arc<AtomicUsize>,
    hanging: Arc<AtomicUsize>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let check = req
        .headers()
        .get("user-agent")
        .is_some_and(|v| v == "limpet-health-check");
    if !check {
        clients.fetch_add(1, SeqCst);
        if req.uri().path() == "/fail" {
            return Err("closing without an answer".into());
        }
    }
    let mut rx = mode.subscribe();
    let current = *rx.borrow_and_update();
    let current = if current == Mode::Hang {
        if check {
            hanging.fetch_add(1, SeqCst);
        }
        let next = rx.wait_for(|m| *m != Mode::Hang).await.map(|m| *m);
        if check {
            hanging.fetch_sub(1, SeqCst);
        }
        next?
    } else {
        current
    };
    let (status, body) = match current {
        Mode::Error => (StatusCode::INTERNAL_SERVER_ERROR, "broken"),
        _ => (StatusCode::OK, name),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------------------------
// Config and admin helpers.

/// Listener + admin, location "/" → upstream "app" with these servers and tables.
fn config(balance: &str, location_keys: &str, servers: &[String], tables: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n\n[[server.location]]\npath = \"/\"\nproxy_pass = \"app\"\nconnect_timeout = \"1s\"\n{location_keys}\n\n[upstream.app]\nbalance = \"{balance}\"\n{}\n{tables}",
        servers.concat()
    )
}

/// The /status entry of one server of upstream "app".
async fn server_status(l: &Limpet, addr: SocketAddr) -> Value {
    let st = l.status().await;
    server_entry(&st, addr)
}

async fn state(l: &Limpet, addr: SocketAddr) -> String {
    server_status(l, addr).await["state"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait_state(l: &Limpet, addr: SocketAddr, want: &str) {
    eventually(WAIT, &format!("{addr} {want}"), || async {
        (state(l, addr).await == want).then_some(())
    })
    .await;
}

/// A counter of /metrics for a series whose labels contain all of `labels`.
async fn metric(l: &Limpet, name: &str, labels: &[&str]) -> f64 {
    let text = get(l.admin.unwrap(), "/metrics").await.text();
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|lab| line.contains(lab)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
}

/// Sends `n` requests; the bodies (backend names) they got.
async fn bodies(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let r = get(addr, &format!("/client/{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        out.push(r.text());
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Detection: 500, no answer, refused connections.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_500_is_marked_down_and_gets_no_client_after() {
    let good = HttpBackend::start("good").await;
    let bad = Switch::start("bad", Mode::Ok).await;
    let servers = [server_table(good.addr, ""), server_table(bad.addr, "")];
    let limpet = Limpet::start(&config("round_robin", "", &servers, CHECKS));
    wait_state(&limpet, bad.addr, "up").await;
    wait_state(&limpet, good.addr, "up").await;
    assert!(bodies(limpet.addr(), 4).await.contains(&"bad".to_string()));

    bad.set(Mode::Error);
    wait_state(&limpet, bad.addr, "down").await;
    limpet.wait_log("reason=status 500", WAIT).await;
    let before = bad.clients();
    assert!(bodies(limpet.addr(), 20).await.iter().all(|b| b == "good"));
    assert_eq!(bad.clients(), before, "a server marked down got a client");

    bad.set(Mode::Ok);
    wait_state(&limpet, bad.addr, "up").await;
    assert!(bodies(limpet.addr(), 4).await.contains(&"bad".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_marked_down() {
    let good = HttpBackend::start("good").await;
    let mute = Switch::start("mute", Mode::Ok).await;
    let servers = [server_table(good.addr, ""), server_table(mute.addr, "")];
    let limpet = Limpet::start(&config("round_robin", "", &servers, CHECKS));
    wait_state(&limpet, mute.addr, "up").await;

    mute.set(Mode::Hang);
    wait_state(&limpet, mute.addr, "down").await;
    limpet.wait_log("reason=no answer within", WAIT).await;
    let before = mute.clients();
    assert!(bodies(limpet.addr(), 10).await.iter().all(|b| b == "good"));
    assert_eq!(mute.clients(), before);

    mute.set(Mode::Ok);
    wait_state(&limpet, mute.addr, "up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_connections_is_marked_down_and_up_when_it_returns() {
    let good = HttpBackend::start("good").await;
    let gone = HttpBackend::start("gone").await;
    let addr = gone.addr;
    let servers = [
        server_table(good.addr, ""),
        server_table(addr, "max_fails = 0"),
    ];
    let limpet = Limpet::start(&config("round_robin", "", &servers, CHECKS));
    wait_state(&limpet, addr, "up").await;

    gone.stop();
    wait_state(&limpet, addr, "down").await;
    limpet.wait_log("reason=connect", WAIT).await;
    assert!(bodies(limpet.addr(), 10).await.iter().all(|b| b == "good"));

    let _back = HttpBackend::start_on("back", addr).await;
    wait_state(&limpet, addr, "up").await;
    assert!(bodies(limpet.addr(), 4).await.contains(&"back".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engineio_check_passes_only_on_an_open_packet() {
    let plain = HttpBackend::start("plain").await;
    let tables = "[upstream.app.health_check]\npath = \"/socket.io/?EIO=4&transport=polling\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\n";
    let limpet = Limpet::start(&config(
        "round_robin",
        "",
        &[server_table(plain.addr, "")],
        tables,
    ));
    wait_state(&limpet, plain.addr, "down").await;
    limpet
        .wait_log("reason=no Engine.IO open packet", WAIT)
        .await;
    assert_eq!(get(limpet.addr(), "/x").await.status, 502);
}

// ---------------------------------------------------------------------------------------------------------------
// Startup: not ready until every server has its first verdict, bounded by the check timeout.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limpet_is_not_ready_until_the_first_checks_and_a_hanging_server_counts_down() {
    let slow = Switch::start("slow", Mode::Hang).await;
    let tables = "[upstream.app.health_check]\npath = \"/health\"\ninterval = \"1s\"\ntimeout = \"3s\"\npasses = 2\n";
    let mut limpet = Limpet::start_unready(&config(
        "round_robin",
        "",
        &[server_table(slow.addr, "")],
        tables,
    ));
    // The first check hangs for up to its 3 s timeout: meanwhile /healthz says so, and nothing is accepted.
    let healthz = get(limpet.admin.unwrap(), "/healthz").await;
    assert_eq!(healthz.status, 503, "{}", healthz.text());
    assert!(healthz.text().contains("starting"), "{}", healthz.text());
    assert!(!limpet
        .logs()
        .iter()
        .any(|l| l.contains(" listening ") && !l.contains("admin listening")));
    let st = limpet.status().await;
    assert_eq!(st["ready"], false, "{st}");

    limpet.wait_listening(1);
    assert_eq!(get(limpet.admin.unwrap(), "/healthz").await.status, 200);
    // Silent past the timeout: down, not "checking", and limpet answers for it.
    assert_eq!(state(&limpet, slow.addr).await, "down");
    assert_eq!(get(limpet.addr(), "/x").await.status, 502);
    assert_eq!(slow.clients(), 0);

    // Checked on: `passes` passes bring it up.
    slow.set(Mode::Ok);
    wait_state(&limpet, slow.addr, "up").await;
    let passes = metric(
        &limpet,
        "limpet_health_checks_total",
        &[&format!("server=\"{}\"", slow.addr), "result=\"ok\""],
    )
    .await;
    assert!(passes >= 2.0, "up after {passes} passes");
    assert_eq!(get(limpet.addr(), "/x").await.text(), "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_added_by_a_reload_takes_traffic_after_its_first_pass_while_the_others_serve() {
    let old = HttpBackend::start("old").await;
    let new = Switch::start("new", Mode::Hang).await;
    let tables =
        "[upstream.app.health_check]\npath = \"/health\"\ninterval = \"1s\"\ntimeout = \"5s\"\n";
    let limpet = Limpet::start(&config(
        "round_robin",
        "",
        &[server_table(old.addr, "")],
        tables,
    ));
    limpet.write_config(&config(
        "round_robin",
        "",
        &[server_table(old.addr, ""), server_table(new.addr, "")],
        tables,
    ));
    limpet.signal("HUP");
    limpet.wait_log("config reloaded", WAIT).await;
    // Its first check hangs: it is "checking" and takes nothing; the old server serves every request.
    assert_eq!(state(&limpet, new.addr).await, "checking");
    for i in 0..6 {
        assert_eq!(get(limpet.addr(), &format!("/{i}")).await.text(), "old");
    }
    new.set(Mode::Ok);
    wait_state(&limpet, new.addr, "up").await;
    assert!(bodies(limpet.addr(), 6).await.contains(&"new".to_string()));
}

// ---------------------------------------------------------------------------------------------------------------
// Passive and active together.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_mark_is_lifted_by_an_active_pass() {
    let s = Switch::start("s", Mode::Ok).await;
    let tables = "[upstream.app.health_check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"8s\"\nfails = 5\npasses = 1\n";
    let servers = [server_table(
        s.addr,
        "max_fails = 1\nfail_timeout = \"120s\"",
    )];
    let limpet = Limpet::start(&config("round_robin", "", &servers, tables));
    wait_state(&limpet, s.addr, "up").await;

    // Hold the checks (none can pass meanwhile), then fail a client request: the passive mark takes it down.
    s.set(Mode::Hang);
    eventually(WAIT, "a check waiting", || async {
        (s.hanging.load(SeqCst) > 0).then_some(())
    })
    .await;
    assert_eq!(get(limpet.addr(), "/fail").await.status, 502);
    assert_eq!(state(&limpet, s.addr).await, "down");
    assert_eq!(get(limpet.addr(), "/x").await.status, 502);

    // The held check passes: the server is back long before its 120 s fail_timeout.
    s.set(Mode::Ok);
    wait_state(&limpet, s.addr, "up").await;
    assert_eq!(get(limpet.addr(), "/x").await.text(), "s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_active_checks_a_passive_mark_ends_after_fail_timeout() {
    let s = Switch::start("s", Mode::Ok).await;
    let servers = [server_table(s.addr, "max_fails = 1\nfail_timeout = \"5s\"")];
    let limpet = Limpet::start(&config("round_robin", "", &servers, ""));
    assert_eq!(get(limpet.addr(), "/x").await.text(), "s");
    assert_eq!(get(limpet.addr(), "/fail").await.status, 502);
    assert_eq!(state(&limpet, s.addr).await, "down");
    let before = s.clients();
    assert_eq!(get(limpet.addr(), "/x").await.status, 502);
    assert_eq!(s.clients(), before);
    wait_state(&limpet, s.addr, "up").await;
    assert_eq!(get(limpet.addr(), "/x").await.text(), "s");
}

// ---------------------------------------------------------------------------------------------------------------
// Backups.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_serves_while_the_primaries_are_down_and_hands_back() {
    let p1 = HttpBackend::start("p1").await;
    let p2 = HttpBackend::start("p2").await;
    let b = HttpBackend::start("b").await;
    let (a1, a2) = (p1.addr, p2.addr);
    // No passive marks on the primaries: only the active checks take them out.
    let servers = [
        server_table(a1, "max_fails = 0"),
        server_table(a2, "max_fails = 0"),
        server_table(b.addr, "backup = true"),
    ];
    let limpet = Limpet::start(&config("round_robin", "", &servers, CHECKS));
    for a in [a1, a2, b.addr] {
        wait_state(&limpet, a, "up").await;
    }
    let got = bodies(limpet.addr(), 6).await;
    assert!(got.iter().all(|g| g == "p1" || g == "p2"), "{got:?}");

    p1.stop();
    p2.stop();
    // Within interval * fails, plus a margin for a busy machine.
    let within = Duration::from_millis(200 * 2) + Duration::from_secs(10);
    eventually(within, "the backup serving", || async {
        let r = get(limpet.addr(), "/x").await;
        (r.text() == "b").then_some(())
    })
    .await;
    assert!(bodies(limpet.addr(), 6).await.iter().all(|g| g == "b"));

    let p1 = HttpBackend::start_on("p1", a1).await;
    wait_state(&limpet, a1, "up").await;
    assert!(bodies(limpet.addr(), 6).await.iter().all(|g| g == "p1"));
    drop(p1);
}

// ---------------------------------------------------------------------------------------------------------------
// Socket.IO sessions: backups, dead sessions, and checks that leave no sessions behind.

/// The node behind a Socket.IO WebSocket (connects the namespace first when `ack` is 1).
async fn ws_whoami(ws: &mut Ws, ack: u32) -> String {
    if ack == 1 {
        ws.send(Message::Text("40".into())).await.unwrap();
        ws_read(ws, "40").await;
    }
    ws.send(Message::Text(format!("42{ack}[\"whoami\"]")))
        .await
        .unwrap();
    let t = ws_read(ws, &format!("43{ack}")).await;
    let v: Value = serde_json::from_str(&t[2 + ack.to_string().len()..]).unwrap();
    v[0]["node"].as_str().unwrap().to_string()
}

const EIO_CHECKS: &str = "[upstream.app.health_check]\npath = \"/socket.io/?EIO=4&transport=polling\"\ninterval = \"200ms\"\ntimeout = \"1s\"\nfails = 2\npasses = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_a_backup_stay_there_when_a_primary_returns() {
    let mut fleet = NodeFleet::start(2, &[]);
    let (n1, n2) = (fleet.nodes[0].addr, fleet.nodes[1].addr);
    let servers = [
        server_table(n1, "max_fails = 0"),
        server_table(n2, "backup = true"),
    ];
    let limpet = Limpet::start(&config("sid", "", &servers, EIO_CHECKS));
    wait_state(&limpet, n1, "up").await;
    wait_state(&limpet, n2, "up").await;
    let sid = handshake(limpet.addr()).await;
    assert_eq!(whoami(limpet.addr(), &sid, 1).await, "n1");

    fleet.nodes[0].kill();
    wait_state(&limpet, n1, "down").await;
    // New sessions, polling and WebSocket, go to the backup.
    let polling = handshake(limpet.addr()).await;
    assert_eq!(whoami(limpet.addr(), &polling, 1).await, "n2");
    let mut ws = ws_connect(limpet.addr(), "/socket.io/?EIO=4&transport=websocket").await;
    ws_read(&mut ws, "0{").await;
    assert_eq!(ws_whoami(&mut ws, 1).await, "n2");

    let port = n1.port().to_string();
    fleet.nodes[0] = support::node::Node::start("n1", &["--port", &port]);
    wait_state(&limpet, n1, "up").await;
    // New sessions are back on the primary...
    let fresh = handshake(limpet.addr()).await;
    assert_eq!(whoami(limpet.addr(), &fresh, 1).await, "n1");
    // ...while the sessions and the tunnel on the backup stay where they are.
    assert_eq!(whoami(limpet.addr(), &polling, 2).await, "n2");
    assert_eq!(ws_whoami(&mut ws, 2).await, "n2");
    let backup = server_status(&limpet, n2).await;
    assert_eq!(backup["tunnels"], 1, "{backup}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_server_that_goes_down_are_dropped() {
    let mut fleet = NodeFleet::start(2, &[]);
    let addrs = fleet.addrs();
    let servers: Vec<String> = addrs.iter().map(|a| server_table(*a, "")).collect();
    let limpet = Limpet::start(&config("sid", "", &servers, EIO_CHECKS));
    for a in &addrs {
        wait_state(&limpet, *a, "up").await;
    }
    let sid = handshake(limpet.addr()).await;
    let node = whoami(limpet.addr(), &sid, 1).await;
    let i = fleet.nodes.iter().position(|n| n.id == node).unwrap();
    let dead = addrs[i];
    assert_eq!(server_status(&limpet, dead).await["sticky_sessions"], 1);

    fleet.nodes[i].kill();
    wait_state(&limpet, dead, "down").await;
    limpet.wait_log("sessions_dropped=1", WAIT).await;
    let st = server_status(&limpet, dead).await;
    assert_eq!(st["sticky_sessions"], 0, "{st}");
    let r = post(limpet.addr(), &sid, "42[\"echo\",1]").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), r#"{"code":1,"message":"Session ID unknown"}"#);
    // The client's next handshake lands on the live node.
    let again = handshake(limpet.addr()).await;
    assert_eq!(
        whoami(limpet.addr(), &again, 1).await,
        fleet.nodes[1 - i].id
    );
}

/// The node's own count of open Engine.IO sessions and handshakes.
async fn node_stats(addr: SocketAddr) -> (u64, u64) {
    let v: Value = serde_json::from_slice(&get(addr, "/stats").await.body).unwrap();
    (
        v["engine_clients"].as_u64().unwrap(),
        v["handshakes"].as_u64().unwrap(),
    )
}

async fn checks_leave_no_sessions(version: &str, eio: &str) {
    let fleet = NodeFleet::start(1, &["--version", version]);
    let node = fleet.nodes[0].addr;
    let tables = format!("[upstream.app.health_check]\npath = \"/socket.io/?EIO={eio}&transport=polling\"\ninterval = \"200ms\"\ntimeout = \"1s\"\n");
    let limpet = Limpet::start(&config("sid", "", &[server_table(node, "")], &tables));
    wait_state(&limpet, node, "up").await;
    // Sessions the node forgot on its own would linger for its ping timeout (45 s): well past this wait.
    eventually(WAIT, "5 checks done and no session left open", || async {
        let (open, handshakes) = node_stats(node).await;
        (handshakes >= 5 && open == 0).then_some(())
    })
    .await;
    let (open, _) = node_stats(node).await;
    assert!(open <= 1, "{open} sessions open on the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engineio_v4_checks_close_the_sessions_they_open() {
    checks_leave_no_sessions("4", "4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engineio_v3_checks_close_the_sessions_they_open() {
    checks_leave_no_sessions("2", "3").await;
}
