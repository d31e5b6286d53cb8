//! WebSocket and Upgrade tunnelling: only a GET with `Connection: upgrade` and `Upgrade: websocket` is forwarded
//! as an upgrade, only a valid `101` (Upgrade: websocket, the right Sec-WebSocket-Accept) opens a tunnel, and a
//! refused upgrade leaves the client connection plain HTTP (no "websocket smuggling"). The tunnel carries frames
//! both ways, forwards half-closes and close handshakes, ends on the idle timeout, and counts as an active
//! connection of its server.

#[path = "websocket/helpers.rs"]
mod helpers;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::SinkExt;
use helpers::*;
use support::backend::RawReply;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Location "/ws" to upstream `ws` (over `ws_servers`), everything else to upstream `plain` (one server).
fn config(
    ws_servers: &[SocketAddr],
    plain: SocketAddr,
    ws_location: &str,
    ws_upstream: &str,
) -> String {
    let mut s = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n\n\
[[server.location]]\npath = \"/\"\nproxy_pass = \"plain\"\nconnect_timeout = \"2s\"\n\n\
[[server.location]]\npath = \"/ws\"\nproxy_pass = \"ws\"\nconnect_timeout = \"2s\"\n{ws_location}\n\n\
[upstream.plain]\nbalance = \"round_robin\"\n[[upstream.plain.server]]\naddr = \"{plain}\"\n\n\
[upstream.ws]\n{ws_upstream}\n"
    );
    if !ws_upstream.contains("balance") {
        s.push_str("balance = \"round_robin\"\n");
    }
    for a in ws_servers {
        s.push_str(&format!("[[upstream.ws.server]]\naddr = \"{a}\"\n"));
    }
    s
}

/// limpet with "/ws" → `ws`, "/" → an HTTP backend named "plain".
async fn start(ws: SocketAddr) -> (Limpet, HttpBackend) {
    let plain = HttpBackend::start("plain").await;
    let limpet = Limpet::start(&config(&[ws], plain.addr, "", ""));
    (limpet, plain)
}

/// limpet in front of a raw backend that answers any head with `reply`, and a client connection that has sent
/// `request`: limpet's answer to it, and the connection to go on with.
struct Exchanged {
    limpet: Limpet,
    plain: HttpBackend,
    backend: RawBackend,
    client: TcpStream,
    answer: String,
}

async fn exchange(reply: impl Into<Vec<u8>>, request: &[u8]) -> Exchanged {
    let backend = RawBackend::start(RawReply::AfterHead(reply.into())).await;
    let (limpet, plain) = start(backend.addr).await;
    let mut client = TcpStream::connect(limpet.addr()).await.unwrap();
    client.write_all(request).await.unwrap();
    let answer = read_response(&mut client, WAIT)
        .await
        .expect("limpet's answer");
    Exchanged {
        limpet,
        plain,
        backend,
        client,
        answer,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A real WebSocket backend and client.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_binary_and_a_1mib_message_echo_through_the_tunnel() {
    let backend = WsBackend::start().await;
    let (limpet, _plain) = start(backend.addr).await;
    let mut ws = ws_connect(limpet.addr(), "/ws/echo").await;
    ws.send(Message::Text("hello ✓".into())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::Text("hello ✓".into()));
    ws.send(Message::Binary(vec![0, 1, 2, 255])).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::Binary(vec![0, 1, 2, 255])
    );
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::Binary(big.clone())).await.unwrap();
    match next_message(&mut ws).await {
        Message::Binary(echo) => assert!(echo == big, "1 MiB message came back altered"),
        other => panic!("expected the 1 MiB binary echo, got {other:?}"),
    }
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_handshake_from_the_client_is_forwarded_and_answered() {
    let backend = WsBackend::start().await;
    let (limpet, _plain) = start(backend.addr).await;
    let mut ws = ws_connect(limpet.addr(), "/ws").await;
    ws.send(Message::Text("before close".into())).await.unwrap();
    next_message(&mut ws).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "client done".into(),
    }))
    .await
    .unwrap();
    // The echo server answers a close with a close: it reached the server and its answer came back.
    let frame = wait_closed(&mut ws)
        .await
        .expect("the server's close frame");
    assert_eq!(frame.code, CloseCode::Normal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_handshake_from_the_server_is_forwarded_and_answered() {
    let (addr, answered) = closing_backend().await;
    let (limpet, _plain) = start(addr).await;
    let mut ws = ws_connect(limpet.addr(), "/ws").await;
    ws.send(Message::Text("close now".into())).await.unwrap();
    let frame = wait_closed(&mut ws)
        .await
        .expect("the server's close frame");
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason, "server done");
    // tungstenite answered the close; the answer crossed limpet back to the server.
    let reply = tokio::time::timeout(WAIT, answered)
        .await
        .expect("server never saw the end of the connection")
        .unwrap();
    assert_eq!(
        reply.expect("the client's close answer").code,
        CloseCode::Away
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_keeps_its_websocket_headers_and_drops_those_named_in_connection() {
    let reply = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Protocol: chat\r\n\r\n");
    let req = upgrade_request(
        "/ws/chat?room=1",
        "Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    let Exchanged {
        limpet: _limpet,
        plain: _plain,
        backend,
        client: mut s,
        answer: resp,
    } = exchange(reply, req.as_bytes()).await;
    assert_eq!(status_of(&resp), 101, "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(
        lower.contains(&format!(
            "sec-websocket-accept: {}",
            ACCEPT.to_ascii_lowercase()
        )),
        "{resp}"
    );
    assert!(lower.contains("sec-websocket-protocol: chat\r\n"), "{resp}");
    assert!(lower.contains("upgrade: websocket\r\n"), "{resp}");

    s.write_all(b"tunnel bytes").await.unwrap();
    let text = eventually(WAIT, "tunnel bytes at the backend", || {
        let t = backend.text();
        async move { t.ends_with("tunnel bytes").then_some(t) }
    })
    .await;
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("get /ws/chat?room=1 http/1.1\r\n"),
        "{head}"
    );
    for kept in [
        "\r\nupgrade: websocket",
        "\r\nconnection: upgrade",
        &format!("\r\nsec-websocket-key: {}", KEY.to_ascii_lowercase()),
        "\r\nsec-websocket-version: 13",
        "\r\nsec-websocket-protocol: chat, superchat",
        "\r\nsec-websocket-extensions: permessage-deflate",
        "\r\nx-kept: yes",
        "\r\nx-forwarded-for: 127.0.0.1",
    ] {
        assert!(head.contains(kept), "{kept:?} missing from {head}");
    }
    for dropped in ["x-hop", "keep-alive", "secret"] {
        assert!(!head.contains(dropped), "{dropped:?} crossed: {head}");
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Refused and invalid upgrades: no tunnel, and the client connection stays HTTP.

const SMUGGLED: &str = "GET /ws/internal HTTP/1.1\r\nHost: internal.test\r\n\r\n";

/// The second request reached the backend as a request limpet parsed and forwarded (its own head, with
/// limpet's forwarding headers), never as the client's raw bytes through a tunnel.
fn assert_forwarded_as_http(received: &str) {
    assert!(
        !received.contains(SMUGGLED),
        "the client's raw bytes reached the backend:\n{received}"
    );
    let heads: Vec<&str> = received
        .split("\r\n\r\n")
        .filter(|h| h.contains("/ws/internal"))
        .collect();
    assert_eq!(
        heads.len(),
        1,
        "expected one forwarded request:\n{received}"
    );
    let head = heads[0].to_ascii_lowercase();
    assert!(head.starts_with("get /ws/internal http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nx-forwarded-for: 127.0.0.1"), "{head}");
    assert!(!head.contains("upgrade"), "{head}");
}

/// Offers an upgrade that the backend answers with `reply` (no 101), then sends a second request on the same
/// connection: in the same write as the upgrade, then (on a new limpet) only after the answer arrived. Both are
/// answered as HTTP requests, and the backend gets the second one as limpet's request on a fresh connection.
async fn refused_upgrade_then_request(reply: &[u8], status: u16) {
    for pipelined in [true, false] {
        let backend = RawBackend::start(RawReply::AfterHead(reply.to_vec())).await;
        let (limpet, _plain) = start(backend.addr).await;
        let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
        let mut bytes = upgrade_request("/ws/refused", "");
        if pipelined {
            bytes.push_str(SMUGGLED);
        }
        s.write_all(bytes.as_bytes()).await.unwrap();
        let first = read_response(&mut s, WAIT)
            .await
            .expect("answer to the upgrade");
        assert_eq!(status_of(&first), status, "pipelined={pipelined}: {first}");
        if !pipelined {
            s.write_all(SMUGGLED.as_bytes()).await.unwrap();
        }
        let Some(second) = read_response(&mut s, WAIT).await else {
            panic!("pipelined={pipelined}: no answer to the second request on the same connection");
        };
        assert_eq!(
            status_of(&second),
            status,
            "pipelined={pipelined}: {second}"
        );
        let received = eventually(WAIT, "both requests at the backend", || {
            let t = backend.text();
            async move { t.contains("/ws/internal").then_some(t) }
        })
        .await;
        assert!(
            received.starts_with("GET /ws/refused HTTP/1.1\r\n"),
            "{received}"
        );
        assert_forwarded_as_http(&received);
        // The connection the upgrade was offered on (still open at the backend) took nothing more.
        assert_eq!(
            backend.connections.load(Ordering::SeqCst),
            2,
            "pipelined={pipelined}"
        );
        let first_head_len = received.find("\r\n\r\n").unwrap() + 4;
        assert!(
            received[first_head_len..].starts_with("GET /ws/internal"),
            "bytes other than the second request followed the upgrade request:\n{received}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_refusal_keeps_the_client_connection_http() {
    refused_upgrade_then_request(
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nno way",
        403,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_that_keeps_the_socket_open_opens_no_tunnel() {
    refused_upgrade_then_request(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_with_a_wrong_accept_is_a_502_and_opens_no_tunnel() {
    let wrong = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n";
    let Exchanged {
        limpet,
        plain,
        backend,
        client: mut s,
        answer: resp,
    } = exchange(wrong, upgrade_request("/ws", "").as_bytes()).await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    // Same connection, still HTTP: the next request is parsed and routed to the plain backend.
    s.write_all(b"GET /after HTTP/1.1\r\nHost: example.test\r\n\r\nnot-a-request")
        .await
        .unwrap();
    let next = read_response(&mut s, WAIT).await.expect("answer to /after");
    assert_eq!(status_of(&next), 200, "{next}");
    assert!(next.ends_with("plain"), "{next}");
    assert_eq!(plain.last().unwrap().uri, "/after");
    let received = backend.text();
    assert!(!received.contains("/after"), "{received}");
    assert!(!received.contains("not-a-request"), "{received}");

    // A real client is refused the same way.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws", limpet.addr()))
        .await
        .expect_err("a wrong accept must not open a websocket");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 502),
        other => panic!("expected an HTTP 502, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_without_an_accept_or_to_a_plain_request_is_a_502() {
    let no_accept =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let x = exchange(no_accept, upgrade_request("/ws", "").as_bytes()).await;
    assert_eq!(status_of(&x.answer), 502, "{}", x.answer);

    // A 101 answering a request that asked for no upgrade.
    let plain_get = b"GET /ws/plain HTTP/1.1\r\nHost: example.test\r\n\r\n";
    let mut x = exchange(valid_101(), plain_get).await;
    assert_eq!(status_of(&x.answer), 502, "{}", x.answer);
    x.client.write_all(b"tunnel? \r\n\r\n").await.unwrap();
    let (_, closed) = read_until_close(&mut x.client, WAIT).await;
    assert!(closed, "limpet kept a connection that sent garbage open");
    let received = x.backend.text();
    assert!(!received.contains("tunnel?"), "{received}");
}

/// What a case is, its method and its headers.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_upgrades_are_stripped_and_proxied_as_plain_http() {
    let plain = HttpBackend::start("plain").await;
    let limpet = Limpet::start(&config(&[plain.addr], plain.addr, "", ""));
    let cases: [Case; 5] = [
        (
            "h2c",
            "GET",
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
        ),
        (
            "any protocol",
            "GET",
            &[("connection", "upgrade"), ("upgrade", "foo/2")],
        ),
        (
            "websocket on POST",
            "POST",
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", KEY),
                ("sec-websocket-version", "13"),
            ],
        ),
        (
            "websocket without Connection: upgrade",
            "GET",
            &[
                ("upgrade", "websocket"),
                ("sec-websocket-key", KEY),
                ("sec-websocket-version", "13"),
            ],
        ),
        (
            "websocket without a key",
            "GET",
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        ),
    ];
    for (what, method, headers) in cases {
        let resp = request(limpet.addr(), method, "/ws/x", headers, "")
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(resp.status, 200, "{what}");
        assert_eq!(resp.text(), "plain", "{what}");
        assert!(resp.headers.get("upgrade").is_none(), "{what}");
        let seen = plain.last().unwrap();
        assert_eq!(seen.method, method, "{what}");
        for name in ["upgrade", "http2-settings"] {
            assert!(
                seen.headers.get(name).is_none(),
                "{what}: {name} reached the server"
            );
        }
        let connection = seen
            .headers
            .get("connection")
            .map(|v| v.to_str().unwrap().to_ascii_lowercase());
        assert!(
            !connection.unwrap_or_default().contains("upgrade"),
            "{what}"
        );
    }

    // The client connection stays HTTP after an h2c offer: a second request on it is answered.
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n\
GET /two HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    for path in ["/one", "/two"] {
        let resp = read_response(&mut s, WAIT).await.expect("an answer");
        assert_eq!(status_of(&resp), 200, "{path}: {resp}");
        assert!(!resp.contains("101"), "{resp}");
    }
    assert_eq!(plain.last().unwrap().uri, "/two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_405_and_never_reaches_a_backend() {
    let backend = RawBackend::start(RawReply::Silent).await;
    let plain = HttpBackend::start("plain").await;
    let limpet = Limpet::start(&config(&[backend.addr], plain.addr, "", ""));
    for target in ["example.test:443", "127.0.0.1:22"] {
        let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
        let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let resp = read_response(&mut s, WAIT).await.expect("limpet's answer");
        assert_eq!(status_of(&resp), 405, "{resp}");
    }
    // A request that does reach a backend afterwards shows the CONNECTs did not.
    assert_eq!(get(limpet.addr(), "/ok").await.text(), "plain");
    assert_eq!(plain.hits(), 1);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------------------------
// The tunnel's life: early bytes, half-close, a dying backend, the idle timeout.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_behind_either_head_and_half_closes_cross_the_tunnel() {
    let (addr, report) = half_close_backend(b"server-early|", b"|after client EOF").await;
    let (limpet, _plain) = start(addr).await;
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    // The client's first tunnel bytes travel in the same packet as its upgrade request.
    let mut hello = upgrade_request("/ws", "").into_bytes();
    hello.extend_from_slice(b"client-early|");
    s.write_all(&hello).await.unwrap();
    let got = read_until(&mut s, b"server-early|").await;
    assert_eq!(status_of(&String::from_utf8_lossy(&got)), 101);
    s.write_all(b"client-late").await.unwrap();
    // Half-close: the server sees EOF, still talks, then closes; the client reads all of it, then EOF.
    s.shutdown().await.unwrap();
    let (rest, closed) = read_until_close(&mut s, WAIT).await;
    assert!(closed, "the server's close did not reach the client");
    assert_eq!(String::from_utf8_lossy(&rest), "|after client EOF");
    let (head, tunnel) = tokio::time::timeout(WAIT, report).await.unwrap().unwrap();
    assert!(head.starts_with("GET /ws HTTP/1.1\r\n"), "{head}");
    assert_eq!(String::from_utf8_lossy(&tunnel), "client-early|client-late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_mid_tunnel_closes_the_client_and_limpet_keeps_serving() {
    for reset in [false, true] {
        let addr = dying_backend(reset).await;
        let (limpet, _plain) = start(addr).await;
        let mut ws = ws_connect(limpet.addr(), "/ws").await;
        ws.send(Message::Text("last words".into())).await.unwrap();
        assert_eq!(
            next_message(&mut ws).await,
            Message::Text("last words".into())
        );
        ws.send(Message::Text("die".into())).await.unwrap();
        wait_closed(&mut ws).await;
        // A server's FIN is forwarded as a half-close; the client, seeing it, closes its side.
        drop(ws);
        eventually(WAIT, "tunnel gauge back to 0", || async {
            (metric(&limpet, "limpet_websocket_tunnels_active", addr).await == Some(0.0))
                .then_some(())
        })
        .await;
        // limpet goes on serving: plain requests and new tunnels.
        assert_eq!(
            get(limpet.addr(), "/").await.text(),
            "plain",
            "reset={reset}"
        );
        let mut again = ws_connect(limpet.addr(), "/ws").await;
        again.send(Message::Text("again".into())).await.unwrap();
        assert_eq!(
            next_message(&mut again).await,
            Message::Text("again".into())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_a_silent_tunnel_on_both_sides() {
    let (addr, report) = half_close_backend(b"", b"").await;
    let plain = HttpBackend::start("plain").await;
    let limpet = Limpet::start(&config(&[addr], plain.addr, "read_timeout = \"1s\"", ""));
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    s.write_all(upgrade_request("/ws", "").as_bytes())
        .await
        .unwrap();
    let resp = read_response(&mut s, WAIT).await.expect("limpet's answer");
    assert_eq!(status_of(&resp), 101, "{resp}");
    s.write_all(b"one message").await.unwrap();
    // Silence: limpet closes the client's side ...
    let (rest, closed) = read_until_close(&mut s, WAIT).await;
    assert!(closed, "the silent tunnel was not closed");
    assert!(rest.is_empty());
    // ... and the server's (which saw the message, then EOF).
    let (_, tunnel) = tokio::time::timeout(WAIT, report)
        .await
        .expect("the server side was not closed")
        .unwrap();
    assert_eq!(tunnel, b"one message");
    assert!(limpet
        .logs()
        .iter()
        .any(|l| l.contains("tunnel idle timeout")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_keeps_a_tunnel_open_past_the_idle_timeout() {
    let backend = WsBackend::start().await;
    let plain = HttpBackend::start("plain").await;
    let limpet = Limpet::start(&config(
        &[backend.addr],
        plain.addr,
        "read_timeout = \"3s\"",
        "",
    ));
    let mut ws = ws_connect(limpet.addr(), "/ws").await;
    // Messages well inside the idle timeout, for longer than it in all.
    let started = tokio::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(4500) {
        ws.send(Message::Text(format!("m{n}"))).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::Text(format!("m{n}")));
        n += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(!limpet
        .logs()
        .iter()
        .any(|l| l.contains("tunnel idle timeout")));
}

// ---------------------------------------------------------------------------------------------------------------
// A tunnel is an active connection of its server.

/// Opens WebSockets through limpet until one lands on `target`; returns it (others opened on the way stay open
/// in `others`).
async fn tunnel_to(limpet: &Limpet, target: &DualBackend, others: &mut Vec<Ws>) -> Ws {
    for _ in 0..4 {
        let before = target.websockets.load(Ordering::SeqCst);
        let mut ws = ws_connect(limpet.addr(), "/ws").await;
        ws.send(Message::Text("which".into())).await.unwrap();
        next_message(&mut ws).await;
        if target.websockets.load(Ordering::SeqCst) > before {
            return ws;
        }
        others.push(ws);
    }
    panic!("no tunnel reached {}", target.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_fills_max_conns_so_new_requests_go_to_the_other_server() {
    let a = DualBackend::start("a").await;
    let b = DualBackend::start("b").await;
    let plain = HttpBackend::start("plain").await;
    let mut cfg = config(&[], plain.addr, "", "balance = \"round_robin\"");
    cfg.push_str(&format!(
        "[[upstream.ws.server]]\naddr = \"{}\"\nmax_conns = 1\n[[upstream.ws.server]]\naddr = \"{}\"\n",
        a.addr, b.addr
    ));
    let limpet = Limpet::start(&cfg);
    let mut others = Vec::new();
    let ws = tunnel_to(&limpet, &a, &mut others).await;
    // While the tunnel lives, server a is full: every new request goes to b.
    for i in 0..6 {
        let resp = get(limpet.addr(), &format!("/ws/req{i}")).await;
        assert_eq!(resp.text(), "b", "request {i} went to a full server");
    }
    assert_eq!(
        metric(&limpet, "limpet_upstream_active_connections", a.addr).await,
        Some(1.0)
    );
    drop(ws);
    eventually(WAIT, "server a taking requests again", || async {
        (get(limpet.addr(), "/ws/again").await.text() == "a").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_counts_for_least_conn() {
    let a = DualBackend::start("a").await;
    let b = DualBackend::start("b").await;
    let plain = HttpBackend::start("plain").await;
    let limpet = Limpet::start(&config(
        &[a.addr, b.addr],
        plain.addr,
        "",
        "balance = \"least_conn\"",
    ));
    let mut ws = ws_connect(limpet.addr(), "/ws").await;
    ws.send(Message::Text("which".into())).await.unwrap();
    next_message(&mut ws).await;
    let (busy, idle) = if a.websockets.load(Ordering::SeqCst) == 1 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(busy.websockets.load(Ordering::SeqCst), 1);
    for i in 0..6 {
        let resp = get(limpet.addr(), &format!("/ws/req{i}")).await;
        assert_eq!(
            resp.text(),
            idle.name,
            "request {i} went to the server holding a tunnel"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_gauge_returns_to_zero_after_the_client_closes() {
    let backend = WsBackend::start().await;
    let (limpet, _plain) = start(backend.addr).await;
    let gauge = "limpet_websocket_tunnels_active";
    let mut ws = ws_connect(limpet.addr(), "/ws").await;
    ws.send(Message::Text("hi".into())).await.unwrap();
    next_message(&mut ws).await;
    let mut second = ws_connect(limpet.addr(), "/ws").await;
    eventually(WAIT, "two tunnels in the gauge", || async {
        (metric(&limpet, gauge, backend.addr).await == Some(2.0)).then_some(())
    })
    .await;
    assert_eq!(
        metric(&limpet, "limpet_websocket_tunnels_total", backend.addr).await,
        Some(2.0)
    );
    ws.close(None).await.unwrap();
    wait_closed(&mut ws).await;
    // The server closed after answering; the client closes its socket on seeing that.
    drop(ws);
    eventually(WAIT, "one tunnel in the gauge", || async {
        (metric(&limpet, gauge, backend.addr).await == Some(1.0)).then_some(())
    })
    .await;
    // A client that just drops its connection ends its tunnel too.
    second.send(Message::Text("bye".into())).await.unwrap();
    drop(second);
    eventually(WAIT, "tunnel gauge back to 0", || async {
        (metric(&limpet, gauge, backend.addr).await == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(
        metric(&limpet, "limpet_upstream_active_connections", backend.addr).await,
        Some(0.0)
    );
}
