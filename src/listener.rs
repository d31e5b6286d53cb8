//! Client connections: bind, accept, PROXY protocol, TLS handshake, HTTP/1.1 serving, graceful drain.
//!
//! Each listen address has its own accept task, so a reload can add and remove addresses while the sockets of
//! unchanged ones keep accepting.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn, Instrument};

use crate::app::App;
use crate::proxy::{self, ClientInfo, ConnHold};
use crate::proxy_protocol::{self, ProxyHeader};
use prometheus::IntGauge;

/// Most headers a request may carry; more is 431.
const MAX_HEADERS: usize = 100;
/// Backlog of each listen socket.
const BACKLOG: u32 = 4096;

/// A client connection, plain or TLS.
pub enum ClientStream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tcp(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Binds a listen socket (SO_REUSEADDR, so a restart does not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The accept tasks, one per listen address (keyed by the address as configured).
#[derive(Default)]
pub struct Listeners {
    running: HashMap<SocketAddr, watch::Sender<bool>>,
}

impl Listeners {
    /// Binds every address of `wanted` not yet listening. On any failure nothing new is kept.
    pub fn bind_new(
        &self,
        wanted: impl Iterator<Item = SocketAddr>,
    ) -> Result<Vec<(SocketAddr, TcpListener)>, String> {
        let mut bound = Vec::new();
        for addr in wanted {
            if self.running.contains_key(&addr) {
                continue;
            }
            match bind(addr) {
                Ok(l) => bound.push((addr, l)),
                Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
            }
        }
        Ok(bound)
    }

    /// Starts accept tasks for newly bound sockets and stops those whose address left the config.
    pub fn apply(
        &mut self,
        app: &Arc<App>,
        bound: Vec<(SocketAddr, TcpListener)>,
        keep: &dyn Fn(&SocketAddr) -> bool,
    ) {
        self.running.retain(|addr, stop| {
            let keep = keep(addr);
            if !keep {
                info!(listen = %addr, "listener removed: no longer accepting");
                let _ = stop.send(true);
            }
            keep
        });
        for (addr, listener) in bound {
            let (tx, rx) = watch::channel(false);
            let local = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            info!(listen = %addr, local = %local, "listening");
            tokio::spawn(accept_loop(app.clone(), addr, listener, rx));
            self.running.insert(addr, tx);
        }
    }

    /// Stops every accept loop.
    pub fn stop_all(&mut self) {
        for (_, stop) in self.running.drain() {
            let _ = stop.send(true);
        }
    }
}

async fn accept_loop(
    app: Arc<App>,
    key: SocketAddr,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(permit) = app.admit(key) else {
                    debug!(%peer, "max_connections reached: connection closed");
                    continue;
                };
                let span = tracing::debug_span!("conn", %peer);
                app.tracker
                    .spawn(serve(app.clone(), key, stream, peer, permit).instrument(span));
            }
            Err(e) => accept_error(e).await,
        }
    }
}

/// Accept errors never stop the server: per-connection ones are skipped, resource exhaustion waits a moment.
async fn accept_error(e: io::Error) {
    match e.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => {}
        _ => {
            warn!(error = %e, "accept failed; pausing");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn serve(
    app: Arc<App>,
    key: SocketAddr,
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: Permit,
) {
    let snap = app.snapshot();
    let Some(listener) = snap.listeners.get(&key).cloned() else {
        return;
    };
    drop(snap);
    let block = listener.block();
    let _ = stream.set_nodelay(true);
    let peer = if block.proxy_protocol {
        match proxy_protocol::read_header(&mut stream, block.client_header_timeout).await {
            Ok(ProxyHeader::Proxied { source, .. }) => source,
            Ok(ProxyHeader::Local) => peer,
            Err(e) => {
                debug!(error = %e, "bad PROXY protocol header: connection closed");
                return;
            }
        }
    } else {
        peer
    };
    let (io, https) = match &listener.tls {
        None => (ClientStream::Tcp(stream), false),
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            match tokio::time::timeout(block.client_header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => (ClientStream::Tls(Box::new(s)), true),
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!("TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let client = ClientInfo {
        peer,
        listener: key,
        https,
        hold: Arc::new(ConnHold {
            tracker: app.tracker.clone(),
            _permit: permit,
        }),
    };
    serve_http(app, block, io, client).await;
}

async fn serve_http(
    app: Arc<App>,
    block: &crate::config::ServerBlock,
    io: ClientStream,
    client: ClientInfo,
) {
    let service_app = app.clone();
    let service = service_fn(move |req| {
        let app = service_app.clone();
        let client = client.clone();
        async move {
            let out = proxy::handle(app.snapshot(), &client, req).await;
            app.access_log(&client, &out);
            Ok::<_, Infallible>(out.response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(block.client_header_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(block.max_header_bytes.max(8192))
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stop = app.stopping();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        r = conn.as_mut() => log_conn_end(r),
        _ = stopped => {
            conn.as_mut().graceful_shutdown();
            log_conn_end(conn.await);
        }
    }
}

fn log_conn_end(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        debug!(error = %e, "client connection ended with an error");
    }
}

/// Counts a live client connection while held: against `max_connections` and in the per-listener gauge.
pub struct Permit {
    count: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl Permit {
    /// Takes a place among at most `max` connections, or None when they are all taken.
    pub fn take(count: &Arc<AtomicUsize>, max: usize, gauge: IntGauge) -> Option<Permit> {
        if count.fetch_add(1, Relaxed) >= max {
            count.fetch_sub(1, Relaxed);
            return None;
        }
        gauge.inc();
        Some(Permit {
            count: count.clone(),
            gauge,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Relaxed);
        self.gauge.dec();
    }
}
