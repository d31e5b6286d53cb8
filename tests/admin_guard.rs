//! The admin listener as an attacker meets it: state-changing endpoints need the bearer token of
//! `[admin] token_file` (401 without it), what a browser sends on behalf of another site gets 403 (a cross-site
//! `Origin` or `Sec-Fetch-Site`, a `Host` that is not an IP address or `localhost`), and slow, idle or too many
//! connections are closed. Every request is written as raw bytes; each case checks what the client got and
//! whether the server's state changed.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::metrics::metric;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "test-token-4f0c2b7e9a1d";

/// limpet with an admin listener (with `token_file` when `token` is given) in front of `backend`.
fn start(backend: SocketAddr, token: Option<&str>) -> (Limpet, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = simple_config("round_robin", &[backend], "", "");
    if let Some(token) = token {
        let file = dir.path().join("admin.token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        config = config.replace(
            "[admin]\n",
            &format!("[admin]\ntoken_file = \"{}\"\n", file.display()),
        );
    }
    (Limpet::start(&config), dir)
}

/// One request on a new admin connection: `method path` with `headers` (raw lines); the status and the body.
async fn admin(limpet: &Limpet, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let addr = limpet.admin.expect("admin listener");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = format!("{method} {path} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        bytes.push_str(&format!("Host: {addr}\r\n"));
    }
    for h in headers {
        bytes.push_str(h);
        bytes.push_str("\r\n");
    }
    bytes.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(bytes.as_bytes()).await.unwrap();
    let text = read_response(&mut s, WAIT).await.expect("an admin answer");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status_of(&text), body.unwrap_or_default())
}

async fn state_of(limpet: &Limpet, backend: SocketAddr) -> String {
    server_entry(&limpet.status().await, backend)["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_endpoints_need_the_token_and_reads_do_not() {
    let backend = HttpBackend::start("b1").await;
    let (limpet, _dir) = start(backend.addr, Some(TOKEN));
    let drain = format!("/servers/app/{}/drain", backend.addr);
    let bearer = format!("Authorization: Bearer {TOKEN}");

    for headers in [
        vec![],
        vec!["Authorization: Bearer wrong-token-4f0c2b7e9a1d"],
        vec!["Authorization: Bearer test-token-4f0c2b7e9a1"],
        vec!["Authorization: Basic dGVzdDp0ZXN0"],
        vec!["Authorization: Bearer"],
    ] {
        let (status, body) = admin(&limpet, "POST", &drain, &headers).await;
        assert_eq!(status, 401, "{headers:?}: {body}");
        let (status, _) = admin(&limpet, "POST", "/reload", &headers).await;
        assert_eq!(status, 401, "{headers:?}");
    }
    assert_eq!(
        state_of(&limpet, backend.addr).await,
        "up",
        "a refused drain drained"
    );
    let reloads = metric(
        &limpet.metrics().await,
        "limpet_config_reloads_total",
        &[("result", "ok")],
    );
    assert_eq!(reloads, 0.0, "a refused reload reloaded");

    // The 401 names the scheme.
    let mut s = TcpStream::connect(limpet.admin.unwrap()).await.unwrap();
    let raw = format!(
        "POST /reload HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
        limpet.admin.unwrap()
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let text = read_response(&mut s, WAIT).await.unwrap();
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );

    let (status, body) = admin(&limpet, "POST", &drain, &[&bearer]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(&limpet, backend.addr).await, "draining");
    let lower = format!("authorization: bearer {TOKEN}");
    let undrain = format!("/servers/app/{}/undrain", backend.addr);
    assert_eq!(admin(&limpet, "POST", &undrain, &[&lower]).await.0, 200);
    assert_eq!(state_of(&limpet, backend.addr).await, "up");
    assert_eq!(admin(&limpet, "POST", "/reload", &[&bearer]).await.0, 200);

    for path in ["/metrics", "/healthz", "/status"] {
        assert_eq!(admin(&limpet, "GET", path, &[]).await.0, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_browser_sends_for_another_site_is_refused() {
    let backend = HttpBackend::start("b1").await;
    let (limpet, _dir) = start(backend.addr, Some(TOKEN));
    let addr = limpet.admin.unwrap();
    let port = addr.port();
    let drain = format!("/servers/app/{}/drain", backend.addr);
    let bearer = format!("Authorization: Bearer {TOKEN}");

    // A page on another origin: even with the token (which it should not have), nothing changes.
    for headers in [
        vec!["Origin: http://evil.example".to_string()],
        vec!["Origin: null".to_string()],
        vec![format!("Origin: http://localhost:{port}")],
        vec!["Sec-Fetch-Site: cross-site".to_string()],
        vec!["Sec-Fetch-Site: same-site".to_string()],
    ] {
        let mut with_token: Vec<&str> = headers.iter().map(String::as_str).collect();
        with_token.push(&bearer);
        let (status, body) = admin(&limpet, "POST", &drain, &with_token).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        let (status, _) = admin(&limpet, "GET", "/status", &with_token).await;
        assert_eq!(status, 403, "{headers:?}");
    }
    assert_eq!(state_of(&limpet, backend.addr).await, "up");

    // DNS rebinding: the page's own name in Host.
    for host in [
        "evil.example",
        "evil.example:9100",
        "127.0.0.1.nip.io",
        "localhost.evil.example",
    ] {
        let (status, _) = admin(
            &limpet,
            "GET",
            "/status",
            &[&format!("Host: {host}:{port}")],
        )
        .await;
        assert_eq!(status, 403, "Host {host}");
    }
    let (status, _) = admin(&limpet, "GET", "/status", &["Host: \u{7f}bad"]).await;
    assert!(
        status == 403 || status == 400,
        "Host with a control byte: {status}"
    );

    // What operators and tools send.
    for headers in [
        vec![format!("Host: localhost:{port}")],
        vec![format!("Host: LOCALHOST:{port}")],
        vec![format!("Host: 127.0.0.1:{port}")],
        vec![format!("Host: [::1]:{port}")],
        vec!["Host: 10.1.2.3".to_string()],
        vec![
            format!("Origin: http://{addr}"),
            "Sec-Fetch-Site: same-origin".to_string(),
        ],
        vec!["Sec-Fetch-Site: none".to_string()],
    ] {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let (status, _) = admin(&limpet, "GET", "/status", &headers).await;
        assert_eq!(status, 200, "{headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_loopback_admin_still_refuses_browsers() {
    let backend = HttpBackend::start("b1").await;
    let (limpet, _dir) = start(backend.addr, None);
    let drain = format!("/servers/app/{}/drain", backend.addr);
    // The attack of the issue: fetch(..., {method: 'POST', mode: 'no-cors'}) from any page sends an Origin.
    let (status, _) = admin(&limpet, "POST", &drain, &["Origin: https://evil.example"]).await;
    assert_eq!(status, 403);
    assert_eq!(state_of(&limpet, backend.addr).await, "up");
    // curl on the machine itself.
    assert_eq!(admin(&limpet, "POST", &drain, &[]).await.0, 200);
    assert_eq!(state_of(&limpet, backend.addr).await, "draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_admin_connections_are_closed() {
    let backend = HttpBackend::start("b1").await;
    let (limpet, _dir) = start(backend.addr, Some(TOKEN));
    let addr = limpet.admin.unwrap();
    // A head that never ends, one byte every 2 s.
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        for b in b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1" {
            if s.write_all(&[*b]).await.is_err() {
                return started.elapsed();
            }
            let (_, closed) = read_until_close(&mut s, Duration::from_secs(2)).await;
            if closed {
                return started.elapsed();
            }
        }
        panic!(
            "a head sent one byte every 2 s was still read after {:?}",
            started.elapsed()
        );
    });
    // An idle keep-alive connection after one answer.
    let idle = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let text = read_response(&mut s, WAIT).await.expect("an answer");
        assert_eq!(status_of(&text), 200);
        let started = tokio::time::Instant::now();
        let (_, closed) = read_until_close(&mut s, Duration::from_secs(30)).await;
        assert!(closed, "an idle admin connection stayed open 30 s");
        started.elapsed()
    });
    let slow = slow.await.unwrap();
    let idle = idle.await.unwrap();
    println!("admin: slow head closed after {slow:?}, idle connection after {idle:?}");
    // The admin listener still answers.
    assert_eq!(admin(&limpet, "GET", "/healthz", &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped() {
    let backend = HttpBackend::start("b1").await;
    let (limpet, _dir) = start(backend.addr, Some(TOKEN));
    let addr = limpet.admin.unwrap();
    // 256 connections held open (each sends half a head, so each holds its slot until limpet's head timeout).
    let mut held = Vec::new();
    for _ in 0..256 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // The 257th is closed without an answer.
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    eventually(
        WAIT,
        "the 257th admin connection to be closed unanswered",
        || async {
            let (bytes, closed) = raw(addr, request, Duration::from_secs(2)).await;
            (closed && bytes.is_empty()).then_some(())
        },
    )
    .await;
    // A slot given back serves again.
    held.truncate(255);
    eventually(WAIT, "an admin answer once a slot is free", || async {
        let (bytes, _) = raw(addr, request, Duration::from_secs(2)).await;
        (status_of(&String::from_utf8_lossy(&bytes)) == 200).then_some(())
    })
    .await;
    // The proxy itself is untouched by the admin listener's cap.
    assert_eq!(who(limpet.addr(), "/").await, "b1");
}
