//! Backend faults: refused, reset, truncated, silent, malformed. The client gets 502/504 while nothing was sent
//! yet, a visibly truncated response (closed before its declared end) once the head was sent, never one that
//! looks complete; the faulty server is marked down (max_fails = 1) and other clients are unaffected.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::backend::RawReply;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Location "/" to a healthy upstream `good`, "/bad" to `bad` (max_fails = 1 over 60 s, read_timeout 1 s).
fn config(good: SocketAddr, bad: SocketAddr) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n\n\
[[server.location]]\npath = \"/\"\nproxy_pass = \"good\"\n\n\
[[server.location]]\npath = \"/bad\"\nproxy_pass = \"bad\"\nread_timeout = \"1s\"\nconnect_timeout = \"1s\"\n\n\
[upstream.good]\nbalance = \"round_robin\"\n[[upstream.good.server]]\naddr = \"{good}\"\n\n\
[upstream.bad]\nbalance = \"round_robin\"\nretries = 0\n[[upstream.bad.server]]\naddr = \"{bad}\"\nmax_fails = 1\nfail_timeout = \"60s\"\n"
    )
}

/// A backend that reads a request head, writes `bytes`, then resets the connection (RST, not FIN).
async fn resetting_backend(bytes: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(bytes).await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            });
        }
    });
    addr
}

/// An address nothing listens on.
async fn refusing_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

struct Setup {
    limpet: Limpet,
    _good: HttpBackend,
    bad: SocketAddr,
}

async fn setup(bad: SocketAddr) -> Setup {
    let good = HttpBackend::start("good").await;
    let limpet = Limpet::start(&config(good.addr, bad));
    Setup {
        limpet,
        _good: good,
        bad,
    }
}

impl Setup {
    /// A raw connection to limpet with `GET /bad` sent on it.
    async fn send_bad(&self) -> TcpStream {
        let mut s = TcpStream::connect(self.limpet.addr()).await.unwrap();
        s.write_all(b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        s
    }

    /// `GET /bad` on a raw connection: limpet's complete answer.
    async fn fetch_bad(&self) -> String {
        read_response(&mut self.send_bad().await, Duration::from_secs(10))
            .await
            .expect("a complete response")
    }

    /// `GET /bad` on a raw connection: everything received until the connection closed, and whether it did.
    async fn fetch_bad_until_close(&self) -> (Vec<u8>, bool) {
        read_until_close(&mut self.send_bad().await, Duration::from_secs(10)).await
    }

    /// The faulty server is marked down, and the healthy upstream still answers.
    async fn assert_blamed_and_others_fine(&self) {
        let admin = self.limpet.admin.expect("admin");
        let bad = self.bad.to_string();
        eventually(
            Duration::from_secs(5),
            "the faulty server marked down",
            || async {
                let status: serde_json::Value =
                    serde_json::from_slice(&get(admin, "/status").await.body).ok()?;
                let state = status["upstreams"]["bad"]["servers"][0]["state"]
                    .as_str()?
                    .to_string();
                assert_eq!(
                    status["upstreams"]["bad"]["servers"][0]["addr"],
                    bad.as_str()
                );
                (state == "down").then_some(())
            },
        )
        .await;
        let resp = get(self.limpet.addr(), "/fine").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "good");
    }
}

/// True when `bytes` hold a whole response: head, then exactly Content-Length bytes or a chunked body ending
/// in its last chunk.
fn looks_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let (head, body) = (&text[..end], &text[end + 4..]);
    if let Some(cl) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        return body.len() == cl.trim().parse::<usize>().unwrap();
    }
    head.contains("transfer-encoding: chunked") && body.ends_with("0\r\n\r\n")
}

/// A bad server that answers a request head with `reply`, then closes.
async fn replying(reply: &[u8]) -> RawBackend {
    RawBackend::start(RawReply::AfterHeadClose(reply.to_vec())).await
}

/// Limpet in front of `bad` answers `GET /bad` with `status` and blames the server: limpet's answer.
async fn assert_fault_status(bad: SocketAddr, status: u16) -> String {
    let s = setup(bad).await;
    let resp = s.fetch_bad().await;
    assert_eq!(status_of(&resp), status, "{resp}");
    s.assert_blamed_and_others_fine().await;
    resp
}

/// Limpet in front of `bad` relays a 200 head, then closes before the response is complete, and blames the
/// server: what the client received, lowercased.
async fn assert_visibly_truncated(bad: SocketAddr) -> String {
    let s = setup(bad).await;
    let (bytes, closed) = s.fetch_bad_until_close().await;
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(closed);
    assert!(bytes.starts_with(b"HTTP/1.1 200"), "{text:?}");
    assert!(!looks_complete(&bytes), "{text:?}");
    s.assert_blamed_and_others_fine().await;
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_502() {
    assert_fault_status(refusing_addr().await, 502).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_the_head_is_502() {
    let bad = RawBackend::start(RawReply::ResetAfterHead).await;
    assert_fault_status(bad.addr, 502).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_is_504() {
    let bad = RawBackend::start(RawReply::Silent).await;
    assert_fault_status(bad.addr, 504).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_response_head_is_502() {
    let bad = replying(b"HTTP/1.1 2OO OK\r\n\r\n").await;
    assert_fault_status(bad.addr, 502).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_content_length_and_transfer_encoding_is_502() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let bad = replying(reply).await;
    let resp = assert_fault_status(bad.addr, 502).await;
    assert!(!resp.contains("hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_body_is_a_visibly_truncated_response() {
    let bad = resetting_backend(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello").await;
    assert_visibly_truncated(bad).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_chunked_body_is_a_visibly_truncated_response() {
    let reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nhel";
    let bad = replying(reply).await;
    assert_visibly_truncated(bad.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_short_of_its_content_length_is_a_visibly_truncated_response() {
    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
    let bad = replying(reply).await;
    let text = assert_visibly_truncated(bad.addr).await;
    assert!(text.contains("content-length: 10\r\n"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_body_is_relayed_whole_and_framed() {
    let reply = b"HTTP/1.1 200 OK\r\nx-kind: close-delimited\r\n\r\nhello world";
    let bad = replying(reply).await;
    let s = setup(bad.addr).await;
    for _ in 0..2 {
        let resp = s.fetch_bad().await;
        assert_eq!(status_of(&resp), 200, "{resp}");
        assert!(looks_complete(resp.as_bytes()), "{resp:?}");
        assert!(resp.contains("hello world"), "{resp:?}");
    }
    // Not a fault: the server stays up.
    let status = get(s.limpet.admin.unwrap(), "/status").await.text();
    assert!(!status.contains("\"down\""), "{status}");
}
