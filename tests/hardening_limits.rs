//! Limits on what a client may send and how slowly: head size and header count (431), request line (414),
//! slow heads, bodies and readers (client_header_timeout), idle keep-alive (keepalive_timeout), body size per
//! location (413) and max_connections.

mod support;

use std::time::Duration;

use support::backend::RawReply;
use support::metrics::gauge;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One listener with `server_keys` in its `[[server]]` table and `global` in `[global]`; location "/" (and
/// "/small" with `client_max_body_size = "10"`) to `backend`.
fn config(backend: std::net::SocketAddr, global: &str, server_keys: &str) -> String {
    format!(
        "[global]\n{global}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n{server_keys}\n\n\
[[server.location]]\npath = \"/\"\nproxy_pass = \"app\"\n\n\
[[server.location]]\npath = \"/small\"\nproxy_pass = \"app\"\nclient_max_body_size = \"10\"\n\n\
[upstream.app]\nbalance = \"round_robin\"\n\n[[upstream.app.server]]\naddr = \"{backend}\"\n"
    )
}

async fn connect(limpet: &Limpet) -> TcpStream {
    TcpStream::connect(limpet.addr()).await.expect("connect")
}

/// One request on an open connection; the raw response.
async fn exchange(s: &mut TcpStream, req: &str) -> Option<String> {
    s.write_all(req.as_bytes()).await.ok()?;
    read_response(s, Duration::from_secs(10)).await
}

/// Waits until the peer closes `s` (EOF or reset), discarding what it sends.
async fn wait_closed(s: &mut TcpStream, within: Duration, what: &str) {
    let (_, closed) = read_until_close(s, within).await;
    assert!(closed, "{what}: still open after {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_too_many_headers_and_long_request_lines_are_refused() {
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let backend = RawBackend::start(RawReply::AfterHeadClose(ok.to_vec())).await;
    let limpet = Limpet::start(&config(backend.addr, "", "max_header_bytes = 4096"));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "v".repeat(5000)
    );
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let hundred: String = (0..98).map(|i| format!("X-H{i}: v\r\n")).collect();
    let line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(3000));
    let cases = [
        ("head past max_header_bytes", big, 431),
        (
            "101 headers",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
            431,
        ),
        ("request line past half of max_header_bytes", line, 414),
    ];
    for (what, req, want) in cases {
        let (resp, closed) = raw(limpet.addr(), req.as_bytes(), Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&resp).into_owned();
        assert_eq!(status_of(&text), want, "{what}: {text:?}");
        assert!(closed, "{what}: connection left open");
    }
    assert_eq!(backend.text(), "", "a refused request reached the backend");
    // Exactly 100 headers (Host and Connection included) pass.
    let ok = format!("GET /ok HTTP/1.1\r\nHost: a\r\n{hundred}Connection: close\r\n\r\n");
    let mut s = connect(&limpet).await;
    let resp = exchange(&mut s, &ok).await.expect("response");
    assert_eq!(status_of(&resp), 200, "{resp:?}");
    assert!(backend.text().contains("\r\nx-h97: v\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_is_closed_after_client_header_timeout_and_never_forwarded() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&config(backend.addr, "", "client_header_timeout = \"1s\""));
    let mut s = connect(&limpet).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    wait_closed(&mut s, Duration::from_secs(10), "half a head").await;
    // A connection that sends nothing at all is closed the same way.
    let mut idle = connect(&limpet).await;
    wait_closed(&mut idle, Duration::from_secs(10), "silent connection").await;
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_dribblers_are_cut_and_do_not_block_a_normal_request() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&config(backend.addr, "", "client_header_timeout = \"3s\""));
    let addr = limpet.addr();
    let mut dribblers = tokio::task::JoinSet::new();
    for _ in 0..200 {
        dribblers.spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let started = tokio::time::Instant::now();
            for b in head {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                let mut byte = [0u8; 1];
                // A byte every 2 s, watching for limpet closing the connection meanwhile.
                match tokio::time::timeout(Duration::from_secs(2), s.read(&mut byte)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                    Ok(Ok(_)) => return None,
                    Err(_) => {}
                }
                if started.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            None
        });
    }
    let during = get(addr, "/during").await;
    assert_eq!(during.status, 200);
    let mut cut = 0;
    while let Some(r) = dribblers.join_next().await {
        if r.expect("dribbler").is_some() {
            cut += 1;
        }
    }
    assert_eq!(cut, 200, "every dribbling connection is closed by limpet");
    assert_eq!(get(addr, "/after").await.status, 200);
    assert_eq!(backend.hits(), 2, "no dribbled head reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_and_does_not_blame_the_backend() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&config(backend.addr, "", "client_header_timeout = \"1s\""));
    let mut s = connect(&limpet).await;
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let (resp, closed) = read_until_close(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    assert_eq!(status_of(&text), 408, "{text:?}");
    assert!(closed);
    // max_fails = 1 by default: had the stall counted against the backend, this would be refused.
    assert_eq!(get(limpet.addr(), "/next").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_response_is_let_go() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&config(backend.addr, "", "client_header_timeout = \"1s\""));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(limpet.addr()).await.unwrap();
    s.write_all(b"GET /big/67108864 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the response started", || async {
        (gauge(&limpet, "limpet_upstream_active_connections").await == 1).then_some(())
    })
    .await;
    // The client reads nothing; limpet gives up on it and releases the upstream request too.
    eventually(
        Duration::from_secs(20),
        "client connection released",
        || async {
            let clients = gauge(&limpet, "limpet_client_connections_active").await;
            let upstream = gauge(&limpet, "limpet_upstream_active_connections").await;
            (clients == 0 && upstream == 0).then_some(())
        },
    )
    .await;
    let (got, closed) = read_until_close(&mut s, Duration::from_secs(20)).await;
    assert!(closed);
    assert!(got.len() < 64 << 20, "the whole body cannot have been sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_closes_after_keepalive_timeout_not_client_header_timeout() {
    let backend = HttpBackend::start("b").await;
    // keepalive_timeout shorter than client_header_timeout: the idle connection closes long before 60 s.
    let short = Limpet::start(&config(
        backend.addr,
        "",
        "client_header_timeout = \"60s\"\nkeepalive_timeout = \"1s\"",
    ));
    let mut s = connect(&short).await;
    let resp = exchange(&mut s, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(status_of(&resp.expect("first response")), 200);
    wait_closed(
        &mut s,
        Duration::from_secs(15),
        "idle keep-alive connection",
    )
    .await;

    // keepalive_timeout longer than client_header_timeout: idling past the header timeout between requests
    // is fine, and the next head still has client_header_timeout to arrive once it starts.
    let long = Limpet::start(&config(
        backend.addr,
        "",
        "client_header_timeout = \"1s\"\nkeepalive_timeout = \"60s\"",
    ));
    let mut s = connect(&long).await;
    let resp = exchange(&mut s, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(status_of(&resp.expect("first response")), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await; // idle: longer than client_header_timeout
    let resp = exchange(&mut s, "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(status_of(&resp.expect("second response after idling")), 200);
    // A head started and left unfinished is still cut by client_header_timeout.
    s.write_all(b"GET /3 HTTP/1.1\r\n").await.unwrap();
    wait_closed(&mut s, Duration::from_secs(10), "unfinished second head").await;
    assert_eq!(backend.hits(), 3);

    // keepalive_timeout = 0: no keep-alive at all.
    let none = Limpet::start(&config(backend.addr, "", "keepalive_timeout = \"0s\""));
    let mut s = connect(&none).await;
    s.write_all(b"GET /4 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (resp, closed) = read_until_close(&mut s, Duration::from_secs(10)).await;
    assert_eq!(status_of(&String::from_utf8_lossy(&resp)), 200);
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_max_body_size_applies_per_location_with_a_1m_default() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&config(backend.addr, "", ""));
    let addr = limpet.addr();
    let small = request(addr, "POST", "/small/x", &[], "01234567890")
        .await
        .unwrap();
    assert_eq!(small.status, 413);
    let fits = request(addr, "POST", "/small/echo", &[], "0123456789")
        .await
        .unwrap();
    assert_eq!(fits.status, 200);
    let mib = vec![b'x'; 1 << 20];
    let at_default = request(addr, "POST", "/echo", &[], mib.clone())
        .await
        .unwrap();
    assert_eq!(at_default.status, 200);
    assert_eq!(at_default.body.len(), 1 << 20);
    let mut over = mib;
    over.push(b'x');
    assert_eq!(
        request(addr, "POST", "/echo", &[], over)
            .await
            .unwrap()
            .status,
        413
    );
    let hits = backend.hits();
    // A chunked body has no declared length: it is cut where it passes the limit, and still answered 413.
    let chunked = "POST /small/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n6\r\n678901\r\n0\r\n\r\n";
    let (resp, closed) = raw(addr, chunked.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&String::from_utf8_lossy(&resp)), 413);
    assert!(closed);
    let seen = backend.seen.lock().unwrap().clone();
    assert!(seen
        .iter()
        .all(|s| s.body.len() <= 1 << 20 && !s.body.starts_with(b"012345678901")));
    assert!(backend.hits() <= hits + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_connections_close_and_existing_ones_keep_working() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&config(backend.addr, "max_connections = 4", ""));
    // Four connections, each with a request in progress: none is idle, so none can make room.
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = connect(&limpet).await;
        s.write_all(format!("GET /slow/2000?held={i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        held.push(s);
    }
    eventually(
        Duration::from_secs(10),
        "four requests at the backend",
        || async { (backend.hits() == 4).then_some(()) },
    )
    .await;
    let mut extra = connect(&limpet).await;
    let _ = extra
        .write_all(b"GET /extra HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let (resp, closed) = read_until_close(&mut extra, Duration::from_secs(10)).await;
    assert!(closed, "the connection past max_connections stays open");
    assert!(
        resp.is_empty(),
        "it was answered: {:?}",
        String::from_utf8_lossy(&resp)
    );
    for (i, s) in held.iter_mut().enumerate() {
        let resp = read_response(s, Duration::from_secs(10)).await;
        assert_eq!(status_of(&resp.expect("held request answered")), 200, "{i}");
        let resp = exchange(s, &format!("GET /again/{i} HTTP/1.1\r\nHost: a\r\n\r\n")).await;
        assert_eq!(status_of(&resp.expect("held connection still works")), 200);
    }
    // Idle now: a new connection takes the place of one of them.
    eventually(Duration::from_secs(10), "a place frees up", || async {
        request(limpet.addr(), "GET", "/later", &[], "")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_durations_serve_without_overflow() {
    // Every duration at its bound ("30d", checked by --check): deadlines computed from them must not overflow.
    let backend = HttpBackend::start("b").await;
    let long = "\"30d\"";
    let config = config(
        backend.addr,
        &format!("shutdown_timeout = {long}"),
        &format!("client_header_timeout = {long}\nkeepalive_timeout = {long}"),
    )
    .replace(
        "proxy_pass = \"app\"\n",
        &format!("proxy_pass = \"app\"\nconnect_timeout = {long}\nread_timeout = {long}\n"),
    )
    .replace(
        "[upstream.app]\n",
        &format!("[upstream.app]\nkeepalive_timeout = {long}\n"),
    );
    assert!(config.contains("read_timeout = \"30d\""), "{config}");
    let limpet = Limpet::start(&config);
    let mut s = connect(&limpet).await;
    for i in 0..3 {
        let resp = exchange(
            &mut s,
            &format!("GET /long/{i} HTTP/1.1\r\nHost: a\r\n\r\n"),
        )
        .await;
        assert_eq!(status_of(&resp.expect("an answer")), 200);
    }
    let resp = exchange(
        &mut s,
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    assert_eq!(status_of(&resp.expect("an answer")), 200);
    assert!(
        !limpet.logs().iter().any(|l| l.contains("panicked")),
        "{:?}",
        limpet.logs()
    );
}
