//! Connection slots under pressure: at `max_connections` the oldest idle keep-alive connections are closed to
//! make room (nginx's "reusing connections") while busy requests and tunnels keep theirs, and
//! `max_connections_per_ip` caps what one client address (the PROXY header's source when there is one) holds.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::metrics::metric;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

fn config(backend: SocketAddr, global: &str, server_keys: &str) -> String {
    format!(
        "[global]\n{global}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n\
         {server_keys}\n\n[[server.location]]\npath = \"/\"\nproxy_pass = \"app\"\n\n[upstream.app]\n\n\
         [[upstream.app.server]]\naddr = \"{backend}\"\n"
    )
}

/// A keep-alive connection (from `local` when given) that has had one answered request.
async fn kept_alive(limpet: SocketAddr, local: Option<&str>, path: &str) -> TcpStream {
    let mut s = connect_from(limpet, local).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let text = read_response(&mut s, WAIT).await.expect("an answer");
    assert_eq!(status_of(&text), 200, "{text}");
    s
}

async fn connect_from(limpet: SocketAddr, local: Option<&str>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(local) = local {
        socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    }
    socket.connect(limpet).await.unwrap()
}

/// Does limpet still serve requests on `s`?
async fn still_served(s: &mut TcpStream) -> bool {
    if s.write_all(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    read_response(s, WAIT)
        .await
        .is_some_and(|t| status_of(&t) == 200)
}

async fn closed_count(limpet: &Limpet, reason: &str) -> f64 {
    metric(
        &limpet.metrics().await,
        "limpet_client_connections_closed_total",
        &[("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_the_oldest_idle_connection_makes_room() {
    let backend = HttpBackend::start("b1").await;
    let limpet = Limpet::start(&config(backend.addr, "max_connections = 4", ""));
    let mut idle = Vec::new();
    for i in 0..4 {
        idle.push(kept_alive(limpet.addr(), None, &format!("/idle{i}")).await);
        // Distinct idle-since times (milliseconds): the first is the oldest.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A fifth client is served, and the oldest idle connection is the one closed for it.
    let mut fifth = kept_alive(limpet.addr(), None, "/fifth").await;
    let (_, closed) = read_until_close(&mut idle[0], WAIT).await;
    assert!(closed, "the oldest idle connection stayed open");
    for (i, s) in idle.iter_mut().enumerate().skip(1) {
        assert!(still_served(s).await, "idle connection {i} was closed");
    }
    assert!(still_served(&mut fifth).await);
    assert_eq!(closed_count(&limpet, "idle_reused").await, 1.0);
    assert_eq!(closed_count(&limpet, "max_connections").await, 0.0);
}

/// An HTTP/2 connection with no open stream is idle too: at the cap it is sent GOAWAY and closed to make room,
/// while one with a stream in progress keeps its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_an_idle_h2_connection_makes_room_and_a_busy_one_keeps_its_slot() {
    use support::h2::{goaway_code, read_frames, H2};
    let backend = HttpBackend::start("b1").await;
    let limpet = Limpet::start(&config(backend.addr, "max_connections = 2", "h2c = true"));
    // Busy: a stream waiting on the backend for 3 s.
    let mut busy = H2::connect(limpet.addr()).await;
    let mut slow = H2 {
        send: busy.send.clone(),
        requests: 0,
    };
    let in_flight = tokio::spawn(async move { slow.get("/slow/3000").await });
    eventually(WAIT, "the slow request at the backend", || async {
        (backend.hits() == 1).then_some(())
    })
    .await;
    // Idle: a raw HTTP/2 connection that had one answered stream.
    let mut idle = support::h2::raw_preface(limpet.addr()).await;
    support::h2::send_get(&mut idle, 1, "/once").await;
    eventually(WAIT, "the idle connection's request answered", || async {
        (backend.hits() == 2).then_some(())
    })
    .await;
    // A third client is served; the idle HTTP/2 connection is the one that goes.
    let mut third = kept_alive(limpet.addr(), None, "/third").await;
    let (frames, closed) = read_frames(&mut idle, WAIT).await;
    assert!(closed, "the idle HTTP/2 connection stayed open");
    assert_eq!(
        goaway_code(&frames),
        Some(0),
        "GOAWAY NO_ERROR first: {frames:?}"
    );
    assert!(still_served(&mut third).await);
    let r = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200, "the busy connection kept its slot");
    assert_eq!(busy.get("/after").await.status, 200);
    assert_eq!(closed_count(&limpet, "idle_reused").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_requests_and_tunnels_keep_their_slots() {
    let backend = HttpBackend::start("b1").await;
    let ws = WsBackend::start().await;
    let config = config(backend.addr, "max_connections = 2", "").replace(
        "[upstream.app]\n",
        &format!(
            "[upstream.app]\n\n[upstream.ws]\n\n[[upstream.ws.server]]\naddr = \"{}\"\n",
            ws.addr
        ),
    );
    let config = config.replace(
        "[[server.location]]\npath = \"/\"",
        "[[server.location]]\npath = \"/ws\"\nproxy_pass = \"ws\"\n\n[[server.location]]\npath = \"/\"",
    );
    let limpet = Limpet::start(&config);
    let mut tunnel = ws_connect(limpet.addr(), "/ws").await;
    // A request in progress (the backend answers after 3 s).
    let mut busy = TcpStream::connect(limpet.addr()).await.unwrap();
    busy.write_all(b"GET /slow/3000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually(WAIT, "the slow request at the backend", || async {
        (backend.hits() == 1).then_some(())
    })
    .await;
    // Nothing idle to give up: the third connection is closed unanswered.
    let (bytes, closed) = raw(limpet.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", WAIT).await;
    assert!(
        closed && bytes.is_empty(),
        "answered past max_connections: {bytes:?}"
    );
    assert_eq!(closed_count(&limpet, "max_connections").await, 1.0);
    // Both kept theirs.
    let text = read_response(&mut busy, WAIT)
        .await
        .expect("the slow answer");
    assert_eq!(status_of(&text), 200);
    tunnel.send(Message::text("still here")).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, tunnel.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_caps_one_address() {
    let backend = HttpBackend::start("b1").await;
    let limpet = Limpet::start(&config(backend.addr, "", "max_connections_per_ip = 2"));
    let mut first = kept_alive(limpet.addr(), Some("127.0.0.1"), "/a1").await;
    let _second = kept_alive(limpet.addr(), Some("127.0.0.1"), "/a2").await;
    let mut third = connect_from(limpet.addr(), Some("127.0.0.1")).await;
    let _ = third
        .write_all(b"GET /a3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (bytes, closed) = read_until_close(&mut third, WAIT).await;
    assert!(
        closed && bytes.is_empty(),
        "a third connection from one address: {bytes:?}"
    );
    // Another address is not affected.
    let mut other = kept_alive(limpet.addr(), Some("127.0.0.2"), "/b1").await;
    assert!(still_served(&mut other).await);
    assert_eq!(closed_count(&limpet, "max_connections_per_ip").await, 1.0);
    // A slot given back is free again. A connection made before limpet has seen the first one close is still
    // over the cap: each of those is refused and counted too.
    assert!(still_served(&mut first).await);
    drop(first);
    let addr = limpet.addr();
    let refused_meanwhile = &std::sync::atomic::AtomicU32::new(0);
    eventually(
        WAIT,
        "a connection once the first closed",
        move || async move {
            let mut s = connect_from(addr, Some("127.0.0.1")).await;
            let served = still_served(&mut s).await;
            if !served {
                refused_meanwhile.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            served.then_some(())
        },
    )
    .await;
    let refused_meanwhile = refused_meanwhile.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        closed_count(&limpet, "max_connections_per_ip").await,
        f64::from(1 + refused_meanwhile)
    );
    assert!(backend.seen.lock().unwrap().iter().all(|s| s.uri != "/a3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_balancer_the_proxy_header_source_is_what_is_capped() {
    let backend = HttpBackend::start("b1").await;
    let limpet = Limpet::start(&config(
        backend.addr,
        "",
        "max_connections_per_ip = 1\nproxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1\"]",
    ));
    let proxied = |source: &str| {
        format!("PROXY TCP4 {source} 127.0.0.1 40000 80\r\nGET /p HTTP/1.1\r\nHost: x\r\n\r\n")
            .into_bytes()
    };
    let mut one = TcpStream::connect(limpet.addr()).await.unwrap();
    one.write_all(&proxied("203.0.113.1")).await.unwrap();
    assert_eq!(
        status_of(&read_response(&mut one, WAIT).await.unwrap()),
        200
    );
    // The same client behind the balancer again: refused; another client through the same balancer: served.
    let (bytes, closed) = raw(limpet.addr(), &proxied("203.0.113.1"), WAIT).await;
    assert!(closed && bytes.is_empty(), "{bytes:?}");
    let mut two = TcpStream::connect(limpet.addr()).await.unwrap();
    two.write_all(&proxied("203.0.113.2")).await.unwrap();
    assert_eq!(
        status_of(&read_response(&mut two, WAIT).await.unwrap()),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_clients_get_in_past_a_flood_of_idle_connections() {
    // The shipped config (health checks on, default timeouts) with room for 300 connections, all of them taken the
    // moment limpet is ready by connections that made one request each and now sit idle (keepalive_timeout 75 s).
    let fleet = NodeFleet::start(3, &[]);
    let limpet = Limpet::start(&shipped_config(
        &fleet.addrs(),
        &[("max_connections = 100000", "max_connections = 300")],
    ));
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(kept_alive(limpet.addr(), None, "/whoami").await);
    }
    // Real Socket.IO clients (polling handshake, then WebSocket) all connect, and their emits are acknowledged.
    let r = SioClient::run_to_end(&limpet.url(), "--clients 30 --emits 3").await;
    assert_clean(&r, 30, 3);
    let reused = closed_count(&limpet, "idle_reused").await;
    println!("30 Socket.IO clients past 300 idle connections: {reused} idle connections closed to make room");
    assert!(reused >= 1.0);
    assert_eq!(closed_count(&limpet, "max_connections").await, 0.0);
    // The oldest of the flood went first.
    let (_, closed) = read_until_close(&mut flood[0], WAIT).await;
    assert!(closed, "the oldest idle connection is still open");
}
