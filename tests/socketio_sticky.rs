//! Socket.IO session stickiness (`balance = "sid"`) against real Socket.IO fleets: three Node nodes on port 0
//! that report their node id, limpet in front, `socket.io-client` (no cookie jar) and raw Engine.IO clients.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::eio::*;
use support::metrics::{lookups, metric};
use support::node::{Node, RUN_TIMEOUT};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_clients_emit_without_errors() {
    let fleet = NodeFleet::start(3, &[]);
    let limpet = Limpet::start(&sid_config(&fleet.addrs(), ""));
    let r = clients(&limpet, "--clients 100 --emits 20 --transports polling").await;
    assert_clean(&r, 100, 20);
    assert_eq!(r["transports"]["polling"], 100, "{r}");
    assert_eq!(node_counts(&r).len(), 3, "every node takes sessions: {r}");
    let m = limpet.metrics().await;
    assert_eq!(metric(&m, "limpet_sticky_learned_total", &[]), 100.0, "{m}");
    assert!(lookups(&m, "hit") >= 4000.0);
    assert_eq!(lookups(&m, "dead"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_transport_clients_all_upgrade_to_websocket() {
    let fleet = NodeFleet::start(3, &[]);
    let limpet = Limpet::start(&sid_config(&fleet.addrs(), ""));
    let r = clients(&limpet, "--clients 30 --emits 5 --wait-upgrade").await;
    assert_clean(&r, 30, 5);
    assert_eq!(
        r["transports"]["websocket"], 30,
        "every client upgraded: {r}"
    );
    // One tunnel per session, each to the session's own node (a misrouted upgrade is refused by the node).
    let m = limpet.metrics().await;
    assert_eq!(
        metric(&m, "limpet_websocket_tunnels_total", &[]),
        30.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio3_v2_nodes_with_their_cookie_and_v2_clients() {
    let fleet = NodeFleet::start(3, &["--version", "2"]);
    // path "/" puts the nodes' plain /request endpoint under sticky routing too, to see the `io` cookie route.
    let limpet = Limpet::start(&sid_config(&fleet.addrs(), "path = \"/\""));

    // A raw EIO=3 handshake: `<len>:0{...}` then more packets, delivered whole, with the node's `io` cookie.
    let before = handshakes(&fleet).await;
    let mut conn = Conn::open(limpet.addr(), [127, 0, 0, 1]).await;
    let open = conn
        .send("GET", "/socket.io/?EIO=3&transport=polling", "", "")
        .await;
    assert_eq!(open.status, 200, "{open:?}");
    let (len, rest) = open.body.split_once(':').expect("EIO=3 length prefix");
    let len: usize = len.parse().expect("numeric length");
    let (packet, more) = rest.split_at(len);
    assert!(packet.starts_with("0{"), "{}", open.body);
    assert_eq!(more, "2:40", "the packets after the open packet arrive too");
    let sid = json(&packet[1..])["sid"].as_str().expect("sid").to_string();
    let cookie = open
        .header("set-cookie")
        .expect("v2 node sets its io cookie");
    assert!(cookie.starts_with(&format!("io={sid}")), "{cookie}");
    let after = handshakes(&fleet).await;
    let owner = (0..3)
        .find(|&i| after[i] == before[i] + 1)
        .expect("one node took it");
    let owner = fleet.nodes[owner].id.clone();

    // The session goes on by its sid (EIO=3 ping/pong), and by its cookie alone.
    let path = format!("/socket.io/?EIO=3&transport=polling&sid={sid}");
    let ping = conn.send("POST", &path, "", "1:2").await;
    assert_eq!((ping.status, ping.body.as_str()), (200, "ok"), "{ping:?}");
    let pong = conn.send("GET", &path, "", "").await;
    assert!(pong.body.contains("1:3"), "{pong:?}");
    for _ in 0..6 {
        let seen = conn
            .send("GET", "/request", &format!("Cookie: io={sid}\r\n"), "")
            .await;
        assert_eq!(
            json(&seen.body)["node"],
            owner.as_str(),
            "routed by the io cookie"
        );
    }

    let r = clients(
        &limpet,
        "--version 2 --clients 30 --emits 10 --transports polling",
    )
    .await;
    assert_clean(&r, 30, 10);
    assert_eq!(r["version"], 2);
    assert_eq!(node_counts(&r).len(), 3, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_one_address_spread_where_ip_hash_piles_them_on_one_node() {
    let fleet = NodeFleet::start(3, &[]);
    let sticky = Limpet::start(&sid_config(&fleet.addrs(), ""));
    let args = "--clients 300 --emits 2 --transports polling";
    let r = clients(&sticky, args).await;
    assert_clean(&r, 300, 2);
    let counts: Vec<u64> = node_counts(&r).into_iter().map(|(_, n)| n).collect();
    assert_eq!(counts.len(), 3, "{r}");
    eprintln!("sid spread over the nodes: {counts:?}");
    let (max, min) = (counts.iter().max().unwrap(), counts.iter().min().unwrap());
    assert!(
        *max as f64 <= 1.5 * *min as f64,
        "spread {counts:?} is over 1.5: {r}"
    );
    drop(sticky);

    let ip_hash = Limpet::start(&simple_config("ip_hash", &fleet.addrs(), "", ""));
    let r = clients(&ip_hash, args).await;
    assert_clean(&r, 300, 2);
    assert_eq!(
        node_counts(&r).len(),
        1,
        "ip_hash puts one address on one node: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_continued_from_another_slash24_stays_on_its_node() {
    let fleet = NodeFleet::start(3, &[]);
    let steps = "127.0.0.2:handshake,127.0.1.3:poll,127.0.1.3:post,127.0.1.3:poll";

    // ip_hash sends the two /24s to different nodes: the session breaks when its client moves.
    let ip_hash = Limpet::start(&simple_config("ip_hash", &fleet.addrs(), "", ""));
    let r = SioClient::session(
        &ip_hash.url(),
        &["--steps", steps, "--timeout", RUN_TIMEOUT],
    );
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(
        r["steps"][1]["status"], 400,
        "the moved poll reaches another node: {r}"
    );
    drop(ip_hash);

    // With sid stickiness (even over an ip_hash fallback) every step reaches the node that took the handshake.
    let sticky = Limpet::start(&sid_config(&fleet.addrs(), "fallback = \"ip_hash\""));
    let r = SioClient::session(&sticky.url(), &["--steps", steps, "--timeout", RUN_TIMEOUT]);
    assert_eq!(r["ok"], true, "{r}");
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 4, "{r}");
    assert!(
        steps
            .iter()
            .all(|s| s["status"] == 200 && s["node"] == steps[0]["node"]),
        "{r}"
    );
    let m = sticky.metrics().await;
    assert!(lookups(&m, "hit") > 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_sessions_get_400_from_limpet_and_clients_reconnect_elsewhere() {
    let mut fleet = NodeFleet::start(3, &[]);
    let limpet = Limpet::start(&sid_config(&fleet.addrs(), ""));
    // Raw sessions until two share a node: that node is the victim.
    let mut raw: Vec<(String, String)> = Vec::new();
    let (victim, a, b) = loop {
        assert!(raw.len() < 4, "4 sessions over 3 nodes must share one");
        raw.push(session(limpet.addr(), [127, 0, 0, 1]).await);
        let last = raw.last().unwrap().clone();
        if let Some(first) = raw[..raw.len() - 1].iter().find(|s| s.1 == last.1) {
            break (last.1.clone(), first.0.clone(), last.0.clone());
        }
    };
    let vi = fleet.nodes.iter().position(|n| n.id == victim).unwrap();
    let raw_on_victim = raw.iter().filter(|s| s.1 == victim).count() as u64;

    let run = SioClient::spawn(
        &limpet.url(),
        "--clients 9 --emits 1 --hold 10000 --reconnect --transports polling",
    );
    let total = raw.len() as u64 + 9;
    // Namespace connects, not just Engine.IO sessions: then every client is past its connect.
    let what = "all clients connected, some on the victim";
    let held = eventually(WAIT, what, || async {
        let n = connections(&fleet).await;
        (n.iter().sum::<u64>() == total && n[vi] > raw_on_victim).then_some(n)
    })
    .await;
    let on_victim = held[vi] - raw_on_victim;
    let connections_before: u64 = live_connections(&fleet, vi).await;
    fleet.nodes[vi].kill();

    // limpet answers for the dead node itself: a poll, then an upgrade (which also closes the connection).
    let mut conn = Conn::open(limpet.addr(), [127, 0, 0, 1]).await;
    let poll = conn.send("GET", &poll_path(&a), "", "").await;
    assert_eq!(poll.status, 400, "{poll:?}");
    assert_eq!(poll.body, SESSION_UNKNOWN);
    assert_eq!(poll.header("content-type"), Some("application/json"));
    let upgrade = format!(
        "{}&transport=websocket&sid={}",
        "/socket.io/?EIO=4",
        percent_encode(&b)
    );
    let (reply, closed) = upgrade_request(limpet.addr(), &upgrade).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    assert!(reply.ends_with(SESSION_UNKNOWN), "{reply}");
    assert!(closed, "limpet closes after refusing the upgrade");
    let m = limpet.metrics().await;
    assert!(lookups(&m, "dead") >= 1.0, "{m}");

    // The raw client opens a new session, on a live node.
    let (_, node) = session(limpet.addr(), [127, 0, 0, 1]).await;
    assert_ne!(node, victim);

    // socket.io-client: the victim's clients reconnect, once each, to live nodes; the others never notice.
    let r = run.await.expect("client.js");
    assert_eq!(r["connected"], 9, "{r}");
    assert_eq!(r["connect_errors"], 0, "{r}");
    assert_eq!(
        r["disconnects"], on_victim,
        "only the victim's clients lost their session: {r}"
    );
    assert_eq!(r["reconnects"], on_victim, "{r}");
    let first_on_victim = r["nodes"][victim.as_str()].as_u64().unwrap_or(0);
    assert_eq!(
        r["node_changes"], first_on_victim,
        "answered by a live node after: {r}"
    );
    assert_eq!(r["timed_out"], false, "{r}");
    assert_eq!(r["unfinished"], 0, "{r}");
    assert!(r["hold_emits_ok"].as_u64().unwrap() > 0, "{r}");
    let connections_after = live_connections(&fleet, vi).await;
    assert_eq!(
        connections_after,
        connections_before + on_victim + 1,
        "the reconnects (and the new raw session) landed on live nodes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keepalive_connection_routes_each_request_by_its_sid() {
    let fleet = NodeFleet::start(3, &[]);
    let limpet = Limpet::start(&sid_config(&fleet.addrs(), "fallback = \"round_robin\""));
    // Two sessions opened on connections of their own (round robin: on two different nodes)...
    let a = open(&mut Conn::open(limpet.addr(), [127, 0, 0, 1]).await).await;
    let b = open(&mut Conn::open(limpet.addr(), [127, 0, 0, 1]).await).await;
    // ...then carried, interleaved request by request, on ONE keep-alive connection.
    let mut conn = Conn::open(limpet.addr(), [127, 0, 0, 1]).await;
    post(&mut conn, &a, "40").await;
    post(&mut conn, &b, "40").await;
    read_packet(&mut conn, &a, "40").await;
    read_packet(&mut conn, &b, "40").await;
    let mut nodes = Vec::new();
    for n in 1..=3 {
        post(&mut conn, &a, &format!("42{n}[\"whoami\"]")).await;
        post(&mut conn, &b, &format!("42{n}[\"whoami\"]")).await;
        let on_a = ack_node(&read_packet(&mut conn, &a, &format!("43{n}")).await, &a);
        let on_b = ack_node(&read_packet(&mut conn, &b, &format!("43{n}")).await, &b);
        nodes.push((on_a, on_b));
    }
    let (na, nb) = nodes[0].clone();
    assert_ne!(na, nb, "the sessions live on different nodes");
    assert!(
        nodes.iter().all(|n| *n == (na.clone(), nb.clone())),
        "{nodes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_sids_with_url_characters_stay_sticky_up_to_128_bytes() {
    // generateId gives `<prefix>.<20 chars>`: a 107-byte prefix makes 128-byte sids with `/`, `+` and `=`.
    let prefix = format!("s/+={}", "x".repeat(103));
    let fleet = NodeFleet::start(3, &["--sid-prefix", &prefix]);
    let limpet = Limpet::start(&sid_config(&fleet.addrs(), "fallback = \"round_robin\""));
    let (sid, _) = session(limpet.addr(), [127, 0, 0, 1]).await;
    assert_eq!(sid.len(), 128, "{sid}");
    assert!(sid.starts_with("s/+="));

    // Round robin places anything unknown elsewhere: only sid lookups keep these sessions whole.
    let r = clients(&limpet, "--clients 20 --emits 5 --transports polling").await;
    assert_clean(&r, 20, 5);
    let r = clients(&limpet, "--clients 10 --emits 3 --wait-upgrade").await;
    assert_clean(&r, 10, 3);
    assert_eq!(r["transports"]["websocket"], 10, "{r}");
    let m = limpet.metrics().await;
    assert_eq!(metric(&m, "limpet_sticky_learned_total", &[]), 31.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sids_longer_than_128_bytes_are_unknown_and_go_where_the_fallback_places_them() {
    let prefix = "y".repeat(108);
    let fleet = NodeFleet::start(3, &["--sid-prefix", &prefix]);
    let limpet = Limpet::start(&sid_config(&fleet.addrs(), "fallback = \"ip_hash\""));
    let mut conn = Conn::open(limpet.addr(), [127, 0, 0, 1]).await;
    let sid = open(&mut conn).await;
    assert_eq!(sid.len(), 129);
    connect_ns(&mut conn, &sid).await;
    let node = whoami(&mut conn, &sid, 1).await;
    for n in 2..=4 {
        assert_eq!(
            whoami(&mut conn, &sid, n).await,
            node,
            "ip_hash keeps one address on one node"
        );
    }
    let m = limpet.metrics().await;
    assert_eq!(
        metric(&m, "limpet_sticky_learned_total", &[]),
        0.0,
        "never learned: {m}"
    );
    assert_eq!(metric(&m, "limpet_sticky_sessions", &[]), 0.0, "{m}");
    assert_eq!(lookups(&m, "hit"), 0.0, "{m}");
    let misses = lookups(&m, "miss");
    assert_eq!(
        misses,
        (conn.requests - 1) as f64,
        "every request after the handshake was a miss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ip_hash_fallback_a_session_survives_a_limpet_restart() {
    let fleet = NodeFleet::start(3, &[]);
    let config = sid_config(&fleet.addrs(), "fallback = \"ip_hash\"");
    let first = Limpet::start(&config);
    let from = [127, 0, 0, 2];
    let (sid, node) = session(first.addr(), from).await;
    drop(first);

    // A new limpet holds no sessions: the sid is unknown and ip_hash sends it to the node that took the handshake.
    let second = Limpet::start(&config);
    let mut conn = Conn::open(second.addr(), from).await;
    for n in 10..13 {
        assert_eq!(whoami(&mut conn, &sid, n).await, node);
    }
    let m = second.metrics().await;
    let misses = lookups(&m, "miss");
    assert_eq!(
        misses, conn.requests as f64,
        "every request was a miss: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_live_sessions_per_server_and_hits() {
    let fleet = NodeFleet::start(3, &[]);
    let limpet = Limpet::start(&sid_config(&fleet.addrs(), ""));
    for _ in 0..6 {
        session(limpet.addr(), [127, 0, 0, 1]).await;
    }
    let admin = limpet.admin.expect("admin listener");
    let text = eventually(
        WAIT,
        "sessions gauges equal the nodes' sessions",
        || async {
            let m = get(admin, "/metrics").await.text();
            let live = engine_clients(&fleet).await;
            let per_server = fleet.nodes.iter().zip(&live).all(|(node, &n)| {
                let server = node.addr.to_string();
                metric(&m, "limpet_sticky_sessions", &[("server", &server)]) == n as f64
            });
            (per_server && live.iter().sum::<u64>() == 6).then_some(m)
        },
    )
    .await;
    assert_eq!(
        metric(&text, "limpet_sticky_sessions", &[("upstream", "app")]),
        6.0
    );
    assert_eq!(metric(&text, "limpet_sticky_learned_total", &[]), 6.0);
    assert!(lookups(&text, "hit") >= 24.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_server_removed_by_reload_are_answered_by_limpet() {
    let fleet = NodeFleet::start(3, &[]);
    let limpet = Limpet::start(&sid_config(&fleet.addrs(), "fallback = \"round_robin\""));
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(session(limpet.addr(), [127, 0, 0, 1]).await);
    }
    let (sid, victim) = sessions[0].clone();
    let vi = fleet.nodes.iter().position(|n| n.id == victim).unwrap();
    let kept: Vec<SocketAddr> = fleet
        .addrs()
        .into_iter()
        .filter(|a| *a != fleet.nodes[vi].addr)
        .collect();
    limpet.write_config(&sid_config(&kept, "fallback = \"round_robin\""));
    limpet.signal("HUP");
    limpet.wait_log("config reloaded", WAIT).await;
    // A relayed request is counted against its server, one limpet answers itself against "none".
    let by_limpet = [("server", "none"), ("status", "4xx")];
    let before = limpet.metrics().await;
    let mut conn = Conn::open(limpet.addr(), [127, 0, 0, 1]).await;
    let poll = conn
        .send("POST", &poll_path(&sid), "", "421[\"whoami\"]")
        .await;
    assert_eq!(
        (poll.status, poll.body.as_str()),
        (400, SESSION_UNKNOWN),
        "{poll:?}"
    );
    assert_eq!(poll.header("content-type"), Some("application/json"));
    let after = limpet.metrics().await;
    let relayed = |m: &str| relayed_requests(m, &fleet);
    assert_eq!(
        relayed(&after),
        relayed(&before),
        "no server saw it: {after}"
    );
    let answered = |m: &str| metric(m, "limpet_http_requests_total", &by_limpet);
    assert_eq!(answered(&after), answered(&before) + 1.0, "{after}");
    let dead = lookups(&after, "dead");
    assert_eq!(dead, 1.0, "{after}");
    // Sessions on the servers that stay are untouched.
    for (sid, node) in sessions.iter().filter(|s| s.1 != victim) {
        assert_eq!(&whoami(&mut conn, sid, 7).await, node);
    }
}

// ---- helpers ----------------------------------------------------------------------------------------------

fn sid_config(servers: &[SocketAddr], sticky: &str) -> String {
    simple_config(
        "sid",
        servers,
        "",
        &format!("[upstream.app.sticky]\n{sticky}\n"),
    )
}

/// Runs client.js against limpet to its end.
async fn clients(limpet: &Limpet, args: &str) -> Value {
    SioClient::run_to_end(&limpet.url(), args).await
}

/// (node, clients first answered there), from client.js JSON.
fn node_counts(r: &Value) -> Vec<(String, u64)> {
    let nodes = r["nodes"].as_object().expect("nodes");
    nodes
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

async fn stats(node: &Node) -> Value {
    json(&get(node.addr, "/stats").await.text())
}

/// Engine.IO sessions each node holds now.
async fn engine_clients(fleet: &NodeFleet) -> Vec<u64> {
    let mut out = Vec::new();
    for node in &fleet.nodes {
        out.push(stats(node).await["engine_clients"].as_u64().unwrap());
    }
    out
}

/// Socket.IO connections each node has taken so far.
async fn connections(fleet: &NodeFleet) -> Vec<u64> {
    let mut out = Vec::new();
    for node in &fleet.nodes {
        out.push(stats(node).await["connections"].as_u64().unwrap());
    }
    out
}

/// Socket.IO connections ever made to the nodes other than `except`.
async fn live_connections(fleet: &NodeFleet, except: usize) -> u64 {
    let mut sum = 0;
    for (_, node) in fleet.nodes.iter().enumerate().filter(|(i, _)| *i != except) {
        sum += stats(node).await["connections"].as_u64().unwrap();
    }
    sum
}

async fn handshakes(fleet: &NodeFleet) -> Vec<u64> {
    let mut out = Vec::new();
    for node in &fleet.nodes {
        out.push(stats(node).await["handshakes"].as_u64().unwrap());
    }
    out
}

/// Requests limpet relayed to the fleet's nodes.
fn relayed_requests(metrics: &str, fleet: &NodeFleet) -> f64 {
    let servers = fleet.nodes.iter().map(|n| n.addr.to_string());
    servers
        .map(|s| metric(metrics, "limpet_http_requests_total", &[("server", &s)]))
        .sum()
}
