//! HTTP/1.1 proxying end to end: location routing, server_name matching, header rewriting both ways, streamed
//! bodies, pooled keep-alive upstream connections, and graceful shutdown on SIGTERM / SIGINT.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use support::backend::RawReply;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// `[[upstream.NAME.server]]` entries for each (name, servers).
fn upstreams(groups: &[(&str, &[SocketAddr])]) -> String {
    let mut s = String::new();
    for (name, servers) in groups {
        s.push_str(&format!("\n[upstream.{name}]\n"));
        for a in *servers {
            s.push_str(&format!("[[upstream.{name}.server]]\naddr = \"{a}\"\n"));
        }
    }
    s
}

/// Sends raw request bytes on a new connection and reads one response.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_response(&mut s, WAIT)
        .await
        .expect("a complete response")
}

/// Header lines of a raw response, lowercased names.
fn header_names(response: &str) -> Vec<String> {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, _)| k.trim().to_ascii_lowercase())
        .collect()
}

fn header_value(response: &str, name: &str) -> Option<String> {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// How many bytes follow the first head in `data`.
fn body_bytes(data: &[u8]) -> usize {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |end| data.len() - end - 4)
}

fn distinct_peers(backend: &HttpBackend) -> usize {
    let seen = backend.seen.lock().unwrap();
    seen.iter().map(|s| s.peer).collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_location_prefix_wins() {
    let root = HttpBackend::start("root").await;
    let api = HttpBackend::start("api").await;
    let v2 = HttpBackend::start("v2").await;
    let config = format!(
        "[[server]]\nlisten = [\"127.0.0.1:0\"]\n\
         [[server.location]]\npath = \"/api/\"\nproxy_pass = \"api\"\n\
         [[server.location]]\npath = \"/\"\nproxy_pass = \"root\"\n\
         [[server.location]]\npath = \"/api/v2/\"\nproxy_pass = \"v2\"\n{}",
        upstreams(&[
            ("root", &[root.addr]),
            ("api", &[api.addr]),
            ("v2", &[v2.addr]),
        ])
    );
    let limpet = Limpet::start(&config);
    for (path, want) in [
        ("/", "root"),
        ("/index.html", "root"),
        ("/api", "root"),
        ("/api/", "api"),
        ("/api/users?id=1", "api"),
        ("/api/v2", "api"),
        ("/api/v2/", "v2"),
        ("/api/v2/users/7", "v2"),
        ("/apiv2/", "root"),
    ] {
        let resp = get(limpet.addr(), path).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.text(), want, "{path}");
    }
    let seen = v2.last().expect("v2 saw a request");
    assert_eq!(seen.uri, "/api/v2/users/7", "the path is passed unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_picks_the_block_by_host() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let wild = HttpBackend::start("wild").await;
    let default = HttpBackend::start("default").await;
    let block = |names: &str, upstream: &str| {
        format!(
            "[[server]]\nlisten = [\"127.0.0.1:0\"]\nserver_name = [{names}]\n\
             [[server.location]]\npath = \"/\"\nproxy_pass = \"{upstream}\"\n\n"
        )
    };
    let config = format!(
        "{}{}{}[[server]]\nlisten = [\"127.0.0.1:0\"]\n[[server.location]]\npath = \"/\"\nproxy_pass = \"default\"\n{}",
        block("\"a.test\"", "a"),
        block("\"b.test\", \"www.b.test\"", "b"),
        block("\"*.wild.test\"", "wild"),
        upstreams(&[
            ("a", &[a.addr]),
            ("b", &[b.addr]),
            ("wild", &[wild.addr]),
            ("default", &[default.addr]),
        ])
    );
    let limpet = Limpet::start(&config);
    for (host, want) in [
        ("a.test", "a"),
        ("A.Test:8080", "a"),
        ("b.test", "b"),
        ("www.b.test", "b"),
        ("x.wild.test", "wild"),
        ("wild.test", "default"),
        ("other.test", "default"),
        ("127.0.0.1", "default"),
    ] {
        let resp = request(limpet.addr(), "GET", "/", &[("host", host)], "")
            .await
            .unwrap();
        assert_eq!(resp.text(), want, "Host: {host}");
    }
    let seen = a.last().unwrap();
    assert_eq!(
        seen.headers["host"], "A.Test:8080",
        "Host is passed through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_lose_hop_by_hop_and_gain_forwarding_headers() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let resp = raw_exchange(
        limpet.addr(),
        b"GET /h?q=1 HTTP/1.1\r\n\
          Host: example.com:8080\r\n\
          Connection: keep-alive, X-Hop\r\n\
          X-Hop: secret\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: trailers\r\n\
          Trailer: X-Checksum\r\n\
          Upgrade: h2c\r\n\
          Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
          Proxy-Connection: keep-alive\r\n\
          X-Forwarded-For: 203.0.113.9\r\n\
          X-Forwarded-Proto: https\r\n\
          X-Forwarded-Host: spoofed.example\r\n\
          X-End: kept\r\n\
          \r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = backend.last().unwrap();
    let h = &seen.headers;
    for hop in [
        "x-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(!h.contains_key(hop), "{hop} reached the backend: {h:?}");
    }
    if let Some(c) = h.get("connection") {
        let c = c.to_str().unwrap().to_ascii_lowercase();
        assert!(!c.contains("x-hop"), "Connection: {c}");
    }
    assert_eq!(seen.uri, "/h?q=1");
    assert_eq!(h["host"], "example.com:8080");
    assert_eq!(h["x-end"], "kept");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "example.com:8080");
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_lose_hop_by_hop() {
    let reply = b"HTTP/1.1 200 OK\r\n\
                  Content-Length: 5\r\n\
                  Connection: keep-alive, X-Hop\r\n\
                  X-Hop: secret\r\n\
                  Keep-Alive: timeout=5, max=100\r\n\
                  Trailer: X-Checksum\r\n\
                  Upgrade: h2c\r\n\
                  Proxy-Authenticate: Basic realm=\"x\"\r\n\
                  Proxy-Connection: keep-alive\r\n\
                  X-End: kept\r\n\
                  \r\n\
                  hello"
        .to_vec();
    let backend = RawBackend::start(RawReply::AfterHead(reply)).await;
    let limpet = Limpet::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let resp = raw_exchange(
        limpet.addr(),
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.ends_with("\r\n\r\nhello"), "{resp}");
    let names = header_names(&resp);
    for hop in [
        "x-hop",
        "keep-alive",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-connection",
    ] {
        assert!(
            !names.contains(&hop.to_string()),
            "{hop} reached the client:\n{resp}"
        );
    }
    if let Some(c) = header_value(&resp, "connection") {
        assert!(!c.to_ascii_lowercase().contains("x-hop"), "{resp}");
    }
    assert_eq!(header_value(&resp, "x-end").as_deref(), Some("kept"));
    assert_eq!(header_value(&resp, "content-length").as_deref(), Some("5"));
}

/// 16 MiB up and the same 16 MiB back through `/echo`: every byte arrives in order, and limpet's resident memory
/// grows by far less than the body (it is streamed, not held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_streams_through_both_ways() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(
        &simple_config("round_robin", &[backend.addr], "", "").replace(
            "connect_timeout = \"1s\"",
            "connect_timeout = \"1s\"\nclient_max_body_size = \"0\"",
        ),
    );
    let body: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let warm = get(limpet.addr(), "/").await;
    assert_eq!(warm.status, 200);
    let before = limpet.rss_kib();
    let resp = request(limpet.addr(), "POST", "/echo", &[], body.clone())
        .await
        .unwrap();
    let after = limpet.rss_kib();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), body.len());
    assert!(resp.body == body, "the echoed bytes differ");
    assert_eq!(backend.last().unwrap().body.len(), body.len());
    assert!(before > 0, "cannot read limpet's RSS");
    let grown = after.saturating_sub(before);
    println!("RSS before {before} KiB, after {after} KiB, grown {grown} KiB");
    assert!(
        grown < 8 * 1024,
        "limpet grew by {grown} KiB moving a 16 MiB body each way"
    );
}

/// The server answers with a Content-Length of 4 MiB but sends only the first 1 MiB and stalls: a streaming proxy
/// hands that first part to the client at once, a buffering one would hand over nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_reaches_the_client_before_it_is_complete() {
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n".to_vec();
    reply.extend(std::iter::repeat_n(b'z', 1 << 20));
    let backend = RawBackend::start(RawReply::AfterHead(reply)).await;
    let limpet = Limpet::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    while body_bytes(&got) < 1 << 20 {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("the first MiB did not arrive while the rest was pending")
            .unwrap();
        assert!(n > 0, "limpet closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
}

/// The client declares 4 MiB and sends 1 MiB: the server receives that part while the request is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_reaches_the_server_before_it_is_complete() {
    let backend = RawBackend::start(RawReply::Silent).await;
    let limpet = Limpet::start(
        &simple_config("round_robin", &[backend.addr], "", "").replace(
            "connect_timeout = \"1s\"",
            "connect_timeout = \"1s\"\nclient_max_body_size = \"0\"",
        ),
    );
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&vec![b'u'; 1 << 20]).await.unwrap();
    eventually(WAIT, "the first MiB at the backend", || {
        let n = body_bytes(&backend.received.lock().unwrap());
        async move { (n == 1 << 20).then_some(()) }
    })
    .await;
    assert!(backend.text().starts_with("POST /upload HTTP/1.1\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_pooled_connections() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&simple_config(
        "round_robin",
        &[backend.addr],
        "keepalive = 8",
        "",
    ));
    const N: usize = 30;
    for i in 0..N {
        // A new client connection each time: reuse is limpet's, not the client's.
        let resp = get(limpet.addr(), &format!("/r{i}")).await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!(backend.hits(), N);
    let conns = distinct_peers(&backend);
    println!("{N} sequential requests, {conns} backend connection(s)");
    assert!(
        conns <= 3,
        "{N} sequential requests opened {conns} backend connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_zero_opens_a_connection_per_request() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&simple_config(
        "round_robin",
        &[backend.addr],
        "keepalive = 0",
        "",
    ));
    const N: usize = 10;
    for i in 0..N {
        let resp = get(limpet.addr(), &format!("/r{i}")).await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!(backend.hits(), N);
    assert_eq!(distinct_peers(&backend), N);
}

/// Many requests on one client connection: they share one upstream connection too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_client_is_served_over_one_upstream_connection() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    for i in 0..10 {
        s.write_all(format!("GET /k{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let resp = read_response(&mut s, WAIT).await.expect("response");
        assert_eq!(status_of(&resp), 200);
        assert!(resp.ends_with("\r\n\r\nb"), "{resp}");
    }
    assert!(distinct_peers(&backend) <= 2);
}

/// SIGTERM: the listener closes at once, a request in flight (its body half sent) still gets its whole answer,
/// and limpet exits 0 without waiting for the client to hang up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    graceful_stop("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_finishes_in_flight_requests_then_exits() {
    graceful_stop("INT").await;
}

async fn graceful_stop(signal: &str) {
    let backend = HttpBackend::start("b").await;
    let mut limpet = Limpet::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let addr = limpet.addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    eventually(WAIT, "the request at the backend", || {
        let hits = backend.hits();
        async move { (hits == 1).then_some(()) }
    })
    .await;
    limpet.signal(signal);
    eventually(WAIT, "the listener to close", || async move {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    s.write_all(b"world").await.unwrap();
    let resp = read_response(&mut s, WAIT)
        .await
        .expect("the in-flight request was answered");
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.ends_with("\r\n\r\nhelloworld"), "{resp}");
    assert_eq!(limpet.wait_exit(WAIT).await, Some(0));
    assert!(
        limpet.logs().iter().any(|l| l.contains("shutting down")),
        "{:?}",
        limpet.logs()
    );
}
