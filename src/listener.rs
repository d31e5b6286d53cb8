//! Client connections: bind, accept, PROXY protocol, TLS handshake, HTTP/1.1 serving, graceful drain.
//!
//! Each listen address has its own accept task, so a reload can add and remove addresses while the sockets of
//! unchanged ones keep accepting.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn, Instrument};

use crate::app::App;
use crate::config::{canonical_ip, Cidr};
use crate::conn::deadline::after;
use crate::conn::slots::{Admitted, Clock, PerIp, Permit, Reuse};
use crate::proxy::body::Held;
use crate::proxy::{self, ClientInfo, ConnHold, HeadCounts, HeadScan};
use crate::proxy_protocol::{self, ProxyHeader};
use crate::warn_limit::WarnLimit;
use prometheus::{IntCounter, IntGauge};

/// Warnings at `max_connections`, at most one a second.
static AT_THE_CAP: WarnLimit = WarnLimit::new();

/// Backlog of each listen socket.
const BACKLOG: u32 = 4096;

/// A client connection, plain or TLS.
pub type ClientStream = crate::stream::MaybeTls<TlsStream<TcpStream>>;

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
    /// Binds every address of `wanted` not yet listening, once each (blocks sharing an address share its socket).
    /// On any failure nothing new is kept.
    pub fn bind_new(
        &self,
        wanted: impl Iterator<Item = SocketAddr>,
    ) -> Result<Vec<(SocketAddr, TcpListener)>, String> {
        let mut bound: Vec<(SocketAddr, TcpListener)> = Vec::new();
        for addr in wanted {
            if self.running.contains_key(&addr) || bound.iter().any(|(a, _)| *a == addr) {
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
    let label = key.to_string();
    let gauge = crate::metrics::metrics()
        .client_connections
        .with_label_values(&[&label]);
    let closed = Arc::new(Closed::new(&label));
    let per_ip = Arc::new(PerIp::default());
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some((permit, reuse)) = take_slot(&app, &gauge, &closed) else {
                    continue;
                };
                let span = tracing::debug_span!("conn", %peer);
                let conn = Accepted {
                    key,
                    stream,
                    peer,
                    permit,
                    reuse,
                    per_ip: per_ip.clone(),
                    closed: closed.clone(),
                };
                app.tracker.spawn(serve(app.clone(), conn).instrument(span));
            }
            Err(e) => accept_error(e).await,
        }
    }
}

/// A slot under `max_connections` for a new connection (counted in `gauge`), or None when every slot is held by a
/// connection that is not idle. Idle connections closed to make room, and refusals, are counted and logged.
fn take_slot(app: &App, gauge: &IntGauge, closed: &Closed) -> Option<(Permit, Arc<Reuse>)> {
    match app.admit(gauge) {
        Admitted::Slot {
            permit,
            reuse,
            reused,
        } => {
            if reused > 0 {
                closed.idle_reused.inc_by(reused as u64);
                if let Some(held_back) = AT_THE_CAP.allow() {
                    warn!(
                        closed = reused,
                        held_back,
                        "max_connections reached: closing idle keep-alive connections to make room"
                    );
                }
            }
            Some((permit, reuse))
        }
        Admitted::Full => {
            closed.max_connections.inc();
            if let Some(held_back) = AT_THE_CAP.allow() {
                warn!(
                    held_back,
                    "max_connections reached and no connection idle: new connection closed"
                );
            }
            None
        }
    }
}

/// Counters of connections a listener closed to protect itself, by reason.
struct Closed {
    max_connections: IntCounter,
    max_connections_per_ip: IntCounter,
    idle_reused: IntCounter,
    proxy_protocol: IntCounter,
}

impl Closed {
    fn new(listener: &str) -> Closed {
        let vec = &crate::metrics::metrics().client_connections_closed;
        let reason = |r: &str| vec.with_label_values(&[listener, r]);
        Closed {
            max_connections: reason("max_connections"),
            max_connections_per_ip: reason("max_connections_per_ip"),
            idle_reused: reason("idle_reused"),
            proxy_protocol: reason("proxy_protocol"),
        }
    }
}

/// A connection just accepted, with its slot.
struct Accepted {
    key: SocketAddr,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Permit,
    reuse: Arc<Reuse>,
    per_ip: Arc<PerIp>,
    closed: Arc<Closed>,
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

async fn serve(app: Arc<App>, conn: Accepted) {
    // The whole preamble (PROXY header, TLS handshake, first request head) has one client_header_timeout.
    let started = Instant::now();
    let Accepted {
        key,
        mut stream,
        peer,
        permit,
        reuse,
        per_ip,
        closed,
    } = conn;
    let snap = app.snapshot();
    let Some(listener) = snap.listeners.get(&key).cloned() else {
        return;
    };
    drop(snap);
    // Only settings are kept: a long-lived connection must not pin this snapshot (its upstreams and their pools)
    // past a reload. Each request reads the snapshot of its moment.
    let settings = ConnSettings::of(listener.block());
    let tls = listener.tls.clone();
    drop(listener);
    let _ = stream.set_nodelay(true);
    let deadline = after(started, settings.header_timeout);
    let Some(peer) = client_address(&mut stream, peer, &settings, deadline).await else {
        closed.proxy_protocol.inc();
        return;
    };
    let per_ip = match settings.max_connections_per_ip {
        0 => None,
        max => match per_ip.take(canonical_ip(peer.ip()), max) {
            Some(p) => Some(p),
            None => {
                closed.max_connections_per_ip.inc();
                debug!(client = %peer, "max_connections_per_ip reached: connection closed");
                return;
            }
        },
    };
    let (io, https) = match tls {
        None => (ClientStream::Tcp(stream), false),
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
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
    let reuse = (reuse, permit.clock());
    let client = ClientInfo {
        peer,
        peer_text: proxy::headers::ip_value(peer.ip()),
        listener: key,
        https,
        hold: Arc::new(ConnHold {
            tracker: app.tracker.clone(),
            permit,
            _per_ip: per_ip,
        }),
    };
    serve_http(app, settings, io, client, started, reuse).await;
}

/// The client's address: the peer's, or the source a PROXY header gives when the listener expects one from this
/// peer. None when the connection must close: a bad or missing header from a peer that must send one, or a
/// header from a peer that may not.
async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    settings: &ConnSettings,
    deadline: Instant,
) -> Option<SocketAddr> {
    if !settings.proxy_protocol {
        return Some(peer);
    }
    let from = &settings.proxy_protocol_from;
    if !from.is_empty() && !from.iter().any(|c| c.contains(peer.ip())) {
        if sends_proxy_header(stream, deadline).await {
            debug!("PROXY header from a peer outside proxy_protocol_from: connection closed");
            return None;
        }
        return Some(peer);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    match proxy_protocol::read_header(stream, left).await {
        Ok(ProxyHeader::Proxied { source, .. }) => Some(source),
        Ok(ProxyHeader::Local) => Some(peer),
        Err(e) => {
            debug!(error = %e, "bad PROXY protocol header: connection closed");
            None
        }
    }
}

/// Do a peer's first bytes start a PROXY header? Looked at without taking them; waits (up to `deadline`) only
/// while the bytes so far could still be one. What is not one is left for TLS or HTTP to judge.
async fn sends_proxy_header(stream: &TcpStream, deadline: Instant) -> bool {
    /// A peer that stops inside a signature's first bytes is looked at again after this.
    const RECHECK: Duration = Duration::from_millis(20);
    let mut buf = [0u8; 12];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        match proxy_protocol::starts_header(&buf[..n]) {
            Some(header) => return header,
            None if Instant::now() >= deadline => return false,
            // The same bytes would be peeked again at once: give the peer a moment to send more.
            None => {
                tokio::time::sleep(RECHECK.min(deadline.saturating_duration_since(Instant::now())))
                    .await
            }
        }
    }
}

/// The connection-level settings of a listener, copied so a connection holds no snapshot.
#[derive(Clone)]
struct ConnSettings {
    proxy_protocol: bool,
    proxy_protocol_from: Vec<Cidr>,
    max_connections_per_ip: usize,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    max_header_bytes: usize,
}

impl ConnSettings {
    fn of(block: &crate::config::ServerBlock) -> ConnSettings {
        ConnSettings {
            proxy_protocol: block.proxy_protocol,
            proxy_protocol_from: block.proxy_protocol_from.clone(),
            max_connections_per_ip: block.max_connections_per_ip,
            header_timeout: block.client_header_timeout,
            keepalive_timeout: block.keepalive_timeout,
            max_header_bytes: block.max_header_bytes,
        }
    }
}

async fn serve_http(
    app: Arc<App>,
    settings: ConnSettings,
    io: ClientStream,
    client: ClientInfo,
    started: Instant,
    (reuse, clock): (Arc<Reuse>, Clock),
) {
    let service_app = app.clone();
    // Waiting for its first request, a connection is as idle as between two: reusable at the cap (as nginx).
    reuse.idle(&clock);
    let phase = Arc::new(ConnPhase {
        reuse,
        clock,
        requests: AtomicU64::new(0),
        busy: AtomicBool::new(false),
        tunnel: AtomicBool::new(false),
        waker: AtomicWaker::new(),
        head: AtomicU64::new(0),
    });
    let io = IdleIo::new(io, phase.clone(), &settings, started);
    let client = Arc::new(client);
    let service = service_fn(move |req| {
        let (busy, head) = Busy::new(&phase);
        let app = service_app.clone();
        let client = client.clone();
        async move {
            let out = proxy::handle(app.snapshot(), &client, req, head).await;
            let resp = app.access_log(&client, out);
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                busy.0.tunnel.store(true, Relaxed);
                client.hold.permit.not_reusable();
            }
            Ok::<_, Infallible>(resp.map(|body| Held::new(body, busy)))
        }
    });
    let mut builder = http1::Builder::new();
    // Header, keep-alive and send deadlines are IdleIo's; hyper's header timer would count keep-alive idle time.
    // hyper's default of 100 headers (more is 431) is kept: setting it moves header parsing to the heap.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_header_size(settings.max_header_bytes)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(!settings.keepalive_timeout.is_zero());
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

/// What a connection's service tells its [`IdleIo`]: a request is being served, or the connection has become a
/// tunnel (which keeps its own idle timeout).
struct ConnPhase {
    /// Idle between requests (reusable at the connection cap), or picked to close.
    reuse: Arc<Reuse>,
    clock: Clock,
    requests: AtomicU64,
    busy: AtomicBool,
    tunnel: AtomicBool,
    /// The connection task, woken when a request ends so that a read left waiting meanwhile gets its deadline.
    waker: AtomicWaker,
    /// The framing lines of a head seen whole: (its request number, from 1) << 24 | padded << 16 | te << 8 | cl.
    head: AtomicU64,
}

impl ConnPhase {
    /// The counts of request number `n`'s head, when IdleIo saw all of it.
    fn head_counts(&self, n: u64) -> Option<HeadCounts> {
        let packed = self.head.load(Relaxed);
        (packed >> 24 == n).then_some(HeadCounts {
            content_length: packed as u8,
            transfer_encoding: (packed >> 8) as u8,
            padded_coding: packed & 1 << 16 != 0,
        })
    }
}

/// A request in progress, from its parsed head until hyper drops its response body (hyper serves one request of
/// a connection at a time).
struct Busy(Arc<ConnPhase>);

impl Busy {
    /// Marks the next request in progress; with it, the framing counts of its head when they are known.
    fn new(phase: &Arc<ConnPhase>) -> (Busy, Option<HeadCounts>) {
        let n = phase.requests.fetch_add(1, Relaxed) + 1;
        phase.busy.store(true, Relaxed);
        (Busy(phase.clone()), phase.head_counts(n))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if !self.0.tunnel.load(Relaxed) {
            self.0.reuse.idle(&self.0.clock);
        }
        self.0.busy.store(false, Relaxed);
        self.0.waker.wake();
    }
}

/// Client IO with the connection's deadlines, one timer per connection, re-armed only when it fires early:
/// - the first request head must be complete within `client_header_timeout` of the connection's start; a later
///   one must start within `keepalive_timeout` of the last byte moved (else the connection closes quietly) and be
///   complete within `client_header_timeout` of its first byte;
/// - a write that makes no progress for `client_header_timeout` (a client that does not read) ends it;
/// - no read deadline while a request is served (its body has its own), none at all once it is a tunnel.
struct IdleIo {
    inner: ClientStream,
    phase: Arc<ConnPhase>,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    seen_requests: u64,
    /// When the first byte of the head being read arrived (the connection's start for the first head).
    head_started: Option<Instant>,
    /// The last byte moved, either way.
    last: Instant,
    /// Counting the framing lines of the head being read, while it is.
    scan: Option<HeadScan>,
    read_waiting: bool,
    write_waiting: bool,
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
}

/// Takes a client connection back from hyper once it has upgraded: the stream and the bytes hyper had read past
/// the request head. A tunnel keeps its own idle timeout, so the connection's deadlines are left behind.
pub fn take_upgraded(
    up: hyper::upgrade::Upgraded,
) -> Result<(ClientStream, bytes::Bytes), hyper::upgrade::Upgraded> {
    up.downcast::<TokioIo<IdleIo>>()
        .map(|parts| (parts.io.into_inner().inner, parts.read_buf))
}

impl IdleIo {
    /// `started`: when the connection was accepted, the start of its first head's deadline.
    fn new(
        inner: ClientStream,
        phase: Arc<ConnPhase>,
        settings: &ConnSettings,
        started: Instant,
    ) -> IdleIo {
        let now = started;
        let armed = after(now, settings.header_timeout);
        IdleIo {
            inner,
            phase,
            header_timeout: settings.header_timeout,
            keepalive_timeout: settings.keepalive_timeout,
            seen_requests: 0,
            head_started: Some(now),
            last: now,
            scan: Some(HeadScan::default()),
            read_waiting: false,
            write_waiting: false,
            sleep: Box::pin(tokio::time::sleep_until(armed)),
            armed,
        }
    }

    /// Forgets the head start once the service has taken the request it belonged to.
    fn sync(&mut self) {
        let requests = self.phase.requests.load(Relaxed);
        if requests != self.seen_requests {
            self.seen_requests = requests;
            self.head_started = None;
            self.scan = None;
        }
    }

    /// Bytes moved (`read`: these came in).
    fn progressed(&mut self, read: Option<&[u8]>) {
        self.sync();
        self.last = Instant::now();
        let Some(bytes) = read else { return };
        if self.phase.busy.load(Relaxed) {
            return;
        }
        if self.head_started.is_none() {
            self.head_started = Some(self.last);
            self.scan = Some(HeadScan::default());
        }
        self.phase.reuse.busy();
        if let Some(counts) = self.scan.as_mut().and_then(|s| s.feed(bytes)) {
            let n = self.seen_requests + 1;
            let packed = n << 24
                | u64::from(counts.padded_coding) << 16
                | u64::from(counts.transfer_encoding) << 8
                | u64::from(counts.content_length);
            self.phase.head.store(packed, Relaxed);
            self.scan = None;
        }
    }

    fn deadline(&mut self) -> Option<Instant> {
        if self.phase.tunnel.load(Relaxed) {
            return None;
        }
        self.sync();
        let read = (self.read_waiting && !self.phase.busy.load(Relaxed)).then(|| {
            match self.head_started {
                Some(t) => after(t, self.header_timeout),
                None => after(self.last, self.keepalive_timeout),
            }
        });
        let write = self
            .write_waiting
            .then(|| after(self.last, self.header_timeout));
        read.into_iter().chain(write).min()
    }

    /// Ready when the current deadline has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(deadline) = self.deadline() else {
                return Poll::Pending;
            };
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            if deadline < self.armed || self.sleep.is_elapsed() {
                self.sleep.as_mut().reset(deadline);
                self.armed = deadline;
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// A write-side operation under the send deadline. Only bytes written count as progress: hyper flushes on
    /// every wake-up, and an idle connection's flush must not push its keep-alive deadline back.
    fn poll_write_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut ClientStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
        moved: impl FnOnce(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Ready(r) => {
                self.write_waiting = false;
                if r.as_ref().is_ok_and(moved) {
                    self.progressed(None);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.write_waiting = true;
                match self.poll_expired(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read_waiting = false;
                if buf.filled().len() > before {
                    this.progressed(Some(&buf.filled()[before..]));
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                this.read_waiting = true;
                if this.phase.busy.load(Relaxed) {
                    this.phase.waker.register(cx.waker());
                } else if this.head_started.is_none() && this.phase.reuse.evicted(cx.waker()) {
                    // Idle and picked to make room for a new connection: end as a client closing would.
                    return Poll::Ready(Ok(()));
                }
                match this.poll_expired(cx) {
                    // Idle between requests: end quietly, as a client closing would.
                    Poll::Ready(()) if this.head_started.is_none() => Poll::Ready(Ok(())),
                    Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |s, cx| s.poll_write(cx, buf), |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |s, cx| s.poll_write_vectored(cx, bufs), |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_write_with(cx, |s, cx| s.poll_flush(cx), |_| false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_write_with(cx, |s, cx| s.poll_shutdown(cx), |_| false)
    }
}
