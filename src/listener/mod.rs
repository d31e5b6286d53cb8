//! Client connections: bind, accept, PROXY protocol, TLS handshake, HTTP/1.1 serving (HTTP/2 in [`h2`]),
//! graceful drain.
//!
//! Each listen address has its own accept task, so a reload can add and remove addresses while the sockets of
//! unchanged ones keep accepting.

mod h2;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::config::{canonical_ip, Cidr};
use crate::conn::idle_io::{Busy, ConnPhase, IdleIo, Limits};
use crate::conn::slots::{Admitted, Clock, PerIp, Permit, Reuse, Slots};
use crate::conn::streams::Streams;
use crate::conn::{ClientInfo, ClientStream, ConnHold};
use crate::deadline::after;
use crate::proxy;
use crate::proxy::response_body::Held;
use crate::proxy_protocol::{self, ProxyHeader};
use crate::runtime::Snapshot;
use crate::warn_limit::WarnLimit;
use prometheus::{IntCounter, IntGauge};

/// Warnings at `max_connections`, at most one a second.
static AT_THE_CAP: WarnLimit = WarnLimit::new();

/// Backlog of each listen socket.
const BACKLOG: u32 = 4096;

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

/// The socket a caller bound for `addr` beforehand, if any (taken out of `given`).
pub fn take_given(
    given: &mut Vec<(SocketAddr, TcpListener)>,
    addr: SocketAddr,
) -> Option<TcpListener> {
    let at = given.iter().position(|(a, _)| *a == addr)?;
    Some(given.swap_remove(at).1)
}

/// What accept loops and their connections share with the rest of the process.
#[derive(Clone)]
pub struct Shared {
    /// The current snapshot, swapped by reloads; each request reads the one of its moment.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Every client connection's slot, against `max_connections`.
    pub slots: Arc<Slots>,
    /// Every connection and tunnel, for graceful shutdown.
    pub tracker: TaskTracker,
    /// Turns true when the process shuts down.
    pub stopping: watch::Receiver<bool>,
    /// Every open tunnel, to be closed paced at shutdown.
    pub tunnels: Arc<crate::conn::tunnels::Tunnels>,
    /// Turns true once a binary upgrade handed over to a new process: HTTP/1.1 connections close after their
    /// next answer (`Connection: close`, so no client sends on a connection being closed), HTTP/2 ones get GOAWAY.
    pub handed_over: watch::Receiver<bool>,
    /// The same, read on every HTTP/1.1 answer.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    /// Resolves once the process starts shutting down or hands over to a new one.
    fn stopped_or_handed_over(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stopped = self.stopped();
        let mut handed = self.handed_over.clone();
        async move {
            tokio::select! {
                () = stopped => {}
                _ = handed.wait_for(|h| *h) => {}
            }
        }
    }

    /// Resolves once the process starts shutting down.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stopping.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }

    /// A place for a new client connection under `max_connections` (at the cap, in place of idle keep-alive
    /// connections told to close). `gauge` is its listener's `limpet_client_connections_active`.
    fn admit(&self, gauge: &IntGauge) -> Admitted {
        let max = self.snapshot.load().config.global.max_connections;
        self.slots.admit(max, gauge)
    }
}

/// The accept tasks, one per listen address (keyed by the address as configured).
#[derive(Default)]
pub struct Listeners {
    running: HashMap<SocketAddr, watch::Sender<bool>>,
    /// A second descriptor of each listening socket: what a binary upgrade passes on, and what accepting
    /// resumes from when an upgrade fails after accepting stopped.
    sockets: HashMap<SocketAddr, std::os::fd::OwnedFd>,
}

impl Listeners {
    /// Binds every address of `wanted` not yet listening, once each (blocks sharing an address share its socket),
    /// taking the socket of `given` for an address there instead of binding it. On any failure nothing new is kept.
    pub fn bind_new(
        &self,
        wanted: impl Iterator<Item = SocketAddr>,
        given: &mut Vec<(SocketAddr, TcpListener)>,
    ) -> Result<Vec<(SocketAddr, TcpListener)>, String> {
        let mut bound: Vec<(SocketAddr, TcpListener)> = Vec::new();
        for addr in wanted {
            if self.running.contains_key(&addr) || bound.iter().any(|(a, _)| *a == addr) {
                continue;
            }
            let socket = match take_given(given, addr) {
                Some(socket) => socket,
                None => bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?,
            };
            bound.push((addr, socket));
        }
        Ok(bound)
    }

    /// Starts accept tasks for newly bound sockets and stops those whose address left the config.
    pub fn apply(
        &mut self,
        shared: &Shared,
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
        self.sockets.retain(|addr, _| keep(addr));
        for (addr, listener) in bound {
            use std::os::fd::AsFd;
            match listener.as_fd().try_clone_to_owned() {
                Ok(fd) => {
                    self.sockets.insert(addr, fd);
                }
                Err(e) => {
                    warn!(listen = %addr, error = %e, "cannot keep a second descriptor: this socket cannot be handed to an upgrade")
                }
            }
            let (tx, rx) = watch::channel(false);
            let local = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            info!(listen = %addr, local = %local, "listening");
            tokio::spawn(accept_loop(shared.clone(), addr, listener, rx));
            self.running.insert(addr, tx);
        }
    }

    /// Stops every accept loop and closes the listening sockets.
    pub fn stop_all(&mut self) {
        self.pause();
        self.sockets.clear();
    }

    /// Stops every accept loop, keeping the sockets open (another process accepts on them now).
    pub fn pause(&mut self) {
        for (_, stop) in self.running.drain() {
            let _ = stop.send(true);
        }
    }

    /// Starts accepting again on the sockets kept by [`Listeners::pause`].
    pub fn resume(&mut self, shared: &Shared) {
        let mut bound = Vec::new();
        for (addr, fd) in &self.sockets {
            let socket = fd
                .try_clone()
                .map(std::net::TcpListener::from)
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)
                });
            match socket {
                Ok(l) => bound.push((*addr, l)),
                Err(e) => warn!(listen = %addr, error = %e, "cannot accept again"),
            }
        }
        self.sockets.clear();
        self.apply(shared, bound, &|_| true);
    }

    /// The listening sockets, for a binary upgrade: each address with a descriptor of its own.
    pub fn descriptors(&self) -> Vec<(SocketAddr, std::os::fd::OwnedFd)> {
        self.sockets
            .iter()
            .filter_map(|(a, fd)| Some((*a, fd.try_clone().ok()?)))
            .collect()
    }
}

async fn accept_loop(
    shared: Shared,
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
                let Some((permit, reuse)) = take_slot(&shared, &gauge, &closed) else {
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
                shared
                    .tracker
                    .spawn(serve(shared.clone(), conn).instrument(span));
            }
            Err(e) => accept_error(e).await,
        }
    }
}

/// A slot under `max_connections` for a new connection (counted in `gauge`), or None when every slot is held by a
/// connection that is not idle. Idle connections closed to make room, and refusals, are counted and logged.
fn take_slot(shared: &Shared, gauge: &IntGauge, closed: &Closed) -> Option<(Permit, Arc<Reuse>)> {
    match shared.admit(gauge) {
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

async fn serve(shared: Shared, conn: Accepted) {
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
    let Some(listener) = shared.snapshot.load().by_addr.get(&key).cloned() else {
        return;
    };
    // Only settings are kept: a long-lived connection must not pin this snapshot (its upstreams and their pools)
    // past a reload. Each request reads the snapshot of its moment.
    let settings = ConnSettings::of(listener.block());
    let tls = listener.tls.clone();
    drop(listener);
    let _ = stream.set_nodelay(true);
    let deadline = after(started, settings.limits.header_timeout);
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
    let (io, https, http2) = match tls {
        None => {
            let http2 = settings.h2.h2c && h2::sends_preface(&stream, deadline).await;
            (ClientStream::Tcp(stream), false, http2)
        }
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    let http2 = s.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2);
                    (ClientStream::Tls(Box::new(s)), true, http2)
                }
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
    let streams = http2.then(|| Arc::new(Streams::default()));
    let reuse = (reuse, permit.clock());
    let client = ClientInfo {
        peer,
        peer_text: proxy::headers::ip_value(peer.ip()),
        listener: key,
        https,
        hold: Arc::new(ConnHold {
            tracker: shared.tracker.clone(),
            permit,
            _per_ip: per_ip,
            streams: streams.clone(),
            tunnels: shared.tunnels.clone(),
        }),
    };
    if let Some(streams) = streams {
        let serving = h2::serve(shared, settings, io, client, (streams, reuse), started);
        return Box::pin(serving).await;
    }
    // Boxed: the served connection's future is large, and a task's future is copied whole when it is spawned,
    // finished and dropped; this one stays small until the connection is accepted.
    Box::pin(serve_http(shared, settings, io, client, started, reuse)).await;
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

/// Do a peer's first bytes start a PROXY header? Looked at without taking them (see [`peek_decides`]). What is
/// not one is left for TLS or HTTP to judge.
async fn sends_proxy_header(stream: &TcpStream, deadline: Instant) -> bool {
    peek_decides::<12>(stream, deadline, proxy_protocol::starts_header).await
}

/// Peeks at a peer's first bytes (at most `N`) without taking them until `judge` decides (Some) or the peer
/// stops; waits (up to `deadline`) only while the bytes so far leave it undecided (None). False when undecided.
async fn peek_decides<const N: usize>(
    stream: &TcpStream,
    deadline: Instant,
    judge: impl Fn(&[u8]) -> Option<bool>,
) -> bool {
    /// A peer that stops while undecided is looked at again after this.
    const RECHECK: Duration = Duration::from_millis(20);
    let mut buf = [0u8; N];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        match judge(&buf[..n]) {
            Some(decided) => return decided,
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
    limits: Limits,
    max_header_bytes: usize,
    h2: crate::config::Http2,
}

impl ConnSettings {
    fn of(block: &crate::config::ServerBlock) -> ConnSettings {
        ConnSettings {
            proxy_protocol: block.proxy_protocol,
            proxy_protocol_from: block.proxy_protocol_from.clone(),
            max_connections_per_ip: block.max_connections_per_ip,
            limits: Limits {
                header_timeout: block.client_header_timeout,
                keepalive_timeout: block.keepalive_timeout,
            },
            max_header_bytes: block.max_header_bytes,
            h2: block.h2,
        }
    }
}

async fn serve_http(
    shared: Shared,
    settings: ConnSettings,
    io: ClientStream,
    client: ClientInfo,
    started: Instant,
    (reuse, clock): (Arc<Reuse>, Clock),
) {
    let snapshots = shared.snapshot.clone();
    let draining = shared.draining.clone();
    let phase = ConnPhase::new(reuse, clock);
    let io = IdleIo::new(io, phase.clone(), settings.limits, started);
    let client = Arc::new(client);
    let service = service_fn(move |req| {
        let (busy, head) = Busy::new(&phase);
        let snapshots = snapshots.clone();
        let client = client.clone();
        let draining = draining.clone();
        async move {
            let mut resp = proxy::handle(snapshots.load_full(), &client, req, head).await;
            if resp.extensions().get::<proxy::TunnelOpened>().is_some() {
                busy.became_tunnel();
                client.hold.permit.not_reusable();
            } else if draining.load(std::sync::atomic::Ordering::Relaxed) {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
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
        .keep_alive(!settings.limits.keepalive_timeout.is_zero());
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stopped = shared.stopped();
    tokio::select! {
        r = conn.as_mut() => log_conn_end(r),
        _ = stopped => {
            conn.as_mut().graceful_shutdown();
            log_conn_end(conn.await);
        }
    }
}

/// Logs why a client connection ended, when it was an error.
fn log_conn_end(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        debug!(error = %e, "client connection ended with an error");
    }
}
