//! HTTP/2 to clients: prior knowledge (`h2c`) and ALPN `h2`, every stream relayed to the fleet as HTTP/1.1
//! through the same routing, sticky Engine.IO sessions over one connection, WebSocket over HTTP/2 (RFC 8441)
//! turned into an HTTP/1.1 upgrade, and the connection's deadlines and graceful close.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Version};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use support::eio;
use support::h2::frame::{frame, GOAWAY, HEADERS};
use support::h2::{localhost_cert, raw_preface, read_frames, request, tls_connect, H2};
use support::metrics::metric;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(20);

/// `config` with `keys` added to its first `[[server]]`.
fn server_keys(config: &str, keys: &str) -> String {
    assert!(config.contains("[[server]]\n"));
    config.replacen("[[server]]\n", &format!("[[server]]\n{keys}\n"), 1)
}

/// Three Socket.IO nodes behind the shipped config with `h2c = true`, and one HTTP/2 connection to it.
async fn fleet_over_h2c() -> (NodeFleet, Limpet, H2) {
    let fleet = NodeFleet::start(3, &[]);
    let limpet = Limpet::start(&shipped_h2c(&fleet.addrs()));
    let h2 = H2::connect(limpet.addr()).await;
    (fleet, limpet, h2)
}

/// limpet in front of `backend` (round robin) with `keys` on its listener.
fn limpet_with(backend: std::net::SocketAddr, keys: &str) -> Limpet {
    Limpet::start(&server_keys(
        &simple_config("round_robin", &[backend], "", ""),
        keys,
    ))
}

/// The shipped config (health checks on, default timeouts) with `h2c = true` on its listener.
fn shipped_h2c(nodes: &[std::net::SocketAddr]) -> String {
    shipped_config(
        nodes,
        &[(
            "keepalive_timeout = \"75s\"",
            "keepalive_timeout = \"75s\"\nh2c = true",
        )],
    )
}

#[tokio::test]
async fn h2c_prior_knowledge_and_http11_share_a_listener() {
    let b = HttpBackend::start("a").await;
    let limpet = limpet_with(b.addr, "h2c = true");
    let mut h2 = H2::connect(limpet.addr()).await;
    for i in 0..3 {
        let r = h2.get(&format!("/x/{i}?q=1")).await;
        assert_eq!((r.status, r.body.as_str()), (200, "a"), "{r:?}");
    }
    let seen = b.last().expect("the backend saw the requests");
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("GET", "/x/2?q=1")
    );
    assert_eq!(seen.headers["host"], "limpet");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    // A GET whose HEADERS ended the stream goes out with no body framing at all.
    assert!(
        !seen.headers.contains_key("transfer-encoding"),
        "{:?}",
        seen.headers
    );
    assert!(
        !seen.headers.contains_key("content-length"),
        "{:?}",
        seen.headers
    );
    // The same listener still speaks HTTP/1.1.
    assert_eq!(who(limpet.addr(), "/h1").await, "a");
}

/// A preface that arrives in pieces is still HTTP/2; a request that starts with its first letter is still HTTP/1.1.
#[tokio::test]
async fn h2c_tells_a_split_preface_from_an_http11_request() {
    let b = HttpBackend::start("a").await;
    let limpet = limpet_with(b.addr, "h2c = true");
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    let preface = support::h2::frame::PREFACE;
    s.write_all(&preface[..7]).await.unwrap();
    // A client that pauses inside the preface (no condition to wait on: the pause is the behaviour tested).
    tokio::time::sleep(Duration::from_millis(60)).await;
    s.write_all(&preface[7..]).await.unwrap();
    s.write_all(&frame(support::h2::frame::SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    support::h2::send_get(&mut s, 1, "/").await;
    s.write_all(&frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]))
        .await
        .unwrap();
    let (frames, _) = read_frames(&mut s, WAIT).await;
    assert!(
        frames
            .iter()
            .any(|(kind, _, id, _)| *kind == HEADERS && *id == 1),
        "the split preface was served as HTTP/2: {frames:?}"
    );
    let r = support::client::request(limpet.addr(), "POST", "/echo", &[], "posted")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "posted"));
}

#[tokio::test]
async fn without_h2c_a_prior_knowledge_client_is_refused_and_http11_goes_on() {
    let b = HttpBackend::start("a").await;
    let limpet = Limpet::start(&simple_config("round_robin", &[b.addr], "", ""));
    let tcp = TcpStream::connect(limpet.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("the client side of the handshake is local");
    tokio::spawn(conn);
    let sent = tokio::time::timeout(WAIT, send.send_request(request("GET", "/", "", "")))
        .await
        .expect("an answer or an error in time");
    assert!(
        sent.is_err(),
        "an HTTP/1.1-only listener served HTTP/2: {sent:?}"
    );
    assert_eq!(b.hits(), 0, "nothing reached the backend");
    assert_eq!(who(limpet.addr(), "/").await, "a");
}

#[tokio::test]
async fn an_h2_request_reaches_the_server_as_clean_http11_and_the_answer_loses_its_hop_headers() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nX-Resp: yes\r\n\r\nok".to_vec();
    let raw = RawBackend::start(RawReply::AfterHead(reply)).await;
    let limpet = limpet_with(raw.addr, "h2c = true");
    let mut h2 = H2::connect(limpet.addr()).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://limpet.example:8443/p?x=1")
        .version(Version::HTTP_2)
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("te", "trailers")
        .header("x-keep", "1")
        .header("content-length", "5")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let r = h2.try_request(req).await.expect("answered");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{r:?}");
    let head = r.head.to_ascii_lowercase();
    assert!(head.contains("x-resp: yes"), "{head}");
    for hop in ["connection:", "keep-alive:", "x-hop:"] {
        assert!(
            !head.contains(hop),
            "{hop} reached the HTTP/2 client: {head}"
        );
    }
    let sent = eventually(WAIT, "the body reached the server", || async {
        let t = raw.text();
        t.contains("\r\n\r\nhello").then_some(t)
    })
    .await;
    let lower = sent.to_ascii_lowercase();
    assert!(sent.starts_with("POST /p?x=1 HTTP/1.1\r\n"), "{sent}");
    assert!(
        lower.contains("\r\nhost: limpet.example:8443\r\n"),
        "{sent}"
    );
    assert_eq!(lower.matches("\r\ncookie:").count(), 1, "{sent}");
    assert!(lower.contains("\r\ncookie: a=1; b=2\r\n"), "{sent}");
    assert!(lower.contains("\r\ncontent-length: 5\r\n"), "{sent}");
    assert!(lower.contains("\r\nx-keep: 1\r\n"), "{sent}");
    assert!(!lower.contains("\r\nte:"), "te reached the server: {sent}");
    assert!(
        !sent.contains(':') || !lower.contains("\r\n:"),
        "a pseudo-header reached the server: {sent}"
    );
}

#[tokio::test]
async fn alpn_offers_h2_on_tls_listeners_unless_http2_is_off() {
    let b = HttpBackend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, roots) = localhost_cert(dir.path());
    let tls = format!(
        "tls = {{ cert = {:?}, key = {:?} }}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let config = simple_config("round_robin", &[b.addr], "", "");
    let limpet = Limpet::start(&server_keys(&config, &tls));
    let mut h2 = H2::connect_tls(limpet.addr(), roots.clone()).await;
    let r = h2.get("/over-tls").await;
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
    assert_eq!(b.last().unwrap().headers["x-forwarded-proto"], "https");
    let plain = Limpet::start(&server_keys(&config, &format!("{tls}\nhttp2 = false")));
    let s = tls_connect(plain.addr(), roots, &[b"h2", b"http/1.1"]).await;
    assert_eq!(
        s.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "http2 = false offers HTTP/1.1 only"
    );
}

/// A real Socket.IO fleet behind the shipped config: every request of each Engine.IO session, all sent over
/// one HTTP/2 connection, reaches the node that issued the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engineio_sessions_over_one_h2_connection_stay_on_their_nodes() {
    let (_fleet, limpet, mut h2) = fleet_over_h2c().await;
    let mut nodes = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let sid = eio::open(&mut h2).await;
        eio::connect_ns(&mut h2, &sid).await;
        let first = eio::whoami(&mut h2, &sid, 1).await;
        for n in 2..5 {
            assert_eq!(
                eio::whoami(&mut h2, &sid, n).await,
                first,
                "session {sid} moved"
            );
        }
        nodes.insert(first);
    }
    assert!(
        nodes.len() > 1,
        "six sessions all on {nodes:?}: least_conn placed none elsewhere"
    );
    let text = limpet.metrics().await;
    assert_eq!(support::metrics::lookups(&text, "miss"), 0.0, "{text}");
}

/// Real socket.io-client sessions (long-polling through fetch on undici's HTTP/2 agent) over a TLS listener with
/// HTTP/2 offered by ALPN, behind the shipped config: every connection speaks h2 and every emit of every session is
/// answered by its node. (undici holds a POST until its connection has nothing else in flight, so it spreads the
/// sessions over several connections; one connection carrying sessions is `engineio_sessions_over_one_h2_…`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_clients_polling_over_http2_keep_their_sessions_and_nodes() {
    let fleet = NodeFleet::start(3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path());
    let tls = format!(
        "keepalive_timeout = \"75s\"\ntls = {{ cert = {:?}, key = {:?} }}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let limpet = Limpet::start(&shipped_config(
        &fleet.addrs(),
        &[("keepalive_timeout = \"75s\"", &tls)],
    ));
    let url = format!("https://127.0.0.1:{}", limpet.addr().port());
    let ca = cert.display().to_string();
    let r = tokio::task::spawn_blocking(move || {
        let args = [
            "--clients",
            "8",
            "--emits",
            "10",
            "--transports",
            "polling",
            "--http2",
            "--ca",
            &ca,
        ];
        SioClient::run(&url, &args)
    })
    .await
    .unwrap();
    support::assert_clean(&r, 8, 10);
    assert_eq!(r["transports"]["polling"], 8, "{r}");
    let alpn = r["alpn"].as_object().expect("alpn counts");
    assert!(
        !alpn.is_empty() && alpn.keys().all(|k| k == "h2"),
        "every connection spoke h2: {r}"
    );
    assert!(
        r["nodes"].as_object().map(|n| n.len()) >= Some(2),
        "sessions spread: {r}"
    );
}

/// The HTTP/1.1 stall HTTP/2 removes: a long-poll GET waits on the connection while a POST of the same session
/// goes out beside it on the same connection, and the GET returns with the POST's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_long_poll_does_not_hold_back_a_post_on_the_same_connection() {
    let (_fleet, _limpet, mut h2) = fleet_over_h2c().await;
    let sid = eio::open(&mut h2).await;
    eio::connect_ns(&mut h2, &sid).await;
    let mut poller = H2 {
        send: h2.send.clone(),
        requests: 0,
    };
    let path = eio::poll_path(&sid);
    let poll = tokio::spawn(async move { poller.get(&path).await });
    // The poll is parked at the node until something is sent to this session.
    eventually(WAIT, "the long-poll is pending at the node", || async {
        (!poll.is_finished()).then_some(())
    })
    .await;
    eio::post(&mut h2, &sid, "421[\"whoami\"]").await;
    let r = tokio::time::timeout(WAIT, poll)
        .await
        .expect("the poll returned")
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("431["), "the poll carried the ack: {r:?}");
}

/// Sends an extended CONNECT for a WebSocket at `path`: the answer's status and, on 200, the tunnel.
async fn h2_websocket(
    h2: &mut H2,
    path: &str,
) -> (
    u16,
    Option<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>,
) {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://limpet{path}"))
        .version(Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    tokio::time::timeout(WAIT, h2.send.ready())
        .await
        .unwrap()
        .unwrap();
    let resp = tokio::time::timeout(WAIT, h2.send.send_request(req))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = resp.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let upgraded = tokio::time::timeout(WAIT, hyper::upgrade::on(resp))
        .await
        .unwrap()
        .expect("tunnel");
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    (status, Some(ws))
}

fn ws_and_http_config(
    ws: std::net::SocketAddr,
    http: std::net::SocketAddr,
    server_keys: &str,
) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n{server_keys}\n\n\
         [[server.location]]\npath = \"/ws\"\nproxy_pass = \"ws\"\n\n[[server.location]]\npath = \"/\"\nproxy_pass = \"http\"\n\n\
         [upstream.ws]\nbalance = \"round_robin\"\n[[upstream.ws.server]]\naddr = \"{ws}\"\n\n\
         [upstream.http]\nbalance = \"round_robin\"\n[[upstream.http.server]]\naddr = \"{http}\"\n"
    )
}

/// A WebSocket echo server on `/ws`, an HTTP backend ("plain") on the rest, limpet with `keys` in front.
async fn ws_and_http(keys: &str) -> (WsBackend, HttpBackend, Limpet) {
    let ws_backend = WsBackend::start().await;
    let http = HttpBackend::start("plain").await;
    let limpet = Limpet::start(&ws_and_http_config(ws_backend.addr, http.addr, keys));
    (ws_backend, http, limpet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_h2_is_an_http11_upgrade_to_the_server_and_counts_as_an_h2_tunnel() {
    let (_ws_backend, _http, limpet) = ws_and_http("h2c = true").await;
    let mut h2 = H2::connect(limpet.addr()).await;
    let (status, ws) = h2_websocket(&mut h2, "/ws/chat").await;
    assert_eq!(status, 200);
    let mut ws = ws.expect("tunnel");
    for text in ["one", "two"] {
        ws.send(Message::Text(text.into())).await.unwrap();
        let echo = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("echo in time");
        assert_eq!(echo.unwrap().unwrap(), Message::Text(text.into()));
    }
    // Other streams of the connection go on beside the tunnel.
    let r = h2.get("/beside").await;
    assert_eq!((r.status, r.body.as_str()), (200, "plain"));
    let labels = [("upstream", "ws"), ("protocol", "h2")];
    let text = limpet.metrics().await;
    assert_eq!(
        metric(&text, "limpet_websocket_tunnels_active", &labels),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "limpet_websocket_tunnels_total", &labels),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "limpet_websocket_tunnels_total",
            &[("upstream", "ws"), ("protocol", "h1")]
        ),
        0.0
    );
    // A client ends its side of the stream once the close handshake is done.
    ws.close(None).await.unwrap();
    drop(ws);
    eventually(WAIT, "the tunnel ended", || async {
        let text = limpet.metrics().await;
        (metric(&text, "limpet_websocket_tunnels_active", &labels) == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_the_streams_answer_and_a_2xx_without_101_is_a_502() {
    let (_ws_backend, http, limpet) = ws_and_http("h2c = true").await;
    let mut h2 = H2::connect(limpet.addr()).await;
    let (status, _) = h2_websocket(&mut h2, "/status/403").await;
    assert_eq!(status, 403, "the server's refusal is relayed");
    let (status, _) = h2_websocket(&mut h2, "/no-upgrade-here").await;
    assert_eq!(
        status, 502,
        "a 200 that did not switch protocols is no tunnel"
    );
    let seen = http.last().expect("the server saw the upgrade");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["sec-websocket-version"], "13");
    assert_eq!(
        seen.headers["sec-websocket-key"].len(),
        24,
        "a base64 16-byte key"
    );
    // The connection is still good.
    assert_eq!(h2.get("/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_websocket_over_h2_off_an_extended_connect_reaches_no_server() {
    let (ws_backend, _http, limpet) = ws_and_http("h2c = true\nwebsocket_over_h2 = false").await;
    let mut h2 = H2::connect(limpet.addr()).await;
    let mut req = request("CONNECT", "/ws", "sec-websocket-version: 13\r\n", "");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let r = h2.try_request(req).await;
    assert!(!matches!(&r, Ok(reply) if reply.status == 200), "{r:?}");
    assert_eq!(
        ws_backend
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// An Engine.IO session upgraded to a WebSocket over HTTP/2 reaches the node that issued it, and speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_session_upgrades_to_websocket_over_h2_on_its_node() {
    let (_fleet, _limpet, mut h2) = fleet_over_h2c().await;
    for _ in 0..3 {
        let sid = eio::open(&mut h2).await;
        let node = {
            eio::connect_ns(&mut h2, &sid).await;
            eio::whoami(&mut h2, &sid, 1).await
        };
        let path = format!(
            "/socket.io/?EIO=4&transport=websocket&sid={}",
            percent_encode(&sid)
        );
        let (status, ws) = h2_websocket(&mut h2, &path).await;
        assert_eq!(status, 200, "the session's node took the upgrade");
        let mut ws = ws.unwrap();
        // Engine.IO's upgrade: probe, then upgrade, then the socket speaks over the WebSocket.
        ws.send(Message::Text("2probe".into())).await.unwrap();
        let probe = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(probe, Message::Text("3probe".into()));
        ws.send(Message::Text("5".into())).await.unwrap();
        ws.send(Message::Text("422[\"whoami\"]".into()))
            .await
            .unwrap();
        let ack = loop {
            let m = tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                if let Some(rest) = t.strip_prefix("432") {
                    break rest.to_string();
                }
            }
        };
        assert_eq!(eio::ack_node(&ack, &sid), node);
        ws.close(None).await.ok();
    }
}

#[tokio::test]
async fn an_idle_h2_connection_gets_goaway_and_closes_after_keepalive_timeout() {
    let b = HttpBackend::start("a").await;
    let keys = "h2c = true\nkeepalive_timeout = \"1s\"";
    let limpet = limpet_with(b.addr, keys);
    let mut s = raw_preface(limpet.addr()).await;
    support::h2::send_get(&mut s, 1, "/").await;
    let (frames, closed) = read_frames(&mut s, WAIT).await;
    assert!(closed, "limpet closed the idle connection");
    assert!(
        frames
            .iter()
            .any(|(kind, _, id, _)| *kind == HEADERS && *id == 1),
        "the request was answered"
    );
    assert!(
        frames.iter().any(|(kind, ..)| *kind == GOAWAY),
        "GOAWAY before the close: {frames:?}"
    );
}

/// The other order of the two deadlines: a stream that stays open longer than `keepalive_timeout` keeps its
/// connection.
#[tokio::test]
async fn an_open_stream_outlives_keepalive_timeout() {
    let b = HttpBackend::start("a").await;
    let keys = "h2c = true\nkeepalive_timeout = \"1s\"";
    let limpet = limpet_with(b.addr, keys);
    let mut h2 = H2::connect(limpet.addr()).await;
    let r = h2.get("/slow/2500").await;
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
}

/// Each stream starts the idle time over: streams spaced under `keepalive_timeout` keep one connection for longer
/// than `keepalive_timeout` in all.
#[tokio::test]
async fn each_stream_starts_the_idle_time_over() {
    let b = HttpBackend::start("a").await;
    let limpet = limpet_with(b.addr, "h2c = true\nkeepalive_timeout = \"3s\"");
    let mut h2 = H2::connect(limpet.addr()).await;
    for i in 0..3 {
        if i > 0 {
            // The client's own pace, well inside the idle timeout (the behaviour tested, not a wait).
            tokio::time::sleep(Duration::from_millis(1800)).await;
        }
        let r = h2
            .try_request(request("GET", &format!("/{i}"), "", ""))
            .await;
        assert_eq!(
            r.map(|r| r.status),
            Ok(200),
            "stream {i} on the kept connection"
        );
    }
}

#[tokio::test]
async fn a_connection_that_never_opens_a_stream_is_closed_after_client_header_timeout() {
    let b = HttpBackend::start("a").await;
    let keys = "h2c = true\nclient_header_timeout = \"1s\"";
    let limpet = limpet_with(b.addr, keys);
    let mut s = raw_preface(limpet.addr()).await;
    let (frames, closed) = read_frames(&mut s, WAIT).await;
    assert!(closed, "limpet closed the connection");
    assert!(
        frames.iter().any(|(kind, ..)| *kind == GOAWAY),
        "{frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_and_lets_open_streams_finish() {
    let b = HttpBackend::start("a").await;
    let mut limpet = limpet_with(b.addr, "h2c = true");
    let mut h2 = H2::connect(limpet.addr()).await;
    assert_eq!(h2.get("/warm").await.status, 200);
    let mut slow = H2 {
        send: h2.send.clone(),
        requests: 0,
    };
    let in_flight = tokio::spawn(async move { slow.get("/slow/1500").await });
    eventually(WAIT, "the slow request reached the backend", || async {
        b.seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.uri == "/slow/1500")
            .then_some(())
    })
    .await;
    limpet.signal("TERM");
    let r = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("finished")
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "a"),
        "the open stream finished"
    );
    let after = h2.try_request(request("GET", "/late", "", "")).await;
    assert!(
        after.is_err(),
        "a stream after GOAWAY was served: {after:?}"
    );
    assert_eq!(limpet.wait_exit(WAIT).await, Some(0));
}

/// A WebSocket over HTTP/2 open at SIGTERM keeps working through the drain and is closed when
/// `shutdown_timeout` ends; limpet then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_tunnel_open_at_shutdown_lasts_until_shutdown_timeout() {
    let ws_backend = WsBackend::start().await;
    let http = HttpBackend::start("plain").await;
    let config = format!(
        "[global]\nshutdown_timeout = \"2s\"\nclose_spread = \"0s\"\n\n{}",
        ws_and_http_config(ws_backend.addr, http.addr, "h2c = true")
    );
    let mut limpet = Limpet::start(&config);
    let mut h2 = H2::connect(limpet.addr()).await;
    let (status, ws) = h2_websocket(&mut h2, "/ws").await;
    assert_eq!(status, 200);
    let mut ws = ws.expect("tunnel");
    limpet.signal("TERM");
    limpet.wait_log("shutting down", WAIT).await;
    ws.send(Message::Text("during shutdown".into()))
        .await
        .unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("echo in time");
    assert_eq!(
        echo.unwrap().unwrap(),
        Message::Text("during shutdown".into())
    );
    assert_eq!(limpet.wait_exit(WAIT).await, Some(0));
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the client sees the end");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "tunnel closed, got {end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_leaves_open_h2_connections_serving() {
    let a = HttpBackend::start("a").await;
    let limpet = limpet_with(a.addr, "h2c = true");
    let mut h2 = H2::connect(limpet.addr()).await;
    assert_eq!(h2.get("/before").await.body, "a");
    let b = HttpBackend::start("b").await;
    limpet.write_config(&server_keys(
        &simple_config("round_robin", &[b.addr], "", ""),
        "h2c = true",
    ));
    limpet.signal("HUP");
    eventually(
        WAIT,
        "the reload took effect on the open connection",
        || async {
            let r = H2 {
                send: h2.send.clone(),
                requests: 0,
            }
            .get("/after")
            .await;
            (r.body == "b").then_some(())
        },
    )
    .await;
    assert_eq!(h2.get("/again").await.status, 200);
}

#[test]
fn config_keys_are_checked() {
    let config = simple_config("round_robin", &["127.0.0.1:1".parse().unwrap()], "", "");
    let (code, out) = check_config(&server_keys(&config, "max_concurrent_streams = 0"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("server[0].max_concurrent_streams: must be 1..=65536, got 0"),
        "{out}"
    );
    let (code, out) = check_config(&server_keys(&config, "h2c = \"yes\""));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("h2c"), "{out}");
    let (code, out) = check_config(&server_keys(
        &config,
        "h2c = true\nwebsocket_over_h2 = false\nhttp2 = false\nmax_concurrent_streams = 8",
    ));
    assert_eq!(code, 0, "{out}");
}
