//! Real backends on 127.0.0.1:0: an HTTP server that says who it is, a WebSocket echo server, and a raw TCP
//! server that records every byte it receives and answers with scripted bytes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What an HTTP backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

/// An HTTP/1.1 backend. `GET /anything` → 200 with its name as body (header `x-backend: name`).
/// `/status/N` → status N; `/slow/MS` waits MS ms first; `/big/N` → N bytes; `/echo` echoes the body;
/// `/hang` never answers.
pub struct HttpBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub hits: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl HttpBackend {
    pub async fn start(name: &str) -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        HttpBackend::serve(name, listener)
    }

    /// Starts again on a given address (after `stop`), retrying the bind for up to 5 s.
    pub async fn start_on(name: &str, addr: SocketAddr) -> HttpBackend {
        for _ in 0..250 {
            if let Ok(l) = TcpListener::bind(addr).await {
                return HttpBackend::serve(name, l);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot bind {addr} again");
    }

    fn serve(name: &str, listener: TcpListener) -> HttpBackend {
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let name2 = name.to_string();
        let (seen2, hits2) = (seen.clone(), hits.clone());
        tokio::spawn(async move {
            let mut stop_rx = stop_rx;
            loop {
                let (stream, peer) = tokio::select! {
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                let (name, seen, hits) = (name2.clone(), seen2.clone(), hits2.clone());
                let mut conn_stop = stop_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        handle(name.clone(), seen.clone(), hits.clone(), peer, req)
                    });
                    let conn = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stop.changed() => {}
                    }
                });
            }
        });
        HttpBackend {
            name: name.to_string(),
            addr,
            seen,
            hits,
            stop,
        }
    }

    /// Closes the listener and every open connection: the port refuses from now on.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }
}

/// One HTTP backend per name.
pub async fn backends(names: &[&str]) -> Vec<HttpBackend> {
    let mut out = Vec::new();
    for n in names {
        out.push(HttpBackend::start(n).await);
    }
    out
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn handle(
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    hits: Arc<AtomicUsize>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
        peer,
    });
    let path = parts.uri.path().to_string();
    let mut status = StatusCode::OK;
    let mut out = Bytes::from(name.clone());
    if let Some(code) = path.strip_prefix("/status/") {
        status = StatusCode::from_u16(code.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    } else if let Some(n) = path.strip_prefix("/big/") {
        out = Bytes::from(vec![b'x'; n.parse().unwrap_or(0)]);
    } else if path == "/echo" {
        out = body;
    } else if path == "/hang" {
        std::future::pending::<()>().await;
    }
    let mut resp = Response::new(Full::new(out));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "x-backend",
        http::HeaderValue::from_str(&name).expect("name"),
    );
    Ok(resp)
}

/// A WebSocket echo server (tokio-tungstenite): echoes text and binary messages; answers close with close.
pub struct WsBackend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl WsBackend {
    pub async fn start() -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, mut stop_rx) = watch::channel(false);
        let acc = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                let acc = acc.clone();
                let mut conn_stop = stop_rx.clone();
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    acc.fetch_add(1, Ordering::SeqCst);
                    let (mut tx, mut rx) = ws.split();
                    loop {
                        let msg = tokio::select! {
                            m = rx.next() => m,
                            _ = conn_stop.changed() => return,
                        };
                        match msg {
                            Some(Ok(m)) if m.is_text() || m.is_binary() => {
                                if tx.send(m).await.is_err() {
                                    return;
                                }
                            }
                            Some(Ok(m)) if m.is_close() => {
                                let _ = tx.close().await;
                                return;
                            }
                            Some(Ok(_)) => {}
                            _ => return,
                        }
                    }
                });
            }
        });
        WsBackend {
            addr,
            accepted,
            stop,
        }
    }

    /// Closes the listener and drops every open WebSocket (TCP close, no close frame).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a raw backend answers each connection.
#[derive(Clone)]
pub enum RawReply {
    /// Waits until the request head (up to CRLFCRLF) arrived, writes these bytes, then keeps reading and
    /// recording until the peer closes.
    AfterHead(Vec<u8>),
    /// Like AfterHead, then closes the connection.
    AfterHeadClose(Vec<u8>),
    /// Reads and records, never answers.
    Silent,
    /// Closes (RST) as soon as the head arrived.
    ResetAfterHead,
}

/// A raw TCP backend that records every byte it receives, over all connections.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<u8>>>,
    pub connections: Arc<AtomicUsize>,
    /// Connections open now (closed ones, by either side, no longer count).
    pub open: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl RawBackend {
    pub async fn start(reply: RawReply) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (stop, mut stop_rx) = watch::channel(false);
        let (rec, conns, open2) = (received.clone(), connections.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (rec, reply) = (rec.clone(), reply.clone());
                let mut conn_stop = stop_rx.clone();
                let open = OpenGuard::new(&open2);
                tokio::spawn(async move {
                    let _open = open;
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut mine = Vec::new();
                    let mut answered = false;
                    loop {
                        let n = tokio::select! {
                            r = stream.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                            _ = conn_stop.changed() => return,
                        };
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                        mine.extend_from_slice(&buf[..n]);
                        let head_done = mine.windows(4).any(|w| w == b"\r\n\r\n");
                        if answered || !head_done {
                            continue;
                        }
                        answered = true;
                        match &reply {
                            RawReply::AfterHead(bytes) => {
                                let _ = stream.write_all(bytes).await;
                            }
                            RawReply::AfterHeadClose(bytes) => {
                                let _ = stream.write_all(bytes).await;
                                let _ = stream.shutdown().await;
                                return;
                            }
                            RawReply::Silent => {}
                            RawReply::ResetAfterHead => {
                                let _ = socket2::SockRef::from(&stream)
                                    .set_linger(Some(Duration::ZERO));
                                return;
                            }
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            received,
            connections,
            open,
            stop,
        }
    }

    /// Connections open now.
    pub fn open_now(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Everything received so far, as lossy text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts an open connection until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(count: &Arc<AtomicUsize>) -> OpenGuard {
        count.fetch_add(1, Ordering::SeqCst);
        OpenGuard(count.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
