//! HTTP/2 client connections (ALPN `h2` on TLS listeners, prior knowledge on plaintext ones with `h2c`): hyper's
//! HTTP/2 server frames the streams, and every stream goes through the same request path as HTTP/1.1.
//!
//! Deadlines: a connection that has carried no stream for `keepalive_timeout` (or, before its first stream, for
//! `client_header_timeout`) is sent GOAWAY and closed; a peer that does not finish closing within
//! `client_header_timeout` more is cut, and so is one that takes no byte for `client_header_timeout` while limpet
//! has bytes to send (its IO's send deadline). Shutdown sends GOAWAY and lets open streams finish.
//!
//! Slots: while it has no open stream the connection counts as idle at `max_connections`, as an HTTP/1.1
//! connection between requests does; picked to make room, it is sent GOAWAY and closed the same way.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::{log_conn_end, ConnSettings, Shared};
use crate::conn::idle_io::{ConnPhase, IdleIo};
use crate::conn::slots::{Clock, Reuse};
use crate::conn::streams::Streams;
use crate::conn::{ClientInfo, ClientStream};
use crate::deadline::after;
use crate::proxy;
use crate::proxy::response_body::Held;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Does a plaintext peer open with the HTTP/2 preface? Looked at without taking the bytes.
pub(super) async fn sends_preface(stream: &TcpStream, deadline: Instant) -> bool {
    super::peek_decides::<{ PREFACE.len() }>(stream, deadline, |seen| {
        if seen != &PREFACE[..seen.len()] {
            Some(false)
        } else {
            (seen.len() == PREFACE.len()).then_some(true)
        }
    })
    .await
}

/// Runs hyper's tasks for a connection (its streams, and the tunnels extended CONNECTs become) under the
/// shutdown tracker.
#[derive(Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// Serves an HTTP/2 connection until the client ends it, it idles out, it is picked to make room, or the process
/// shuts down. `streams` counts its open streams; `reuse` is its place among the connections that may be closed to
/// make room.
pub(super) async fn serve(
    shared: Shared,
    settings: ConnSettings,
    io: ClientStream,
    client: ClientInfo,
    (streams, (reuse, clock)): (Arc<Streams>, (Arc<Reuse>, Clock)),
    started: Instant,
) {
    let phase = ConnPhase::multiplexed(reuse.clone(), clock.clone());
    let io = IdleIo::new(io, phase, settings.limits, started);
    let snapshots = shared.snapshot.clone();
    let client = Arc::new(client);
    let opened = streams.clone();
    let service = service_fn(move |req| {
        let stream = opened.open();
        let snapshots = snapshots.clone();
        let client = client.clone();
        async move {
            let resp = proxy::handle(snapshots.load_full(), &client, req, None).await;
            Ok::<_, Infallible>(resp.map(|body| Held::new(body, stream)))
        }
    });
    let h2 = settings.h2;
    let mut builder = http2::Builder::new(Tracked(shared.tracker.clone()));
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(None);
    if h2.websocket {
        builder.enable_connect_protocol();
    }
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let stopped = shared.stopped_or_handed_over();
    let limits = settings.limits;
    let idle = Idle {
        streams: &streams,
        reuse: &reuse,
        clock: &clock,
    };
    let evicted = std::future::poll_fn(|cx| match reuse.evicted(cx.waker()) {
        true => std::task::Poll::Ready(()),
        false => std::task::Poll::Pending,
    });
    let why = tokio::select! {
        r = conn.as_mut() => return log_conn_end(r),
        _ = stopped => {
            conn.as_mut().graceful_shutdown();
            return log_conn_end(conn.await);
        }
        _ = idle.out(started, limits.header_timeout, limits.keepalive_timeout) => "idle",
        _ = evicted => "closed to make room at max_connections",
    };
    debug!("HTTP/2 connection {why}: GOAWAY");
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(limits.header_timeout, conn).await {
        Ok(r) => log_conn_end(r),
        Err(_) => debug!("HTTP/2 connection did not close after GOAWAY: cut"),
    }
}

/// What tells an HTTP/2 connection idle: its open streams, and its place among the connections that may be
/// closed to make room (idle while it has no stream).
struct Idle<'a> {
    streams: &'a Streams,
    reuse: &'a Reuse,
    clock: &'a Clock,
}

impl Idle<'_> {
    /// Resolves once the connection has had no open stream for `keepalive` (for `first` from `started`, before
    /// its first stream). A zero `keepalive` closes a connection as soon as it has no stream.
    async fn out(&self, started: Instant, first: Duration, keepalive: Duration) {
        // Before its first stream a connection is as idle as between two, as on HTTP/1.1.
        self.reuse.idle(self.clock);
        let mut idle_since = Some((started, first));
        loop {
            match idle_since {
                Some((since, limit)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(after(since, limit)) => {
                            if self.streams.count() == 0 {
                                return;
                            }
                            idle_since = None;
                        }
                        // A stream opened, and may have ended already: either way the idle time starts over.
                        _ = self.streams.changed() => {
                            idle_since = match self.streams.count() {
                                0 => Some((Instant::now(), keepalive)),
                                _ => None,
                            };
                        }
                    }
                }
                None => {
                    self.reuse.busy();
                    self.streams.changed().await;
                    if self.streams.count() == 0 {
                        self.reuse.idle(self.clock);
                        idle_since = Some((Instant::now(), keepalive));
                    }
                }
            }
        }
    }
}
