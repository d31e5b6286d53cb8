//! Hostile request framing, Host and hop-by-hop headers: every malformed request is answered 400 (501/505 where
//! the RFC says so) on a connection limpet then closes, and a raw backend that records every byte proves that
//! nothing of it reached a server. What does reach one is framed by limpet, never copied from the client.

mod support;

use std::time::Duration;

use support::backend::RawReply;
use support::*;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

fn h(s: &str) -> Vec<u8> {
    s.replace('\n', "\r\n").into_bytes()
}

/// Requests refused on the head alone: (what, bytes, accepted statuses).
fn head_cases() -> Vec<(&'static str, Vec<u8>, &'static [u16])> {
    const BAD: &[u16] = &[400];
    const VERSION: &[u16] = &[400, 505];
    vec![
        ("CL then TE", h("POST / HTTP/1.1\nHost: a\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n"), BAD),
        ("TE then CL", h("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nContent-Length: 5\n\n0\n\n"), BAD),
        ("TE `chunked `", h("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked \n\n0\n\n"), BAD),
        ("TE xchunked", h("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: xchunked\n\n0\n\n"), BAD),
        ("TE chunked, identity", h("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked, identity\n\n0\n\n"), BAD),
        ("TE chunked, chunked", h("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked, chunked\n\n0\n\n"), BAD),
        ("TE repeated", h("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked\n\n0\n\n"), BAD),
        ("TE identity", h("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: identity\n\n")  , BAD),
        ("TE gzip, chunked", h("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: gzip, chunked\n\n0\n\n"), &[501]),
        ("TE vertical tab", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n".to_vec(), BAD),
        ("TE obs-fold", h("POST / HTTP/1.1\nHost: a\nTransfer-Encoding:\n chunked\n\n0\n\n"), BAD),
        ("obs-fold", h("GET / HTTP/1.1\nHost: a\nX-A: b\n c\n\n"), BAD),
        ("TE on HTTP/1.0", h("POST / HTTP/1.0\nHost: a\nTransfer-Encoding: chunked\n\n0\n\n"), BAD),
        ("CL conflicting", h("POST / HTTP/1.1\nHost: a\nContent-Length: 5\nContent-Length: 6\n\nhello!"), BAD),
        ("CL repeated", h("POST / HTTP/1.1\nHost: a\nContent-Length: 5\nContent-Length: 5\n\nhello"), BAD),
        ("CL list", h("POST / HTTP/1.1\nHost: a\nContent-Length: 5, 5\n\nhello"), BAD),
        ("CL empty then valid", h("POST / HTTP/1.1\nHost: a\nContent-Length:\nContent-Length: 5\n\nhello"), BAD),
        ("CL +5", h("POST / HTTP/1.1\nHost: a\nContent-Length: +5\n\nhello"), BAD),
        ("CL -5", h("POST / HTTP/1.1\nHost: a\nContent-Length: -5\n\nhello"), BAD),
        ("CL hex", h("POST / HTTP/1.1\nHost: a\nContent-Length: 0x5\n\nhello"), BAD),
        ("CL inner space", h("POST / HTTP/1.1\nHost: a\nContent-Length: 1 0\n\nhellohello"), BAD),
        ("CL past 2^64", h("POST / HTTP/1.1\nHost: a\nContent-Length: 18446744073709551621\n\nhello"), BAD),
        ("bare CR in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n".to_vec(), BAD),
        ("bare CR ending a line", b"GET / HTTP/1.1\rHost: a\r\n\r\n".to_vec(), BAD),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n".to_vec(), BAD),
        ("space before colon", h("GET / HTTP/1.1\nHost: a\nX-A : b\n\n"), BAD),
        ("TE space before colon", h("POST / HTTP/1.1\nHost: a\nTransfer-Encoding : chunked\n\n0\n\n"), BAD),
        ("HTTP/0.9", h("GET /\n\n"), BAD),
        ("HTTP/1.2", h("GET / HTTP/1.2\nHost: a\n\n"), VERSION),
        ("HTTP/2.0", h("GET / HTTP/2.0\nHost: a\n\n"), VERSION),
        ("HTTP/3.1", h("GET / HTTP/3.1\nHost: a\n\n"), VERSION),
        ("Host missing", h("GET / HTTP/1.1\n\n"), BAD),
        ("Host repeated", h("GET / HTTP/1.1\nHost: a\nHost: b\n\n"), BAD),
        ("Host with space", h("GET / HTTP/1.1\nHost: a b\n\n"), BAD),
        ("Host with userinfo", h("GET / HTTP/1.1\nHost: u@a\n\n"), BAD),
        ("Host empty", h("GET / HTTP/1.1\nHost:\n\n"), BAD),
        ("absolute-form with userinfo", h("GET http://u@a/ HTTP/1.1\nHost: a\n\n"), BAD),
    ]
}

/// Sends `bytes` on a fresh connection: (status, whether limpet closed the connection).
async fn send(limpet: &InProcess, bytes: &[u8]) -> (u16, bool, String) {
    let (resp, closed) = raw(limpet.addr(), bytes, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    (status_of(&text), closed, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_are_refused_closed_and_never_reach_the_backend() {
    let backend = RawBackend::start(RawReply::AfterHeadClose(OK.to_vec())).await;
    let limpet = InProcess::start(&simple_config("round_robin", &[backend.addr], "", ""));
    for (what, bytes, statuses) in head_cases() {
        let (status, closed, text) = send(&limpet, &bytes).await;
        assert!(statuses.contains(&status), "{what}: got {text:?}");
        assert!(closed, "{what}: connection left open after {status}");
    }
    // A valid request afterwards shows the backend was reachable all along.
    let (status, _, _) = send(
        &limpet,
        &h("GET /after HTTP/1.1\nHost: a\nConnection: close\n\n"),
    )
    .await;
    assert_eq!(status, 200);
    let seen = backend.text();
    assert!(
        seen.starts_with("GET /after "),
        "backend received: {seen:?}"
    );
    assert_eq!(
        seen.matches("HTTP/1.1").count(),
        1,
        "backend received: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_get_400_and_never_complete_upstream() {
    let backend = RawBackend::start(RawReply::AfterHeadClose(OK.to_vec())).await;
    let limpet = InProcess::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let cases = [
        ("invalid chunk size", "zz\r\nhello\r\n0\r\n\r\n"),
        (
            "overflowing chunk size",
            "10000000000000005\r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk size with sign", "+5\r\nhello\r\n0\r\n\r\n"),
    ];
    for (what, body) in cases {
        let req =
            format!("POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let (status, closed, text) = send(&limpet, req.as_bytes()).await;
        assert_eq!(status, 400, "{what}: got {text:?}");
        assert!(closed, "{what}: connection left open");
    }
    let seen = backend.text();
    assert!(!seen.contains("hello"), "backend received: {seen:?}");
    assert!(
        !seen.contains("\r\n0\r\n\r\n"),
        "a complete body reached the backend: {seen:?}"
    );
    // The backend is not blamed for the client's body (max_fails = 1 would have marked it down).
    let resp = get(limpet.addr(), "/up").await;
    assert_eq!(resp.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_length_is_the_length_limpet_framed() {
    let backend = RawBackend::start(RawReply::AfterHead(OK.to_vec())).await;
    let limpet = InProcess::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let (status, _, text) = send(
        &limpet,
        &h("POST /cl HTTP/1.1\nHost: a\nConnection: close\nContent-Length: 005\n\nhello"),
    )
    .await;
    assert_eq!(status, 200, "{text:?}");
    let (status, _, text) = send(
        &limpet,
        &h("POST /te HTTP/1.1\nHost: a\nConnection: close\nTransfer-Encoding: Chunked\n\n3\nhel\n2;x=y\nlo\n0\n\n"),
    )
    .await;
    assert_eq!(status, 200, "{text:?}");
    let seen = eventually(Duration::from_secs(5), "both bodies at the backend", || {
        let t = backend.text();
        async move { t.contains("0\r\n\r\n").then_some(t) }
    })
    .await;
    let lower = seen.to_ascii_lowercase();
    let (cl, te) = lower.split_at(lower.find("post /te").expect("second request"));
    assert!(cl.contains("\r\ncontent-length: 5\r\n"), "{cl:?}");
    assert!(!cl.contains("005"), "{cl:?}");
    assert!(cl.ends_with("\r\n\r\nhello"), "{cl:?}");
    assert!(!te.contains("content-length"), "{te:?}");
    assert!(te.contains("\r\ntransfer-encoding: chunked\r\n"), "{te:?}");
    assert!(
        !te.contains("x=y"),
        "chunk extensions are the client's framing: {te:?}"
    );
    let body: String = te
        .split("\r\n\r\n")
        .skip(1)
        .collect::<Vec<_>>()
        .join("\r\n\r\n");
    assert_eq!(dechunk(&body), "hello", "{te:?}");
}

/// The payload of a complete chunked body.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_authority_is_the_host_the_backend_sees() {
    let backend = HttpBackend::start("b").await;
    let limpet = InProcess::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let (status, _, text) = send(
        &limpet,
        &h("GET http://x.example:81/p?q=1 HTTP/1.1\nHost: y.example\nConnection: close\n\n"),
    )
    .await;
    assert_eq!(status, 200, "{text:?}");
    let seen = backend.last().expect("request reached the backend");
    assert_eq!(seen.uri, "/p?q=1");
    let hosts: Vec<_> = seen.headers.get_all("host").iter().collect();
    assert_eq!(hosts, ["x.example:81"]);
    assert_eq!(seen.headers["x-forwarded-host"], "x.example:81");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: X-Hop-Resp, close\r\nX-Hop-Resp: 1\r\n\
Keep-Alive: timeout=5\r\nTrailer: X-T\r\nUpgrade: h2c\r\nProxy-Authenticate: Basic\r\nProxy-Connection: keep-alive\r\n\
TE: trailers\r\nX-End: kept\r\n\r\nok";
    let backend = RawBackend::start(RawReply::AfterHeadClose(reply.to_vec())).await;
    let limpet = InProcess::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let req = h("GET /hop HTTP/1.1\nHost: a\nConnection: close, X-Secret, Host\nX-Secret: s\n\
Keep-Alive: timeout=5\nTE: trailers\nTrailer: X-T\nProxy-Connection: keep-alive\nProxy-Authorization: Basic eA==\n\
Upgrade: h2c\nX-Real-IP: 6.6.6.6\nX-Keep: kept\n\n");
    let (status, _, text) = send(&limpet, &req).await;
    assert_eq!(status, 200, "{text:?}");
    let resp_head = text.to_ascii_lowercase();
    for name in [
        "x-hop-resp",
        "keep-alive",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-connection",
        "\r\nte:",
    ] {
        assert!(!resp_head.contains(name), "response kept {name}: {text:?}");
    }
    assert!(resp_head.contains("x-end: kept"), "{text:?}");
    let seen = backend.text().to_ascii_lowercase();
    for name in [
        "x-secret",
        "keep-alive",
        "\r\nte:",
        "trailer",
        "proxy-",
        "upgrade",
        "6.6.6.6",
    ] {
        assert!(!seen.contains(name), "request kept {name:?}: {seen:?}");
    }
    assert!(
        seen.contains("\r\nhost: a\r\n"),
        "Host is never hop-by-hop: {seen:?}"
    );
    assert!(seen.contains("\r\nx-real-ip: 127.0.0.1\r\n"), "{seen:?}");
    assert!(seen.contains("\r\nx-keep: kept\r\n"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_websocket_upgrade_keeps_its_upgrade_headers() {
    let backend = WsBackend::start().await;
    let limpet = InProcess::start(&simple_config("round_robin", &[backend.addr], "", ""));
    let mut ws = ws_connect(limpet.addr(), "/ws").await;
    use futures_util::{SinkExt, StreamExt};
    ws.send("ping".into()).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert_eq!(echo.unwrap().unwrap().into_text().unwrap(), "ping");
}
