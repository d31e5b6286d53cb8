//! What a client controls in the headers that describe it: `X-Forwarded-For` behind a trusted proxy (the walk
//! stops at the first entry that is not an address), the other forwarding headers from untrusted and trusted
//! peers, requests without `Host`, header names with underscores, trailers, and requests pipelined behind one
//! limpet answers early. Each case writes raw bytes and checks what the backend saw and what the client got.
//!
//! The addresses carried in headers are documentation ranges (RFC 5737, RFC 3849): data only, never dialled.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// One listener (with `server_keys`) → "/" → upstream "app" over `backend`.
fn config(backend: SocketAddr, server_keys: &str) -> String {
    format!(
        "[[server]]\nlisten = [\"127.0.0.1:0\"]\n{server_keys}\n\n[[server.location]]\npath = \"/\"\n\
         proxy_pass = \"app\"\n\n[upstream.app]\n\n[[upstream.app.server]]\naddr = \"{backend}\"\n"
    )
}

/// Writes `request` on a new connection; the first response's status, and whether the connection then closed.
async fn send(limpet: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(limpet).await.unwrap();
    s.write_all(request).await.unwrap();
    let text = read_response(&mut s, WAIT)
        .await
        .expect("a response from limpet");
    (status_of(&text), text)
}

/// `GET path` from 127.0.0.1 with the given header lines; the headers the backend saw.
async fn seen_with(
    limpet: SocketAddr,
    backend: &HttpBackend,
    path: &str,
    lines: &str,
) -> http::HeaderMap {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n{lines}Connection: close\r\n\r\n");
    let (status, text) = send(limpet, request.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let seen = backend.last().expect("the backend saw the request");
    assert_eq!(seen.uri, path);
    seen.headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarded_for_walk_stops_at_the_first_entry_that_is_not_an_address() {
    let backend = HttpBackend::start("b1").await;
    // 127.0.0.1 (the test client) plays a trusted proxy; 192.0.2.0/24 holds further trusted hops.
    let limpet = InProcess::start(&config(
        backend.addr,
        "trusted_proxies = [\"127.0.0.1\", \"192.0.2.0/24\"]",
    ));
    let cases: &[(&str, &str)] = &[
        // The attack: the client's own X-Forwarded-For entry, then its trusted proxy appending ip:port.
        ("6.6.6.6, 203.0.113.9:5555", "203.0.113.9"),
        ("6.6.6.6, [2001:db8::1]:443", "2001:db8::1"),
        ("6.6.6.6, [2001:db8::1]", "2001:db8::1"),
        // Not an address: the walk stops, keeping the last trusted hop (here the peer itself).
        ("6.6.6.6, unknown", "127.0.0.1"),
        ("6.6.6.6, 203.0.113.9:99999", "127.0.0.1"),
        ("6.6.6.6, _hidden", "127.0.0.1"),
        ("6.6.6.6, 192.0.2.7, garbage", "127.0.0.1"),
        ("6.6.6.6, garbage, 192.0.2.7", "192.0.2.7"),
        // Plain walks.
        ("6.6.6.6, 203.0.113.9", "203.0.113.9"),
        ("203.0.113.9, 192.0.2.7", "203.0.113.9"),
    ];
    for (xff, client) in cases {
        let h = seen_with(
            limpet.addr(),
            &backend,
            "/walk",
            &format!("X-Forwarded-For: {xff}\r\n"),
        )
        .await;
        assert_eq!(h["x-real-ip"], *client, "X-Forwarded-For: {xff}");
        assert_eq!(h["x-forwarded-for"], format!("{xff}, 127.0.0.1").as_str());
    }
    // obs-text anywhere in the header: the peer's address wins.
    let mut request =
        b"GET /obs HTTP/1.1\r\nHost: site.test\r\nX-Forwarded-For: 6.6.6.6\r\n".to_vec();
    request.extend(b"X-Forwarded-For: 203.0.113.9\xff, 198.51.100.1\r\nConnection: close\r\n\r\n");
    let (status, text) = send(limpet.addr(), &request).await;
    assert_eq!(status, 200, "{text}");
    let seen = backend.last().unwrap();
    assert_eq!(seen.uri, "/obs");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced_or_removed() {
    let backend = HttpBackend::start("b1").await;
    let limpet = InProcess::start(&config(backend.addr, ""));
    let lies =
        "X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\n\
                X-Forwarded-Port: 443\r\nX-Forwarded-Proto: https\r\n\
                Forwarded: for=6.6.6.6;proto=https;host=evil.example\r\n";
    let h = seen_with(limpet.addr(), &backend, "/lies", lies).await;
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "site.test");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(!h.contains_key("x-forwarded-port"), "{h:?}");
    assert!(!h.contains_key("forwarded"), "{h:?}");

    // HTTP/1.0 without Host: no X-Forwarded-Host survives, and the server gets a Host (its own address).
    let request = format!("GET /old HTTP/1.0\r\n{lies}\r\n");
    let (status, text) = send(limpet.addr(), request.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let seen = backend.last().unwrap();
    assert_eq!(seen.uri, "/old");
    assert_eq!(seen.headers["host"], backend.addr.to_string().as_str());
    assert!(
        !seen.headers.contains_key("x-forwarded-host"),
        "{:?}",
        seen.headers
    );
    assert!(!seen.headers.contains_key("forwarded"));
    assert!(!seen.headers.contains_key("x-forwarded-port"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_without_host_reaches_a_node_server() {
    // Node's HTTP server answers 400 to an HTTP/1.1 request without Host: the one limpet sends must have one.
    let fleet = NodeFleet::start(1, &[]);
    let node = fleet.addrs()[0];
    let limpet = InProcess::start(&config(node, ""));
    let (status, text) = send(
        limpet.addr(),
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"sid\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_keeps_the_forwarding_headers_it_set() {
    let backend = HttpBackend::start("b1").await;
    let limpet = InProcess::start(&config(backend.addr, "trusted_proxies = [\"127.0.0.1\"]"));
    let lines = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Host: chat.example\r\nX-Forwarded-Port: 443\r\n\
                 X-Forwarded-Proto: https\r\nForwarded: for=203.0.113.9;proto=https\r\n";
    let h = seen_with(limpet.addr(), &backend, "/trusted", lines).await;
    assert_eq!(h["x-real-ip"], "203.0.113.9");
    assert_eq!(h["x-forwarded-host"], "chat.example");
    assert_eq!(h["x-forwarded-port"], "443");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["forwarded"], "for=203.0.113.9;proto=https");
    // What it left out, limpet fills in.
    let h = seen_with(limpet.addr(), &backend, "/trusted-bare", "").await;
    assert_eq!(h["x-forwarded-host"], "site.test");
    assert_eq!(h["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_with_underscores_never_reach_the_server() {
    let backend = HttpBackend::start("b1").await;
    let limpet = InProcess::start(&config(backend.addr, ""));
    let lines = "X_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX-Keep: 1\r\n";
    let h = seen_with(limpet.addr(), &backend, "/under", lines).await;
    assert!(!h.keys().any(|k| k.as_str().contains('_')), "{h:?}");
    assert_eq!(h["x-keep"], "1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_never_reach_the_server() {
    let backend = RawBackend::start(RawReply::AfterHead(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    ))
    .await;
    let limpet = InProcess::start(&config(backend.addr, ""));
    let request = b"POST /trailers HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\
                    Trailer: X-Forwarded-For, Host, Transfer-Encoding\r\nTE: trailers\r\nConnection: close\r\n\r\n\
                    5\r\nhello\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nHost: evil.example\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let (status, text) = send(limpet.addr(), request).await;
    assert_eq!(status, 200, "{text}");
    let seen = eventually(WAIT, "the body's last chunk at the backend", || async {
        let t = backend.text();
        t.contains("\r\n0\r\n").then_some(t)
    })
    .await;
    let (head, body) = seen.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("POST /trailers HTTP/1.1\r\n"), "{seen}");
    assert!(
        body.starts_with("5\r\nhello\r\n0\r\n\r\n"),
        "the body must end with an empty trailer section: {body:?}"
    );
    assert!(
        !seen.contains("6.6.6.6") && !seen.contains("evil.example"),
        "{seen}"
    );
    assert!(!head.to_ascii_lowercase().contains("trailer:"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_behind_an_early_answer_is_never_read_from_its_body() {
    let backend = HttpBackend::start("b1").await;
    let limpet = InProcess::start(&config(backend.addr, "max_header_bytes = 1024"));
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: site.test\r\n\r\n";
    // Each first request is answered by limpet itself before its body is read; its body holds a request.
    let firsts = [
        // 413: body over client_max_body_size (1m by default).
        format!("POST /big HTTP/1.1\r\nHost: site.test\r\nContent-Length: 2000000\r\n\r\n{smuggled}"),
        // 400: Content-Length with Transfer-Encoding.
        format!(
            "POST /both HTTP/1.1\r\nHost: site.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n\
             0\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        // 405: CONNECT.
        format!("CONNECT site.test:443 HTTP/1.1\r\nHost: site.test:443\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len()),
        // 414: a request line over half of max_header_bytes.
        format!(
            "POST /{} HTTP/1.1\r\nHost: site.test\r\nContent-Length: {}\r\n\r\n{smuggled}",
            "a".repeat(600),
            smuggled.len()
        ),
    ];
    for first in &firsts {
        let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
        s.write_all(first.as_bytes()).await.unwrap();
        let text = read_response(&mut s, WAIT).await.expect("limpet's answer");
        assert!(status_of(&text) >= 400, "{text}");
        // Whatever comes after, the connection must not answer the smuggled request.
        let (rest, _) = read_until_close(&mut s, Duration::from_secs(3)).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("HTTP/1.1 200"), "{first:?} then {rest}");
    }
    let uris: Vec<String> = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert!(!uris.iter().any(|u| u.contains("smuggled")), "{uris:?}");
    assert!(
        uris.is_empty(),
        "no first request may reach the backend: {uris:?}"
    );
}
