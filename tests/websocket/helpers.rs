//! Helpers for the WebSocket tests: the raw handshake, metrics and client waits, and backends that close first,
//! answer a raw 101 and record the tunnel, die mid-tunnel, or serve both WebSockets and plain requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::{get, Limpet, Ws};

pub const WAIT: Duration = Duration::from_secs(10);

/// The key of RFC 6455's example handshake, and the accept value it calls for.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A WebSocket opening handshake for `path`, with `extra` header lines (each ending in CRLF).
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

/// A backend's valid answer to [`upgrade_request`].
pub fn valid_101() -> String {
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n")
}

/// The value of `name` for `server` in limpet's /metrics, if the series exists.
pub async fn metric(limpet: &Limpet, name: &str, server: SocketAddr) -> Option<f64> {
    let text = get(limpet.admin.expect("admin"), "/metrics").await.text();
    let server = format!("server=\"{server}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&server))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The next message, within WAIT.
pub async fn next_message(ws: &mut Ws) -> Message {
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no message in time")
        .expect("websocket ended")
        .expect("websocket error")
}

/// Waits until the peer ends the WebSocket (close frame, EOF or reset); returns the close frame if one came.
pub async fn wait_closed(ws: &mut Ws) -> Option<CloseFrame<'static>> {
    let mut frame = None;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => panic!("the websocket was not closed in time"),
            Ok(None) | Ok(Some(Err(_))) => return frame,
            Ok(Some(Ok(Message::Close(f)))) => frame = f,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Reads from a raw stream until `needle` has arrived (or panics after WAIT); returns everything read.
pub async fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "closed before {:?} arrived; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "{:?} did not arrive in time",
                String::from_utf8_lossy(needle)
            ),
        }
    }
    got
}

/// A WebSocket server that closes first (after the first message) and reports whether the client answered
/// the close.
pub async fn closing_backend() -> (SocketAddr, oneshot::Receiver<Option<CloseFrame<'static>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        ws.next().await;
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "server done".into(),
        })))
        .await
        .unwrap();
        let mut answer = None;
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                answer = f;
            }
        }
        let _ = tx.send(answer);
    });
    (addr, rx)
}

/// A raw upgrade server: reads a head, answers a valid 101 with `early` right behind it in the same write, then
/// reads until EOF, writes `after_eof` and closes. Reports (head, what came through the tunnel).
pub async fn half_close_backend(
    early: &'static [u8],
    after_eof: &'static [u8],
) -> (SocketAddr, oneshot::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let got = read_until(&mut s, b"\r\n\r\n").await;
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        let mut tunnel = got[end..].to_vec();
        let mut answer = valid_101().into_bytes();
        answer.extend_from_slice(early);
        s.write_all(&answer).await.unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => tunnel.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(after_eof).await;
        let _ = s.shutdown().await;
        let _ = tx.send((head, tunnel));
    });
    (addr, rx)
}

/// A WebSocket server that echoes messages until it gets "die", then dies: a plain close (FIN) or a reset.
pub async fn dying_backend(reset: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(m)) = ws.next().await {
                    if m == Message::Text("die".into()) {
                        break;
                    }
                    let _ = ws.send(m).await;
                }
                if reset {
                    let _ = socket2::SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
                }
            });
        }
    });
    addr
}

/// A backend that serves both: a WebSocket echo on upgrade requests, its name on anything else.
pub struct DualBackend {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub websockets: Arc<AtomicUsize>,
}

impl DualBackend {
    pub async fn start(name: &'static str) -> DualBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let websockets = Arc::new(AtomicUsize::new(0));
        let count = websockets.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| dual(name, count.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        DualBackend {
            addr,
            name,
            websockets,
        }
    }
}

pub async fn dual(
    name: &'static str,
    count: Arc<AtomicUsize>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Ok(Response::new(Full::new(Bytes::from(name))));
    };
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        count.fetch_add(1, Ordering::SeqCst);
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
        while let Some(Ok(m)) = ws.next().await {
            if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                break;
            }
        }
        count.fetch_sub(1, Ordering::SeqCst);
    });
    let resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    Ok(resp)
}
