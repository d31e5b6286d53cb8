//! Draining through the admin API and the config: a draining server keeps its WebSocket tunnels and sticky
//! sessions and gets no new ones. Also: the admin API answers only where `[admin] listen` says.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::polling::{handshake, poll, post, whoami, ws_read};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

fn config(balance: &str, upstream_keys: &str, servers: &[String]) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n\n[[server.location]]\npath = \"/\"\nproxy_pass = \"app\"\n\n[upstream.app]\nbalance = \"{balance}\"\n{upstream_keys}\n{}",
        servers.concat()
    )
}

/// `POST /servers/app/{addr}/{action}` on the admin listener.
async fn admin_post(l: &Limpet, addr: SocketAddr, action: &str) -> Resp {
    let path = format!("/servers/app/{addr}/{action}");
    request(l.admin.unwrap(), "POST", &path, &[], "")
        .await
        .unwrap()
}

async fn server_status(l: &Limpet, addr: SocketAddr) -> Value {
    let st: Value = serde_json::from_slice(&get(l.admin.unwrap(), "/status").await.body).unwrap();
    server_entry(&st, addr)
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
    let got = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("echo timed out")
        .expect("websocket closed")
        .unwrap();
    assert_eq!(got, Message::Text(text.into()));
}

async fn wait_accepted(b: &WsBackend, n: usize) {
    eventually(WAIT, &format!("{n} websockets on {}", b.addr), || async {
        (b.accepted.load(SeqCst) == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_keeps_its_websockets_and_gets_no_new_ones() {
    let w1 = WsBackend::start().await;
    let w2 = WsBackend::start().await;
    let servers = [server_table(w1.addr, ""), server_table(w2.addr, "")];
    let limpet = Limpet::start(&config("round_robin", "", &servers));

    // Put the first client on w1: w2 is drained meanwhile.
    assert_eq!(admin_post(&limpet, w2.addr, "drain").await.status, 200);
    let mut first = ws_connect(limpet.addr(), "/ws").await;
    wait_accepted(&w1, 1).await;
    assert_eq!(admin_post(&limpet, w2.addr, "undrain").await.status, 200);

    let r = admin_post(&limpet, w1.addr, "drain").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let st = server_status(&limpet, w1.addr).await;
    assert_eq!(st["state"], "draining", "{st}");
    assert_eq!(st["tunnels"], 1, "{st}");

    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(ws_connect(limpet.addr(), "/ws").await);
    }
    wait_accepted(&w2, 4).await;
    assert_eq!(
        w1.accepted.load(SeqCst),
        1,
        "a draining server got a new tunnel"
    );
    // The drained server's client still talks to it, and so do the others to theirs.
    echo(&mut first, "still here").await;
    for ws in &mut others {
        echo(ws, "hi").await;
    }
    let st = server_status(&limpet, w1.addr).await;
    assert_eq!(
        (st["state"].as_str(), st["tunnels"].as_u64()),
        (Some("draining"), Some(1))
    );
    assert_eq!(server_status(&limpet, w2.addr).await["tunnels"], 4);

    // Undrained, it takes new tunnels again.
    assert_eq!(admin_post(&limpet, w1.addr, "undrain").await.status, 200);
    assert_eq!(server_status(&limpet, w1.addr).await["state"], "up");
    for _ in 0..2 {
        others.push(ws_connect(limpet.addr(), "/ws").await);
    }
    wait_accepted(&w1, 2).await;
    echo(&mut first, "and still").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_keeps_its_sessions_and_takes_no_new_ones() {
    let fleet = NodeFleet::start(2, &[]);
    let addrs = fleet.addrs();
    let servers: Vec<String> = addrs.iter().map(|a| server_table(*a, "")).collect();
    let sticky = "[upstream.app.sticky]\nfallback = \"round_robin\"\n";
    let limpet = Limpet::start(&config("sid", sticky, &servers));

    // One session on each node.
    let mut on = std::collections::HashMap::new();
    for _ in 0..2 {
        let sid = handshake(limpet.addr()).await;
        on.insert(whoami(limpet.addr(), &sid, 1).await, sid);
    }
    let kept = on["n1"].clone();
    let n1 = fleet.nodes[0].addr;
    assert_eq!(admin_post(&limpet, n1, "drain").await.status, 200);
    let st = server_status(&limpet, n1).await;
    assert_eq!(
        (st["state"].as_str(), st["sticky_sessions"].as_u64()),
        (Some("draining"), Some(1)),
        "{st}"
    );

    // New sessions go to n2 only.
    let mut nodes = HashSet::new();
    for _ in 0..4 {
        let sid = handshake(limpet.addr()).await;
        nodes.insert(whoami(limpet.addr(), &sid, 1).await);
    }
    assert_eq!(nodes, HashSet::from(["n2".to_string()]));

    // The session on n1 goes on: polling, then its upgrade to WebSocket.
    assert_eq!(
        post(limpet.addr(), &kept, "422[\"whoami\"]").await.status,
        200
    );
    assert!(poll(limpet.addr(), &kept).await.contains("\"node\":\"n1\""));
    let path = format!("/socket.io/?EIO=4&transport=websocket&sid={kept}");
    let mut ws = ws_connect(limpet.addr(), &path).await;
    ws.send(Message::Text("2probe".into())).await.unwrap();
    ws_read(&mut ws, "3probe").await;
    ws.send(Message::Text("5".into())).await.unwrap();
    ws.send(Message::Text("423[\"whoami\"]".into()))
        .await
        .unwrap();
    let answer = ws_read(&mut ws, "433").await;
    assert!(answer.contains("\"node\":\"n1\""), "{answer}");
    assert_eq!(server_status(&limpet, n1).await["tunnels"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_in_the_config_and_through_the_api() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let servers = [
        server_table(a.addr, ""),
        server_table(b.addr, "drain = true"),
    ];
    let limpet = Limpet::start(&config("round_robin", "", &servers));
    let st: Value =
        serde_json::from_slice(&get(limpet.admin.unwrap(), "/status").await.body).unwrap();
    assert_eq!(st["upstreams"]["app"]["balance"], "round_robin", "{st}");
    assert_eq!(server_status(&limpet, b.addr).await["state"], "draining");
    for _ in 0..6 {
        assert_eq!(get(limpet.addr(), "/x").await.text(), "a");
    }
    assert_eq!(b.hits(), 0);

    assert_eq!(admin_post(&limpet, b.addr, "undrain").await.status, 200);
    assert_eq!(server_status(&limpet, b.addr).await["state"], "up");
    let mut seen = HashSet::new();
    for _ in 0..4 {
        seen.insert(get(limpet.addr(), "/x").await.text());
    }
    assert_eq!(seen, HashSet::from(["a".to_string(), "b".to_string()]));

    assert_eq!(admin_post(&limpet, a.addr, "drain").await.status, 200);
    let hits = a.hits();
    for _ in 0..6 {
        assert_eq!(get(limpet.addr(), "/x").await.text(), "b");
    }
    assert_eq!(a.hits(), hits);

    // Unknown servers, upstreams and actions are 404s that change nothing.
    let unknown: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert_eq!(admin_post(&limpet, unknown, "drain").await.status, 404);
    let r = request(
        limpet.admin.unwrap(),
        "POST",
        &format!("/servers/nope/{}/drain", b.addr),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(admin_post(&limpet, b.addr, "pause").await.status, 404);
    assert_eq!(server_status(&limpet, b.addr).await["state"], "up");
}

/// The local addresses of the TCP sockets process `pid` listens on (from /proc).
fn listening(pid: i32) -> Vec<SocketAddr> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f[3] == "0A" && inodes.contains(f[9])).then(|| {
                let (ip, port) = f[1].split_once(':').unwrap();
                let ip = u32::from_str_radix(ip, 16).unwrap().to_le_bytes();
                SocketAddr::from((ip, u16::from_str_radix(port, 16).unwrap()))
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_listens_only_where_admin_listen_says() {
    let backend = HttpBackend::start("backend").await;
    let with_admin = Limpet::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let mut socks = listening(with_admin.pid());
    socks.sort();
    let mut want = vec![with_admin.addr(), with_admin.admin.unwrap()];
    want.sort();
    assert_eq!(socks, want);
    // The proxy listener does not answer admin paths: they are proxied like any other.
    assert_eq!(get(with_admin.addr(), "/status").await.text(), "backend");
    assert_eq!(backend.last().unwrap().uri, "/status");
    let admin = with_admin.admin.unwrap();
    assert!(admin.ip().is_loopback());
    assert_eq!(get(admin, "/healthz").await.status, 200);

    let no_admin = simple_config("round_robin", &[backend.addr], "", "")
        .replace("[admin]\nlisten = \"127.0.0.1:0\"\n", "");
    let without = Limpet::start(&no_admin);
    assert_eq!(listening(without.pid()), vec![without.addr()]);
}
