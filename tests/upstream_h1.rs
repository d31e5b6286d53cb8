//! limpet's upstream HTTP/1.1 reader against servers that answer in every way RFC 9112 allows, and some it does
//! not: raw bytes from a scripted server in, what the client receives and what the server saw out.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server that answers each request head it reads with what `answer` returns for it (the head's text), and
/// closes the connection after each answer when `close_after`, or once it has been idle for `idle_close`. It
/// never reads request bodies.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(answer: fn(&str) -> Vec<u8>, close_after: bool) -> Scripted {
        Scripted::start_closing_idle(answer, close_after, Duration::from_secs(3600)).await
    }

    async fn start_closing_idle(
        answer: fn(&str) -> Vec<u8>,
        close_after: bool,
        idle_close: Duration,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (conns, seen) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match tokio::time::timeout(idle_close, s.read(&mut buf)).await {
                                Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return,
                                Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&data[..end + 4]).into_owned();
                        data.drain(..end + 4);
                        seen.lock().unwrap().push(head.clone());
                        if s.write_all(&answer(&head)).await.is_err() || close_after {
                            return;
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            connections,
            heads,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Request heads for `path` the server read.
    fn heads_for(&self, path: &str) -> Vec<String> {
        let line = format!(" {path} HTTP/1.1\r\n");
        self.heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.contains(&line))
            .cloned()
            .collect()
    }
}

/// limpet in front of `server` alone (default timeouts, up to 8 idle connections kept, no health checks: every
/// connection the server sees is one a request needed). Failed answers do not mark it down (`max_fails = 0`),
/// so each request meets the server.
fn limpet_for(server: SocketAddr) -> Limpet {
    let config = servers_config("round_robin", "keepalive = 8", &[(server, "max_fails = 0")]);
    Limpet::start(&config)
}

/// One raw request on a connection of its own: limpet's whole answer.
async fn fetch(limpet: &Limpet, request: &str) -> String {
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut s, Duration::from_secs(10))
        .await
        .expect("a complete response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_answers_are_skipped_and_the_final_one_relayed() {
    let server = Scripted::start(
        |_| {
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                .to_vec()
        },
        false,
    )
    .await;
    let limpet = limpet_for(server.addr);
    let resp = fetch(&limpet, "GET /hints HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nok"), "{resp}");
    assert!(
        !resp.contains("100 Continue") && !resp.contains("Early Hints"),
        "{resp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_have_no_body_and_keep_their_connection() {
    let server = Scripted::start(
        |head| {
            if head.starts_with("HEAD ") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec()
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()
            }
        },
        false,
    )
    .await;
    let limpet = limpet_for(server.addr);
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    s.write_all(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer to HEAD")
            .unwrap();
        assert!(n > 0, "closed after HEAD");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 5\r\n"), "{head}");
    assert!(
        head.ends_with("\r\n\r\n"),
        "a body after a HEAD answer: {head:?}"
    );
    // The same client connection, then the same server connection, carry a GET next.
    s.write_all(b"GET /h HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut s, Duration::from_secs(10))
        .await
        .expect("an answer to GET");
    assert!(resp.ends_with("\r\n\r\nhello"), "{resp}");
    assert_eq!(server.heads_for("/h").len(), 2);
    let conns_for_h = server.connections();
    let again = fetch(&limpet, "GET /h HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(again.ends_with("hello"), "{again}");
    assert_eq!(
        server.connections(),
        conns_for_h,
        "a new connection after HEAD"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_with_trailers_is_relayed_and_its_connection_reused() {
    let server = Scripted::start(
        |_| {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
5;note=x\r\nhello\r\n7\r\n, world\r\n0\r\nX-Checksum: 1\r\n\r\n"
                .to_vec()
        },
        false,
    )
    .await;
    let limpet = limpet_for(server.addr);
    for _ in 0..5 {
        let resp = get(limpet.addr(), "/chunks").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "hello, world");
    }
    // One connection at a time is all sequential requests need.
    let before = server.connections();
    for _ in 0..5 {
        assert_eq!(get(limpet.addr(), "/chunks").await.text(), "hello, world");
    }
    assert_eq!(
        server.connections(),
        before,
        "pooled connections were not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_too_large_folded_or_with_conflicting_lengths_are_502() {
    let server = Scripted::start(
        |head| {
            if head.contains("/huge ") {
                let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..1200 {
                    r.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "a".repeat(60)).as_bytes());
                }
                r.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
                r
            } else if head.contains("/folded ") {
                b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\nok".to_vec()
            } else if head.contains("/lengths ") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk".to_vec()
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
            }
        },
        false,
    )
    .await;
    let limpet = limpet_for(server.addr);
    for path in ["/huge", "/folded", "/lengths"] {
        let resp = fetch(&limpet, &format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n")).await;
        assert!(resp.starts_with("HTTP/1.1 502"), "{path}: {resp}");
        assert!(!resp.contains("ok"), "{path}: {resp}");
    }
    assert_eq!(
        server.heads_for("/lengths").len(),
        1,
        "the server was not asked"
    );
    assert_eq!(get(limpet.addr(), "/fine").await.text(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_after_each_answer_fails_no_request() {
    // No `Connection: close`: limpet finds out when it takes the connection from the pool again.
    let server = Scripted::start(
        |_| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        true,
    )
    .await;
    let limpet = limpet_for(server.addr);
    for i in 0..20 {
        let resp = get(limpet.addr(), "/once").await;
        assert_eq!(resp.status, 200, "request {i}");
        assert_eq!(resp.text(), "ok");
    }
    assert_eq!(server.heads_for("/once").len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_request_body_ends_is_relayed() {
    let server = Scripted::start(
        |_| {
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"
                .to_vec()
        },
        true,
    )
    .await;
    let limpet = limpet_for(server.addr);
    let mut s = TcpStream::connect(limpet.addr()).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nfirst bytes")
        .await
        .unwrap();
    let resp = read_response(&mut s, Duration::from_secs(10))
        .await
        .expect("the server's early answer");
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.ends_with("big!"), "{resp}");
    assert_eq!(get(limpet.addr(), "/after").await.status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_goes_out_chunked() {
    let server = Scripted::start(|_| b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false).await;
    let limpet = limpet_for(server.addr);
    let resp = fetch(
        &limpet,
        "POST /stream HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 204"), "{resp}");
    let heads = server.heads_for("/stream");
    assert_eq!(heads.len(), 1);
    let head = heads[0].to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
}

/// An Engine.IO server's answers, enough for the shipped config's health check (an open packet, then the
/// close of that session), and "ok" to anything else.
fn engineio_node(head: &str) -> Vec<u8> {
    let body = if head.starts_with("GET /socket.io/?EIO=4&transport=polling HTTP") {
        r#"0{"sid":"check-1","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
    } else {
        "ok"
    };
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_closing_idle_connections_sooner_than_limpet_cost_no_request() {
    // Node closes an idle keep-alive connection after 5 s (keepAliveTimeout), far sooner than limpet's pool lets
    // one go: limpet must not lose a request to a connection the server has just closed. Scaled down to 40 ms,
    // with requests spaced so that many meet a connection at or just past that moment.
    let idle = Duration::from_millis(40);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Scripted::start_closing_idle(engineio_node, false, idle).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let limpet = Limpet::start(&shipped_config(&addrs, &[]));
    let gaps = [0u64, 20, 38, 40, 42, 60];
    let mut failed = Vec::new();
    for i in 0..60 {
        tokio::time::sleep(Duration::from_millis(gaps[i % gaps.len()])).await;
        let resp = request(limpet.addr(), "GET", "/page", &[], bytes::Bytes::new()).await;
        match resp {
            Ok(r) if r.status == 200 && r.text() == "ok" => {}
            other => failed.push(format!("request {i}: {:?}", other.map(|r| r.status))),
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
    let served: usize = nodes.iter().map(|n| n.heads_for("/page").len()).sum();
    assert!(served >= 60, "{served} requests reached the servers");
}
