//! Hot reload (SIGHUP, POST /reload) and graceful shutdown (SIGTERM), with real clients across them.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

fn config(listen: &str, http: &[(SocketAddr, u32)], ws: SocketAddr, extra_global: &str) -> String {
    let mut s = format!(
        "[global]\nshutdown_timeout = \"2s\"\nclose_spread = \"0s\"\n{extra_global}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[server]]\nlisten = [\"{listen}\"]\n\n\
         [[server.location]]\npath = \"/ws\"\nproxy_pass = \"ws\"\n\n\
         [[server.location]]\npath = \"/\"\nproxy_pass = \"app\"\n\n\
         [upstream.ws]\n[[upstream.ws.server]]\naddr = \"{ws}\"\n\n\
         [upstream.app]\nbalance = \"round_robin\"\n"
    );
    for (addr, weight) in http {
        s.push_str(&format!(
            "\n[[upstream.app.server]]\naddr = \"{addr}\"\nweight = {weight}\n"
        ));
    }
    s
}

async fn echo(ws: &mut Ws, text: &str) -> bool {
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(5), ws.next()).await,
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text
    )
}

/// Sends requests one after another until stopped; counts successes and failures.
fn steady_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (ok2, failed2) = (ok.clone(), failed.clone());
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            match request(addr, "GET", "/", &[], "").await {
                Ok(r) if r.status == 200 => ok2.fetch_add(1, Ordering::SeqCst),
                _ => failed2.fetch_add(1, Ordering::SeqCst),
            };
        }
    });
    (ok, failed, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_adds_the_new_server() {
    let (b1, b2, b3) = (
        HttpBackend::start("b1").await,
        HttpBackend::start("b2").await,
        HttpBackend::start("b3").await,
    );
    let ws_backend = WsBackend::start().await;
    let limpet = Limpet::start(&config(
        "127.0.0.1:0",
        &[(b1.addr, 1), (b2.addr, 1)],
        ws_backend.addr,
        "",
    ));
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(ws_connect(limpet.addr(), "/ws").await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, load) = steady_load(limpet.addr(), stop.clone());
    eventually(WAIT, "load running", || {
        let n = ok.load(Ordering::SeqCst);
        async move { (n > 20).then_some(()) }
    })
    .await;

    limpet.write_config(&config(
        "127.0.0.1:0",
        &[(b1.addr, 1), (b2.addr, 3), (b3.addr, 2)],
        ws_backend.addr,
        "",
    ));
    limpet.signal("HUP");
    limpet.wait_log("config reloaded", WAIT).await;
    eventually(WAIT, "the added server receives requests", || {
        let hits = b3.hits();
        async move { (hits >= 10).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();

    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed across the reload"
    );
    for (i, ws) in clients.iter_mut().enumerate() {
        assert!(
            echo(ws, &format!("still here {i}")).await,
            "WebSocket client {i} lost across the reload"
        );
    }
    assert!(limpet
        .logs()
        .iter()
        .all(|l| !l.contains("listening") || !l.contains("EADDRINUSE")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_reload_changes_nothing() {
    let b1 = HttpBackend::start("b1").await;
    let ws_backend = WsBackend::start().await;
    let good = config("127.0.0.1:0", &[(b1.addr, 1)], ws_backend.addr, "");
    let limpet = Limpet::start(&good);
    let mut ws = ws_connect(limpet.addr(), "/ws").await;

    limpet.write_config(&good.replace("[upstream.app]", "[upstream.app]\nbogus_key = 1"));
    limpet.signal("HUP");
    let line = limpet.wait_log("reload failed", WAIT).await;
    assert!(
        line.contains("bogus_key"),
        "the error names the key: {line}"
    );

    assert_eq!(get(limpet.addr(), "/").await.text(), "b1");
    assert!(echo(&mut ws, "after a bad reload").await);
    let metrics = get(limpet.admin.unwrap(), "/metrics").await.text();
    assert!(
        metrics.contains("limpet_config_reloads_total{result=\"error\"} 1"),
        "reload error counted:\n{metrics}"
    );

    // The admin API reports the same errors and keeps the config too.
    let resp = request(limpet.admin.unwrap(), "POST", "/reload", &[], "")
        .await
        .unwrap();
    assert_eq!(resp.status, 422);
    assert!(resp.text().contains("bogus_key"));
    assert_eq!(get(limpet.addr(), "/").await.text(), "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_applies_a_new_upstream_list() {
    let (b1, b2) = (
        HttpBackend::start("b1").await,
        HttpBackend::start("b2").await,
    );
    let ws_backend = WsBackend::start().await;
    let limpet = Limpet::start(&config("127.0.0.1:0", &[(b1.addr, 1)], ws_backend.addr, ""));
    assert_eq!(get(limpet.addr(), "/").await.text(), "b1");
    limpet.write_config(&config("127.0.0.1:0", &[(b2.addr, 1)], ws_backend.addr, ""));
    let resp = request(limpet.admin.unwrap(), "POST", "/reload", &[], "")
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    for _ in 0..5 {
        assert_eq!(get(limpet.addr(), "/").await.text(), "b2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_a_listener_and_keeps_open_connections() {
    let b1 = HttpBackend::start("b1").await;
    let ws_backend = WsBackend::start().await;
    let limpet = Limpet::start(&config("127.0.0.1:0", &[(b1.addr, 1)], ws_backend.addr, ""));
    let old = limpet.addr();
    let mut ws = ws_connect(old, "/ws").await;

    limpet.write_config(&config("127.0.0.2:0", &[(b1.addr, 1)], ws_backend.addr, ""));
    limpet.signal("HUP");
    let line = limpet.wait_log("listen=127.0.0.2:0", WAIT).await;
    let new: SocketAddr = line
        .split("local=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("new listener address in the log");
    limpet.wait_log("listener removed", WAIT).await;

    assert_eq!(get(new, "/").await.text(), "b1");
    eventually(WAIT, "the old address refuses", || async move {
        tokio::net::TcpStream::connect(old)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(echo(&mut ws, "open tunnel survives its listener").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let b1 = HttpBackend::start("b1").await;
    let ws_backend = WsBackend::start().await;
    let mut limpet = Limpet::start(&config("127.0.0.1:0", &[(b1.addr, 1)], ws_backend.addr, ""));
    let addr = limpet.addr();
    let slow = tokio::spawn(async move { request(addr, "GET", "/slow/700", &[], "").await });
    eventually(WAIT, "the slow request reached the backend", || {
        let hits = b1.hits();
        async move { (hits >= 1).then_some(()) }
    })
    .await;
    limpet.signal("TERM");
    let resp = slow.await.unwrap().expect("in-flight request completes");
    assert_eq!(resp.status, 200);
    assert_eq!(limpet.wait_exit(WAIT).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_tunnels_exits_after_shutdown_timeout() {
    let b1 = HttpBackend::start("b1").await;
    let ws_backend = WsBackend::start().await;
    let mut limpet = Limpet::start(&config("127.0.0.1:0", &[(b1.addr, 1)], ws_backend.addr, ""));
    let mut ws = ws_connect(limpet.addr(), "/ws").await;
    let admin = limpet.admin.unwrap();
    limpet.signal("TERM");
    limpet.wait_log("shutting down", WAIT).await;
    // Draining: the health endpoint says so, new connections are refused, the open tunnel still works.
    assert_eq!(get(admin, "/healthz").await.status, 503);
    eventually(WAIT, "listener closed", || {
        let addr = limpet.addr();
        async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
    assert!(echo(&mut ws, "during shutdown").await);
    assert_eq!(limpet.wait_exit(WAIT).await, Some(0));
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("client sees the close");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "tunnel closed, got {end:?}"
    );
}

/// Sum of `limpet_websocket_tunnels_active` over servers.
fn tunnels_active(metrics: &str) -> i64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("limpet_websocket_tunnels_active{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum()
}

fn sio_config(nodes: &[SocketAddr]) -> String {
    let mut s = String::from(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n\n[[server.location]]\npath = \"/\"\nproxy_pass = \"io\"\n\n\
         [upstream.io]\nbalance = \"sid\"\n[upstream.io.sticky]\nfallback = \"round_robin\"\n",
    );
    for a in nodes {
        s.push_str(&format!("\n[[upstream.io.server]]\naddr = \"{a}\"\n"));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_clients_stay_connected_across_a_reload_that_adds_a_node() {
    let fleet = NodeFleet::start(3, &[]);
    let nodes = fleet.addrs();
    let limpet = Limpet::start(&sio_config(&nodes[..2]));
    let url = limpet.url();
    let url2 = url.clone();
    // 100 WebSocket clients hold their sessions (emitting every 200 ms) while the config changes.
    let held = tokio::task::spawn_blocking(move || {
        SioClient::run(
            &url2,
            &[
                "--clients",
                "100",
                "--transports",
                "websocket",
                "--hold",
                "6000",
                "--timeout",
                "60000",
            ],
        )
    });
    let polling = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            SioClient::run(
                &url,
                &[
                    "--clients",
                    "20",
                    "--transports",
                    "polling",
                    "--hold",
                    "6000",
                    "--timeout",
                    "60000",
                ],
            )
        }
    });
    let admin = limpet.admin.unwrap();
    eventually(
        Duration::from_secs(30),
        "100 tunnels open before the reload",
        || async move {
            let metrics = get(admin, "/metrics").await.text();
            (tunnels_active(&metrics) >= 100).then_some(())
        },
    )
    .await;
    limpet.write_config(&sio_config(&nodes));
    limpet.signal("HUP");
    limpet.wait_log("config reloaded", WAIT).await;

    let held = held.await.unwrap();
    assert_eq!(held["connected"], 100, "{held}");
    assert_eq!(held["disconnects"], 0, "{held}");
    assert_eq!(held["emit_errors"], 0, "{held}");
    assert_eq!(held["node_changes"], 0, "{held}");
    let polling = polling.await.unwrap();
    assert_eq!(polling["disconnects"], 0, "{polling}");
    assert_eq!(polling["emit_errors"], 0, "{polling}");

    let after = SioClient::run(
        &url,
        &[
            "--clients",
            "30",
            "--transports",
            "polling",
            "--timeout",
            "60000",
        ],
    );
    assert_eq!(after["connect_errors"], 0, "{after}");
    assert!(
        after["nodes"]["n3"].as_u64().unwrap_or(0) > 0,
        "new sessions reach the added node: {after}"
    );
}
