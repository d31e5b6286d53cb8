//! A raw Engine.IO v4 polling client over keep-alive HTTP/1.1 connections from a chosen loopback source
//! address: what the sticky tests need to see exactly which request goes where.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use super::{percent_encode, raw, read_response, status_of};

const WAIT: Duration = Duration::from_secs(20);

/// limpet's answer to a request for a session whose server is gone.
pub const SESSION_UNKNOWN: &str = r#"{"code":1,"message":"Session ID unknown"}"#;

/// Parses JSON text, panicking with the text when it is not JSON.
pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}"))
}

pub const POLL: &str = "/socket.io/?EIO=4&transport=polling";

pub fn poll_path(sid: &str) -> String {
    format!("{POLL}&sid={}", percent_encode(sid))
}

/// A response read whole from a raw connection.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// Sends one request and reads its response: over one connection, or over several taken in turn.
#[allow(async_fn_in_trait)]
pub trait Exchange {
    /// Sends `method target` with extra `headers` (each ending in CRLF) and a text body; panics without a reply.
    async fn send(&mut self, method: &str, target: &str, headers: &str, body: &str) -> Reply;
}

/// One HTTP/1.1 connection to limpet from a chosen loopback source address, kept alive across requests.
pub struct Conn {
    stream: TcpStream,
    /// Requests sent so far.
    pub requests: usize,
}

impl Conn {
    pub async fn open(to: SocketAddr, from: [u8; 4]) -> Conn {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        let stream = tokio::time::timeout(WAIT, socket.connect(to))
            .await
            .unwrap()
            .unwrap();
        Conn {
            stream,
            requests: 0,
        }
    }
}

impl Exchange for Conn {
    /// Sends one request and reads its response; panics if the connection closes first.
    async fn send(&mut self, method: &str, target: &str, headers: &str, body: &str) -> Reply {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: limpet\r\n{headers}Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await.unwrap();
        self.requests += 1;
        let raw = read_response(&mut self.stream, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no response to {method} {target} (request {})",
                    self.requests
                )
            });
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let head = head.to_string();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Reply {
            status: status_of(&raw),
            head,
            body,
        }
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// A WebSocket upgrade request on a new connection: (everything read, whether limpet closed).
pub async fn upgrade_request(to: SocketAddr, target: &str) -> (String, bool) {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: limpet\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let (bytes, closed) = raw(to, request.as_bytes(), Duration::from_secs(10)).await;
    (String::from_utf8_lossy(&bytes).into_owned(), closed)
}

/// An Engine.IO v4 handshake: the new session's sid.
pub async fn open(conn: &mut impl Exchange) -> String {
    let r = conn.send("GET", POLL, "", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let packet = r
        .body
        .strip_prefix('0')
        .unwrap_or_else(|| panic!("open packet {:?}", r.body));
    json(packet)["sid"].as_str().expect("sid").to_string()
}

pub async fn post(conn: &mut impl Exchange, sid: &str, packet: &str) {
    let r = conn.send("POST", &poll_path(sid), "", packet).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ok"),
        "POST {packet} for {sid}: {r:?}"
    );
}

/// Polls until a packet starting with `prefix` arrives (answering pings); returns the rest of it.
pub async fn read_packet(conn: &mut impl Exchange, sid: &str, prefix: &str) -> String {
    for _ in 0..4 {
        let r = conn.send("GET", &poll_path(sid), "", "").await;
        assert_eq!(r.status, 200, "GET for {sid}: {r:?}");
        let mut found = None;
        for p in r.body.split('\x1e') {
            if p == "2" {
                post(conn, sid, "3").await;
            } else if let Some(rest) = p.strip_prefix(prefix).filter(|_| found.is_none()) {
                found = Some(rest.to_string());
            }
        }
        if let Some(rest) = found {
            return rest;
        }
    }
    panic!("no {prefix} packet for {sid}");
}

/// Connects the default namespace.
pub async fn connect_ns(conn: &mut impl Exchange, sid: &str) {
    post(conn, sid, "40").await;
    read_packet(conn, sid, "40").await;
}

/// The node named in a whoami ack (`[{...}]`), checked to be about this session.
pub fn ack_node(ack: &str, sid: &str) -> String {
    let answer = &json(ack)[0];
    assert_eq!(answer["sid"], sid, "{ack}");
    answer["node"].as_str().expect("node").to_string()
}

/// One acknowledged whoami (ack id `n`): the node that answered.
pub async fn whoami(conn: &mut impl Exchange, sid: &str, n: u32) -> String {
    post(conn, sid, &format!("42{n}[\"whoami\"]")).await;
    ack_node(&read_packet(conn, sid, &format!("43{n}")).await, sid)
}

/// A new session from `from`, connected and asked whoami: (sid, node).
pub async fn session(to: SocketAddr, from: [u8; 4]) -> (String, String) {
    let mut conn = Conn::open(to, from).await;
    let sid = open(&mut conn).await;
    connect_ns(&mut conn, &sid).await;
    let node = whoami(&mut conn, &sid, 1).await;
    (sid, node)
}
