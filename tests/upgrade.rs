//! Upgrading the binary while real Socket.IO fleets and clients run (`limpet upgrade`, SIGUSR2), a new config that
//! fails, one upgrade at a time, and tunnels closed over `close_spread` at shutdown.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::backend::{HttpBackend, WsBackend};
use support::client::request;
use support::metrics::metric;
use support::node::{assert_connected_cleanly, NodeFleet, SioClient};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);

/// A copy of the limpet binary in `dir`, replaced by a fresh copy (a new file at the same path) by `rebuild`.
struct Binary {
    path: PathBuf,
}

impl Binary {
    fn copy_into(dir: &Path) -> Binary {
        let b = Binary {
            path: dir.join("limpet"),
        };
        b.rebuild();
        b
    }

    /// Puts a new file at the path, as an install of a new build does (the running process keeps its old one).
    fn rebuild(&self) {
        let tmp = self.path.with_extension("new");
        std::fs::copy(env!("CARGO_BIN_EXE_limpet"), &tmp).expect("copy limpet");
        std::fs::rename(&tmp, &self.path).expect("install limpet");
    }
}

/// Kills a process by pid when dropped (the new process of an upgrade is not the test's child).
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// `limpet upgrade -c <limpet's config>` with `binary`, off the runtime: (exit code, stdout + stderr).
async fn upgrade_command(binary: &Binary, limpet: &Limpet) -> (i32, String) {
    let (bin, config) = (binary.path.clone(), limpet.config_path.clone());
    tokio::task::spawn_blocking(move || {
        run_command(
            &bin,
            &["upgrade".as_ref(), "-c".as_ref(), config.as_os_str()],
        )
    })
    .await
    .expect("limpet upgrade")
}

fn process_field(status: &serde_json::Value, field: &str) -> serde_json::Value {
    status["process"][field].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_drops_no_connection_session_or_ack() {
    let fleet = NodeFleet::start(3, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = Binary::copy_into(dir.path());
    let mut limpet = Limpet::start_binary(&binary.path, &shipped_config(&fleet.addrs(), &[]));
    let old_pid = limpet.pid() as u32;
    // `limpet upgrade` finds the running limpet at the admin address of the config: name the one it has.
    let config = std::fs::read_to_string(&limpet.config_path).expect("config");
    let admin = format!("listen = \"{}\"", limpet.admin.expect("admin"));
    let at = config.find("[admin]").expect("[admin]");
    let (head, tail) = config.split_at(at);
    limpet
        .write_config(&(head.to_string() + &tail.replacen("listen = \"127.0.0.1:0\"", &admin, 1)));
    let url = limpet.url();
    // 200 polling and 200 WebSocket clients, each acking every 200 ms through the upgrade.
    let polling = SioClient::spawn(
        &url,
        "--clients 200 --transports polling --emits 1 --hold 20000",
    );
    let websocket = SioClient::spawn(
        &url,
        "--clients 200 --transports websocket --emits 1 --hold 20000",
    );
    eventually(WAIT, "400 clients connected", || async {
        let m = limpet.metrics().await;
        (metric(&m, "limpet_sticky_sessions", &[]) >= 200.0
            && metric(&m, "limpet_websocket_tunnels_active", &[]) >= 200.0)
            .then_some(())
    })
    .await;

    binary.rebuild();
    let (code, out) = upgrade_command(&binary, &limpet).await;
    assert_eq!(code, 0, "{out}");
    let status = limpet.status().await;
    let new_pid = process_field(&status, "pid").as_u64().expect("pid") as u32;
    let _new = KillOnDrop(Some(new_pid));
    assert_ne!(new_pid, old_pid, "{status}");
    assert_eq!(process_field(&status, "generation"), 2);
    assert_eq!(process_field(&status, "upgraded_from"), old_pid);
    assert!(out.contains(&new_pid.to_string()), "{out}");

    // New clients land on the new process: it learns their sessions.
    let learned = |m: &str| metric(m, "limpet_sticky_learned_total", &[]);
    let before = learned(&limpet.metrics().await);
    let fresh = SioClient::run_to_end(&url, "--clients 10 --emits 2").await;
    assert_connected_cleanly(&fresh, 10);
    assert!(learned(&limpet.metrics().await) >= before + 10.0);

    // Every held client kept its session and its node and got every ack: nothing refused, dropped or lost.
    for (run, what) in [(polling, "polling"), (websocket, "websocket")] {
        let r = run.await.expect("client.js");
        eprintln!("{what} clients through the upgrade: {r}");
        assert_connected_cleanly(&r, 200);
        assert_eq!(r["hold_emit_errors"], 0, "{what}: {r}");
        assert_eq!(r["connect_errors"], 0, "{what}: {r}");
        assert!(
            r["hold_emits_ok"].as_u64().unwrap_or(0) > 200,
            "{what}: {r}"
        );
    }
    let m = limpet.metrics().await;
    assert_eq!(
        metric(&m, "limpet_sticky_lookups_total", &[("result", "dead")]),
        0.0
    );
    // The old process exits once its last tunnel ended.
    assert_eq!(limpet.wait_exit(WAIT).await, Some(0));
    let logs = limpet.logs().join("\n");
    assert!(logs.contains("upgrade: state handed over"), "{logs}");
    assert!(logs.contains("upgrade: the old process exits"), "{logs}");
}

/// An admin call with a JSON body: (status, answer).
async fn admin_call(limpet: &Limpet, method: &str, path: &str, body: &str) -> (u16, String) {
    let r = request(
        limpet.admin.expect("admin"),
        method,
        path,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
    .expect("admin request");
    (r.status.as_u16(), r.text())
}

/// `GET /upstreams/io_nodes/servers`, by address.
async fn listed(limpet: &Limpet) -> BTreeMap<String, serde_json::Value> {
    let (status, text) = admin_call(limpet, "GET", "/upstreams/io_nodes/servers", "").await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    v["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| (s["addr"].as_str().unwrap_or("").to_string(), s.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_over_api_edits_and_servers_draining_out() {
    let mut fleet = NodeFleet::start(3, &[]);
    let addrs = fleet.addrs();
    let (n1, n2, n3) = (
        addrs[0].to_string(),
        addrs[1].to_string(),
        addrs[2].to_string(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = Binary::copy_into(dir.path());
    let limpet = Limpet::start_binary(&binary.path, &shipped_config(&addrs, &[]));
    let url = limpet.url();
    // Polling sessions on every node, acking every 200 ms through the changes and the upgrade.
    let held = SioClient::spawn(
        &url,
        "--clients 30 --transports polling --emits 1 --hold 12000",
    );
    eventually(WAIT, "30 sessions", || async {
        (metric(&limpet.metrics().await, "limpet_sticky_sessions", &[]) >= 30.0).then_some(())
    })
    .await;
    let on_n3 = listed(&limpet).await[&n3]["sticky_sessions"]
        .as_u64()
        .unwrap_or(0);
    assert!(on_n3 > 0, "least_conn spreads new sessions over every node");
    // Edits of the config file's servers (no state file): n1's weight, n2 drained; n3 removed, so it drains out
    // while it holds its sessions.
    let path = |a: &str| format!("/upstreams/io_nodes/servers/{a}");
    for (method, server, body) in [
        ("PATCH", &n1, r#"{"weight": 7}"#),
        ("PATCH", &n2, r#"{"drain": true}"#),
        ("DELETE", &n3, ""),
    ] {
        let (status, text) = admin_call(&limpet, method, &path(server), body).await;
        assert!(status == 200, "{method} {server}: {status} {text}");
    }

    binary.rebuild();
    let (status, text) = admin_call(&limpet, "POST", "/upgrade", "").await;
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let _new = KillOnDrop(answer["new_pid"].as_u64().map(|p| p as u32));

    // The new process has the edits and the departing server, with its sessions.
    let servers = listed(&limpet).await;
    assert_eq!(limpet.status().await["process"]["generation"], 2);
    assert_eq!(servers[&n1]["weight"], 7, "{servers:?}");
    assert_eq!(servers[&n2]["drain"], true, "{servers:?}");
    assert_eq!(servers[&n3]["departing"], true, "{servers:?}");
    assert_eq!(servers[&n3]["sticky_sessions"], on_n3, "{servers:?}");
    // New sessions go to n1 only; every held session kept its node and got every ack.
    let fresh = SioClient::run_to_end(&url, "--clients 6 --emits 1").await;
    assert_connected_cleanly(&fresh, 6);
    assert_eq!(fresh["nodes"], serde_json::json!({"n1": 6}), "{fresh}");
    let r = held.await.expect("client.js");
    assert_connected_cleanly(&r, 30);
    assert_eq!(r["hold_emit_errors"], 0, "{r}");
    let m = limpet.metrics().await;
    assert_eq!(
        metric(&m, "limpet_sticky_lookups_total", &[("result", "dead")]),
        0.0
    );
    // n3 leaves once its node stops answering.
    fleet.nodes[2].kill();
    eventually(WAIT, "n3 gone", || async {
        (!listed(&limpet).await.contains_key(&n3)).then_some(())
    })
    .await;
}

/// A config in front of `backend`, with checks that take `check_timeout` on a silent server.
fn plain_config(backend: std::net::SocketAddr, extra: &str) -> String {
    simple_config("sid", &[backend], "", extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_new_config_leaves_the_old_process_serving() {
    let backend = HttpBackend::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = Binary::copy_into(dir.path());
    let limpet = Limpet::start_binary(&binary.path, &plain_config(backend.addr, ""));
    let old_pid = limpet.pid() as u64;
    limpet.write_config(
        &plain_config(backend.addr, "").replace("balance = \"sid\"", "balance = \"sideways\""),
    );
    let (code, out) = upgrade_command(&binary, &limpet).await;
    // The command reads the config too: it names the problem and asks nothing.
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("upstream.app.balance"), "{out}");

    // Through SIGUSR2 the new process itself refuses the config: the old one says why and serves on.
    limpet.signal("USR2");
    let failed = limpet.wait_log("upgrade failed", WAIT).await;
    assert!(failed.contains("upstream.app.balance"), "{failed}");
    assert_eq!(who(limpet.addr(), "/").await, "a");
    let status = limpet.status().await;
    assert_eq!(process_field(&status, "pid"), old_pid);
    assert_eq!(process_field(&status, "generation"), 1);
    assert_eq!(process_field(&status, "upgrade"), "none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upgrade_at_a_time() {
    let backend = HttpBackend::start("a").await;
    // A first check that takes its whole timeout keeps the new process from being ready for a while.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let checks =
        "[upstream.app.health_check]\npath = \"/health\"\ninterval = \"1s\"\ntimeout = \"2s\"\n";
    let config = servers_config(
        "round_robin",
        "",
        &[(backend.addr, ""), (silent.local_addr().unwrap(), "")],
    ) + checks;
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = Binary::copy_into(dir.path());
    let mut limpet = Limpet::start_binary(&binary.path, &config);
    let admin = limpet.admin.unwrap();
    let first = tokio::spawn(async move { request(admin, "POST", "/upgrade", &[], "").await });
    limpet
        .wait_log("upgrade: starting the new process", WAIT)
        .await;
    let second = request(admin, "POST", "/upgrade", &[], "")
        .await
        .expect("second");
    assert_eq!(second.status, 409, "{}", second.text());
    assert!(
        second.text().contains("already under way"),
        "{}",
        second.text()
    );
    let first = first.await.unwrap().expect("first");
    assert_eq!(first.status, 200, "{}", first.text());
    let answer: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    let _new = KillOnDrop(answer["new_pid"].as_u64().map(|p| p as u32));
    // Nothing held the old process: it exits at once; the new one serves.
    assert_eq!(limpet.wait_exit(WAIT).await, Some(0));
    assert_eq!(who(limpet.addr(), "/").await, "a");
    drop(silent);
}

/// Opens `n` WebSocket tunnels through limpet, then stops it (SIGTERM) and returns when each client saw its
/// tunnel close, in seconds after the signal.
async fn close_times(close_spread: &str, n: usize) -> Vec<f64> {
    let ws = WsBackend::start().await;
    let config = format!(
        "[global]\nshutdown_timeout = \"4s\"\nclose_spread = \"{close_spread}\"\n\n{}",
        simple_config("round_robin", &[ws.addr], "", "")
    );
    let mut limpet = Limpet::start(&config);
    let mut clients = Vec::new();
    for _ in 0..n {
        let url = format!("ws://{}/ws", limpet.addr());
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        clients.push(socket);
    }
    let started = Instant::now();
    limpet.signal("TERM");
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                loop {
                    match tokio::time::timeout(WAIT, socket.next()).await {
                        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                            return started.elapsed().as_secs_f64()
                        }
                        Ok(Some(Ok(_))) => {}
                    }
                }
            })
        })
        .collect();
    let mut times = Vec::new();
    for w in waits {
        times.push(w.await.expect("client"));
    }
    assert_eq!(limpet.wait_exit(WAIT).await, Some(0));
    times.sort_by(f64::total_cmp);
    times
}

/// The most closes within any 100 ms.
fn peak_per_100ms(times: &[f64]) -> usize {
    times
        .iter()
        .map(|&t| times.iter().filter(|&&u| u >= t && u < t + 0.1).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_tunnels_over_close_spread() {
    let paced = close_times("3s", 500).await;
    let burst = close_times("0s", 500).await;
    let (p, b) = (peak_per_100ms(&paced), peak_per_100ms(&burst));
    eprintln!(
        "500 tunnels at SIGTERM, shutdown_timeout 4s: close_spread 3s closed them from {:.2}s to {:.2}s, at most {p} per 100 ms; close_spread 0s from {:.2}s to {:.2}s, at most {b} per 100 ms",
        paced[0],
        paced[paced.len() - 1],
        burst[0],
        burst[burst.len() - 1]
    );
    // Paced: no tunnel is closed before the window (the last close_spread of shutdown_timeout) opens, and the
    // closes spread over it instead of coming at once.
    assert!(paced[0] >= 0.9, "{:.2}", paced[0]);
    let buckets: std::collections::BTreeSet<u64> = paced.iter().map(|t| (t * 2.0) as u64).collect();
    assert!(
        buckets.len() >= 5,
        "closes in half-second buckets {buckets:?}"
    );
    assert!(p * 3 < b, "paced peak {p} per 100 ms, burst peak {b}");
    // Unpaced: every tunnel had all of shutdown_timeout.
    assert!(burst[0] >= 3.9, "{:.2}", burst[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_open_through_an_upgrade_keeps_echoing_on_the_old_process() {
    let ws = WsBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = Binary::copy_into(dir.path());
    let mut limpet = Limpet::start_binary(
        &binary.path,
        &simple_config("round_robin", &[ws.addr], "", ""),
    );
    let url = format!("ws://{}/ws", limpet.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url.clone())
        .await
        .expect("ws");
    limpet.signal("USR2");
    limpet
        .wait_log("upgrade: the new process serves", WAIT)
        .await;
    let status = limpet.status().await;
    let _new = KillOnDrop(process_field(&status, "pid").as_u64().map(|p| p as u32));
    for i in 0..3 {
        socket
            .send(Message::Text(format!("through {i}")))
            .await
            .unwrap();
        let echo = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("echo");
        assert_eq!(
            echo.unwrap().unwrap(),
            Message::Text(format!("through {i}"))
        );
    }
    // A new tunnel goes to the new process; the old one exits when its last tunnel closes.
    let (mut fresh, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws after");
    fresh.send(Message::Text("new".into())).await.unwrap();
    assert!(tokio::time::timeout(WAIT, fresh.next()).await.is_ok());
    socket.close(None).await.unwrap();
    drop(socket);
    assert_eq!(limpet.wait_exit(WAIT).await, Some(0));
    fresh.send(Message::Text("still".into())).await.unwrap();
    let echo = tokio::time::timeout(WAIT, fresh.next())
        .await
        .expect("echo");
    assert_eq!(echo.unwrap().unwrap(), Message::Text("still".into()));
}
