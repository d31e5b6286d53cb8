//! limpet the way fleets run it: the shipped config with its health checks and default timeouts, clients that
//! arrive the moment limpet says it is ready, slow clients, long idle keep-alive, servers that time out once.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::eio::{self, json, Conn};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

/// The state `/status` gives each server of upstream `name`, in config order.
async fn states(limpet: &Limpet, name: &str) -> Vec<String> {
    let states = limpet.server_fields(name, "state").await;
    states
        .iter()
        .map(|s| s.as_str().unwrap_or("?").to_string())
        .collect()
}

/// Log lines that contain every one of `needles`.
fn log_lines(limpet: &Limpet, needles: &[&str]) -> Vec<String> {
    limpet
        .logs()
        .into_iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_clients_at_readiness_spreads_over_every_node() {
    let fleet = NodeFleet::start(3, &[]);
    let limpet = Limpet::start(&shipped_config(&fleet.addrs(), &[]));
    // The moment limpet accepts, it has checked every node and says so.
    let healthz = get(limpet.admin.expect("admin"), "/healthz").await;
    assert_eq!(healthz.status, 200, "{}", healthz.text());
    assert_eq!(states(&limpet, "io_nodes").await, ["up", "up", "up"]);

    let r = SioClient::run_to_end(
        &limpet.url(),
        "--clients 300 --transports polling --emits 1 --hold 1500",
    )
    .await;
    assert_connected_cleanly(&r, 300);
    let per_node: Vec<u64> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| r["nodes"][n].as_u64().unwrap_or(0))
        .collect();
    println!("300 sessions at readiness, per node: {per_node:?}");
    let (max, min) = (
        per_node.iter().max().unwrap(),
        per_node.iter().min().unwrap(),
    );
    assert!(
        *min > 0 && *max * 2 <= *min * 3,
        "300 new sessions at readiness: max/min must be within 1.5, got {per_node:?}"
    );
}

/// Open WebSocket tunnels per server in `/status`, in config order.
async fn tunnels_per_server(limpet: &Limpet) -> Vec<u64> {
    let tunnels = limpet.server_fields("io_nodes", "tunnels").await;
    tunnels.iter().map(|t| t.as_u64().unwrap_or(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_under_load_the_reconnecting_fleet_spreads_over_every_node() {
    let fleet = NodeFleet::start(3, &[]);
    let first = Limpet::start(&shipped_config(&fleet.addrs(), &[]));
    let port = first.addr().port();
    // WebSocket clients: a restart ends every one of their connections, so all of them come back.
    let load = SioClient::spawn(
        &first.url(),
        "--clients 150 --transports websocket --emits 1 --hold 12000 --reconnect",
    );
    eventually(WAIT, "150 tunnels through the first limpet", || async {
        (tunnels_per_server(&first).await.iter().sum::<u64>() >= 150).then_some(())
    })
    .await;
    // A crash and a restart on the same port: every client reconnects, into the new one's backlog.
    drop(first);
    let config = shipped_config(
        &fleet.addrs(),
        &[(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:{port}\"]"),
        )],
    );
    let second = Limpet::start(&config);
    let per_node = eventually(WAIT, "150 tunnels back", || async {
        let n = tunnels_per_server(&second).await;
        (n.iter().sum::<u64>() >= 150).then_some(n)
    })
    .await;
    println!("tunnels per node after the restart: {per_node:?}");
    let (max, min) = (
        per_node.iter().max().unwrap(),
        per_node.iter().min().unwrap(),
    );
    assert!(
        *min > 0 && *max * 2 <= *min * 3,
        "the reconnect burst after a restart: max/min must be within 1.5, got {per_node:?}"
    );
    // Every client is served again through the new limpet (150 tunnels there), to the end of its run.
    let r = load.await.expect("client.js");
    assert_eq!(r["connected"], 150, "{r}");
    assert_eq!(r["unfinished"], 0, "{r}");
    assert_eq!(r["timed_out"], false, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_silent_server_only_its_check_timeout_and_counts_it_down() {
    let live = HttpBackend::start("live").await;
    let silent = RawBackend::start(RawReply::Silent).await;
    let config = servers_config(
        "round_robin",
        "",
        &[(live.addr, ""), (silent.addr, "")],
    ) + "\n[upstream.app.health_check]\npath = \"/\"\ninterval = \"2s\"\ntimeout = \"1s\"\nfails = 2\npasses = 2\n";
    let limpet = Limpet::start(&config);
    assert_eq!(
        get(limpet.admin.expect("admin"), "/healthz").await.status,
        200
    );
    // Not "checking" at readiness: the server silent past the check timeout is down, and takes nothing.
    assert_eq!(states(&limpet, "app").await, ["up", "down"]);
    for _ in 0..10 {
        assert_eq!(who(limpet.addr(), "/").await, "live");
    }
    assert!(limpet.logs().iter().any(|l| l.contains("ready")));
}

// ---- idle keep-alive connections ------------------------------------------------------------------------

/// A limpet in front of one backend with these `[[server]]` timeout keys.
async fn with_timeouts(keys: &str) -> (Limpet, HttpBackend) {
    let backend = HttpBackend::start("b").await;
    let config = format!(
        "[[server]]\nlisten = [\"127.0.0.1:0\"]\n{keys}\n\n[[server.location]]\npath = \"/\"\nproxy_pass = \"app\"\n\n[upstream.app]\n[[upstream.app.server]]\naddr = \"{}\"\n",
        backend.addr
    );
    (Limpet::start(&config), backend)
}

/// One request on a new connection, then idle: how long until limpet closes it (bounded by `bound`).
async fn idle_close_after(addr: SocketAddr, bound: Duration) -> Duration {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let resp = read_response(&mut s, WAIT).await.expect("response");
    assert_eq!(status_of(&resp), 200, "{resp}");
    let idle_from = Instant::now();
    let (rest, closed) = read_until_close(&mut s, bound).await;
    assert!(closed, "still open after {bound:?} idle");
    assert!(
        rest.is_empty(),
        "limpet said something on an idle close: {rest:?}"
    );
    idle_from.elapsed()
}

/// The connection closes at `keepalive` (± 1 s; later by at most 2 s on a loaded machine).
async fn assert_idle_close(keys: &str, keepalive: Duration) {
    let (limpet, _backend) = with_timeouts(keys).await;
    let took = idle_close_after(limpet.addr(), keepalive + Duration::from_secs(5)).await;
    println!("{keys:?}: idle keep-alive connection closed after {took:?}");
    assert!(
        took + Duration::from_secs(1) >= keepalive && took <= keepalive + Duration::from_secs(2),
        "{keys:?}: idle connection closed after {took:?}, expected about {keepalive:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_closes_at_the_default_75s() {
    // The defaults: keepalive_timeout 75 s, longer than client_header_timeout 10 s.
    assert_idle_close("", Duration::from_secs(75)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_longer_than_the_header_timeout_closes_at_keepalive() {
    assert_idle_close(
        "client_header_timeout = \"2s\"\nkeepalive_timeout = \"6s\"",
        Duration::from_secs(6),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_shorter_than_the_header_timeout_closes_at_keepalive() {
    assert_idle_close(
        "client_header_timeout = \"6s\"\nkeepalive_timeout = \"2s\"",
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_head_started_on_a_kept_alive_connection_has_the_header_timeout() {
    for (keys, header) in [
        (
            "client_header_timeout = \"2s\"\nkeepalive_timeout = \"30s\"",
            2,
        ),
        (
            "client_header_timeout = \"3s\"\nkeepalive_timeout = \"1s\"",
            3,
        ),
    ] {
        let (limpet, backend) = with_timeouts(keys).await;
        let mut s = TcpStream::connect(limpet.addr()).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let resp = read_response(&mut s, WAIT).await.expect("first response");
        assert_eq!(status_of(&resp), 200, "{resp}");
        s.write_all(b"GET /second HTTP/1.1\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        let (_, closed) = read_until_close(&mut s, Duration::from_secs(header + 5)).await;
        let took = started.elapsed();
        assert!(closed, "{keys:?}: an unfinished head kept the connection");
        assert!(
            took + Duration::from_secs(1) >= Duration::from_secs(header)
                && took <= Duration::from_secs(header + 2),
            "{keys:?}: closed after {took:?}, expected about {header} s"
        );
        assert_eq!(backend.hits(), 1, "the unfinished head reached the backend");
    }
}

// ---- slow clients ---------------------------------------------------------------------------------------

/// A POST of `body` to `/echo`, one byte every `gap`: the raw response (None when limpet closed first).
async fn trickle_post(addr: SocketAddr, body: &[u8], gap: Duration) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    for b in body {
        tokio::time::sleep(gap).await;
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
    }
    read_response(&mut s, WAIT).await
}

fn slow_client_config(backend: SocketAddr, header: &str, read: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\nclient_header_timeout = \"{header}\"\n\n[[server.location]]\npath = \"/\"\nproxy_pass = \"app\"\nread_timeout = \"{read}\"\n\n[upstream.app]\n[[upstream.app.server]]\naddr = \"{backend}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_read_timeout_is_not_the_servers_failure() {
    // read_timeout 2 s < the 5 s the body takes, each gap within client_header_timeout 3 s.
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&slow_client_config(backend.addr, "3s", "2s"));
    let resp = trickle_post(limpet.addr(), b"hello", Duration::from_secs(1))
        .await
        .expect("an answer");
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.ends_with("hello"), "{resp}");
    assert_eq!(states(&limpet, "app").await, ["up"]);
    assert!(log_lines(&limpet, &["server is down"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_between_body_bytes_gets_408_and_the_server_stays_up() {
    // The numbers: read_timeout 5 s, client_header_timeout 2 s, a 3 s gap in the body.
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&slow_client_config(backend.addr, "2s", "5s"));
    let resp = trickle_post(limpet.addr(), b"abc", Duration::from_secs(3))
        .await
        .expect("an answer");
    assert_eq!(status_of(&resp), 408, "{resp}");
    assert_eq!(states(&limpet, "app").await, ["up"]);
    assert!(log_lines(&limpet, &["server is down"]).is_empty());
    // max_fails = 1: had the client's slowness counted, the only server would be down and this a 502.
    assert_eq!(who(limpet.addr(), "/").await, "b");
}

// ---- a server that times out once -----------------------------------------------------------------------

/// The shipped config with `ip_hash` placing new sessions (so a client's plain requests reach its session's
/// node) and a 1 s `read_timeout` for everything outside /socket.io/.
fn ip_hash_config(fleet: &NodeFleet, edits: &[(&str, &str)]) -> String {
    let mut all = vec![
        ("fallback = \"least_conn\"", "fallback = \"ip_hash\""),
        (
            "path = \"/\"\nproxy_pass = \"io_nodes\"",
            "path = \"/\"\nproxy_pass = \"io_nodes\"\nread_timeout = \"1s\"",
        ),
    ];
    all.extend_from_slice(edits);
    shipped_config(&fleet.addrs(), &all)
}

/// A plain GET from `from`: its status and body.
async fn get_from(limpet: &Limpet, from: [u8; 4], path: &str) -> (u16, String) {
    let r = eio::Exchange::send(
        &mut Conn::open(limpet.addr(), from).await,
        "GET",
        path,
        "",
        "",
    )
    .await;
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_keeps_the_sessions_of_its_server_with_active_checks() {
    let fleet = NodeFleet::start(3, &[]);
    let limpet = Limpet::start(&ip_hash_config(&fleet, &[]));
    let from = [127, 0, 0, 5];
    let mut conn = Conn::open(limpet.addr(), from).await;
    let sid = eio::open(&mut conn).await;
    eio::connect_ns(&mut conn, &sid).await;
    let node = eio::whoami(&mut conn, &sid, 1).await;

    // Its node, reached by ip_hash, takes longer than read_timeout once: 504, and a passive mark.
    let (code, _) = get_from(&limpet, from, "/slow?ms=3000").await;
    assert_eq!(code, 504);
    let marked = limpet.wait_log("by=\"passive check\"", WAIT).await;
    assert!(marked.contains("server is down"), "{marked}");

    // The session goes on where it is, though its node takes no new sessions while marked.
    for n in 2..=6 {
        assert_eq!(eio::whoami(&mut conn, &sid, n).await, node, "whoami {n}");
    }
    assert_eq!(
        log_lines(&limpet, &["server is down", "passive check"]).len(),
        1,
        "one mark, logged once"
    );
    // The next active pass lifts the mark, and says so once.
    limpet.wait_log("passive mark cleared", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_keeps_sessions_and_turns_new_ones_away_for_fail_timeout() {
    let fleet = NodeFleet::start(3, &[]);
    // No active checks: the mark lasts fail_timeout.
    let config = ip_hash_config(&fleet, &[])
        .split("[upstream.io_nodes.health_check]")
        .next()
        .expect("config")
        .to_string()
        + &fleet
            .addrs()
            .iter()
            .map(|a| {
                format!("\n[[upstream.io_nodes.server]]\naddr = \"{a}\"\nfail_timeout = \"4s\"\n")
            })
            .collect::<String>();
    let limpet = Limpet::start(&config);
    let from = [127, 0, 0, 6];
    let mut conn = Conn::open(limpet.addr(), from).await;
    let sid = eio::open(&mut conn).await;
    eio::connect_ns(&mut conn, &sid).await;
    let node = eio::whoami(&mut conn, &sid, 1).await;

    let (code, _) = get_from(&limpet, from, "/slow?ms=3000").await;
    assert_eq!(code, 504);
    // New sessions and requests from the same address now go elsewhere ...
    let (code, body) = get_from(&limpet, from, "/whoami").await;
    assert_eq!(code, 200);
    assert_ne!(
        json(&body)["node"],
        node,
        "a marked server took a new request"
    );
    // ... while the session stays on its node.
    for n in 2..=4 {
        assert_eq!(eio::whoami(&mut conn, &sid, n).await, node, "whoami {n}");
    }
    // The mark runs out on its own after fail_timeout, logged once, and the node takes new requests again.
    limpet.wait_log("fail_timeout passed", WAIT).await;
    let (_, body) = get_from(&limpet, from, "/whoami").await;
    assert_eq!(json(&body)["node"], node);
    assert_eq!(eio::whoami(&mut conn, &sid, 5).await, node);
}

// ---- operators' view of an outage -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_is_logged_once_and_per_request_warnings_are_rate_limited() {
    let live = HttpBackend::start("live").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    // max_fails = 0 on the dead one: every second request tries it, fails to connect and is retried.
    let config = servers_config(
        "round_robin",
        "",
        &[(dead, "max_fails = 0"), (live.addr, "")],
    );
    let limpet = Limpet::start(&config);
    let started = Instant::now();
    for _ in 0..40 {
        assert_eq!(who(limpet.addr(), "/").await, "live");
    }
    let seconds = started.elapsed().as_secs();
    let warned = log_lines(&limpet, &["connect failed"]);
    assert!(!warned.is_empty());
    assert!(
        warned.len() as u64 <= seconds + 1,
        "{} connect warnings in {seconds} s: {warned:?}",
        warned.len()
    );

    // With max_fails = 1 the same fault marks the server down: one line says who, why and for how long.
    let config = servers_config("round_robin", "", &[(dead, ""), (live.addr, "")]);
    let limpet = Limpet::start(&config);
    for _ in 0..20 {
        assert_eq!(who(limpet.addr(), "/").await, "live");
    }
    let marks = log_lines(&limpet, &["server is down"]);
    assert_eq!(marks.len(), 1, "{marks:?}");
    for part in [&dead.to_string(), "passive check", "connect", "10s passes"] {
        assert!(marks[0].contains(part), "{part:?} missing: {}", marks[0]);
    }
}
