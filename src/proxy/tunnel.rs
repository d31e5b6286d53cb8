//! The WebSocket tunnel: bytes both ways after a `101 Switching Protocols`, until either side closes or nothing
//! moves for the location's `read_timeout`.
//!
//! Both ends are taken back from hyper (its read buffers released) and relayed by one small poll loop: data is
//! read into a per-thread scratch buffer and written straight on; only what the other side cannot take at once is
//! kept, until it can. An idle tunnel holds its two sockets, one timer entry and no copy buffer.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{Either, OptionFuture};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::access_log::{AccessLog, Entry};
use crate::conn::streams::StreamGuard;
use crate::conn::{ClientStream, ConnHold};
use crate::deadline::{after, poll_sleep_until};
use crate::metrics::TunnelProtocol;
use crate::upstream::pool::UpstreamStream;
use crate::upstream::InFlight;

const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Bytes a tunnel carried each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub from_client: u64,
    pub from_server: u64,
}

/// What a tunnel's access log line needs (boxed, so a tunnel with the log off carries one null pointer for it).
pub struct TunnelLog {
    pub log: Arc<AccessLog>,
    pub entry: Entry,
}

/// The client's end of a tunnel: its upgrade (an HTTP/1.1 connection after its 101, or an HTTP/2 stream after
/// its 200) and how it asked.
pub struct ClientEnd {
    pub upgrade: OnUpgrade,
    pub protocol: TunnelProtocol,
}

/// A tunnel's task: relays until the tunnel ends, then writes its access log line and lets go of its client
/// connection (its slot, its place in the shutdown tracker and, on HTTP/2, its open stream).
pub fn serve(
    client: ClientEnd,
    upstream: Box<(UpstreamStream, Bytes)>,
    idle: Duration,
    in_flight: InFlight,
    log: Option<Box<TunnelLog>>,
    (hold, key): (Arc<ConnHold>, u64),
) -> Task<impl Future<Output = Carried>> {
    let stream = hold.streams.as_ref().map(|s| s.open());
    Task {
        relay: run(client, upstream, idle, in_flight),
        log,
        hold: Some((hold, stream)),
        key,
    }
}

pin_project_lite::pin_project! {
    /// The relay and what the tunnel lets go of when it ends, side by side: an async block awaiting the relay
    /// would hold a second copy of it.
    pub struct Task<F> {
        #[pin]
        relay: F,
        log: Option<Box<TunnelLog>>,
        hold: Option<(Arc<ConnHold>, Option<StreamGuard>)>,
        // Its key among the process's open tunnels.
        key: u64,
    }

    impl<F> PinnedDrop for Task<F> {
        // A tunnel closed by the process (its task aborted at shutdown) still leaves its line and its place.
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            finish(this.log, this.hold, *this.key, Carried::default());
        }
    }
}

impl<F: Future<Output = Carried>> Future for Task<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let carried = std::task::ready!(this.relay.poll(cx));
        finish(this.log, this.hold, *this.key, carried);
        Poll::Ready(())
    }
}

/// Writes the tunnel's access log line and lets go of its connection and its key, once.
fn finish(
    log: &mut Option<Box<TunnelLog>>,
    hold: &mut Option<(Arc<ConnHold>, Option<StreamGuard>)>,
    key: u64,
    carried: Carried,
) {
    if let Some(t) = log.take() {
        t.log
            .tunnel_ended(&t.entry, carried.from_server, carried.from_client);
    }
    if let Some((hold, _stream)) = hold.take() {
        hold.tunnels.remove(key);
    }
}

/// Joins the client's upgrade to the server's socket (with the bytes the server sent after its `101`) and relays
/// until the tunnel ends. `in_flight` keeps the server counted meanwhile.
///
/// An idle tunnel is mostly this future, so it is kept small: the relay is built before it is awaited (nothing
/// else is held across the tunnel's life) and a rare pairing's relay is boxed.
pub async fn run(
    client: ClientEnd,
    upstream: Box<(UpstreamStream, Bytes)>,
    idle: Duration,
    in_flight: InFlight,
) -> Carried {
    let metrics = &in_flight.state().metrics;
    let protocol = client.protocol as usize;
    metrics.tunnels_total[protocol].inc();
    metrics.tunnels_active[protocol].inc();
    let tunnel = match join(client.upgrade, upstream).await {
        Ok(Pair::Plain(a, b)) => Some(Either::Left(relay(a, b, idle))),
        Ok(Pair::Boxed(a, b)) => Some(Either::Right(Box::pin(relay(a, b, idle)))),
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            None
        }
    };
    let carried = OptionFuture::from(tunnel).await.unwrap_or_default();
    metrics.tunnels_active[protocol].dec();
    carried
}

/// Waits for the client's upgrade (ready once its 101 is written) and takes its stream back.
async fn join(client: OnUpgrade, upstream: Box<(UpstreamStream, Bytes)>) -> hyper::Result<Pair> {
    let client = client.await?;
    Ok(take_back(client, *upstream))
}

/// Any stream the relay can carry, for the uncommon pairings (a TLS upstream, a stream hyper kept wrapped).
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Both ends of a tunnel: the client's (`a`) and the server's (`b`).
enum Pair {
    /// The usual case: the client connection as accepted, plain TCP to the server.
    Plain(Side<ClientStream>, Side<TcpStream>),
    Boxed(Side<Box<dyn Stream>>, Side<Box<dyn Stream>>),
}

/// Takes the client's stream back from hyper, with the bytes read ahead on either side queued for the other.
/// hyper's read buffer is released: even empty, its `Bytes` holds a whole buffer.
fn take_back(client: Upgraded, (upstream, upstream_buf): (UpstreamStream, Bytes)) -> Pair {
    let client = crate::conn::idle_io::take_upgraded(client);
    match (client, upstream) {
        (Ok((client, client_buf)), UpstreamStream::Tcp(upstream)) => Pair::Plain(
            Side::new(client, &upstream_buf, client_buf.len()),
            Side::new(upstream, &client_buf, upstream_buf.len()),
        ),
        (client, upstream) => {
            let (client, client_buf): (Box<dyn Stream>, _) = match client {
                Ok((s, buf)) => (Box::new(s), buf),
                Err(up) => (Box::new(TokioIo::new(up)), Bytes::new()),
            };
            let upstream: Box<dyn Stream> = Box::new(upstream);
            Pair::Boxed(
                Side::new(client, &upstream_buf, client_buf.len()),
                Side::new(upstream, &client_buf, upstream_buf.len()),
            )
        }
    }
}

/// One end of a relay: the stream, bytes waiting to be written TO it, and where each direction stands.
struct Side<S> {
    io: S,
    pending: Vec<u8>,
    /// It sent EOF.
    read_closed: bool,
    /// It needs a flush before what was written to it is out (TLS).
    unflushed: bool,
    /// Its write half was shut down, after the other side's EOF.
    write_shut: bool,
    /// Bytes it sent.
    read: u64,
}

impl<S: Stream> Side<S> {
    /// `pending`: bytes already read from the other side, to be written to this one first; `read`: bytes already
    /// read from this one.
    fn new(io: S, pending: &[u8], read: usize) -> Side<S> {
        Side {
            io,
            pending: pending.to_vec(),
            read_closed: false,
            unflushed: false,
            write_shut: false,
            read: read as u64,
        }
    }

    fn done(&self) -> bool {
        self.read_closed && self.write_shut
    }
}

/// Relays between the client's side `a` and the server's side `b` until both directions closed, an error, or
/// `idle` without a byte moving either way; then closes both.
// An async block rather than an async fn: it works on the sides in place instead of holding a second copy.
#[allow(clippy::manual_async_fn)]
fn relay<A: Stream, B: Stream>(
    mut a: Side<A>,
    mut b: Side<B>,
    idle: Duration,
) -> impl Future<Output = Carried> {
    async move {
        let mut sleep = std::pin::pin!(tokio::time::sleep(idle));
        let mut last = Instant::now();
        let ended: io::Result<()> = poll_fn(|cx| {
            let moved = poll_copy(cx, &mut a, &mut b)? | poll_copy(cx, &mut b, &mut a)?;
            if a.done() && b.done() {
                return Poll::Ready(Ok(()));
            }
            if moved {
                last = Instant::now();
            }
            if poll_sleep_until(cx, sleep.as_mut(), after(last, idle)).is_ready() {
                debug!("tunnel idle timeout");
                return Poll::Ready(Ok(()));
            }
            Poll::Pending
        })
        .await;
        if let Err(e) = ended {
            debug!(error = %e, "tunnel ended with an error");
        }
        Carried {
            from_client: a.read,
            from_server: b.read,
        }
    }
}

/// Moves what `from` offers to `to` until one of them would block (its waker then registered), forwarding EOF as
/// a write shutdown once everything before it is out. Returns whether anything moved.
fn poll_copy<R: Stream, W: Stream>(
    cx: &mut Context<'_>,
    from: &mut Side<R>,
    to: &mut Side<W>,
) -> io::Result<bool> {
    let mut moved = false;
    loop {
        if !poll_flush_pending(cx, to, &mut moved)? {
            return Ok(moved);
        }
        if from.read_closed {
            if !to.write_shut {
                match Pin::new(&mut to.io).poll_shutdown(cx) {
                    Poll::Ready(r) => {
                        // A peer that already closed both ways cannot take a half-close: nothing is lost.
                        if let Err(e) = r {
                            if e.kind() != io::ErrorKind::NotConnected {
                                return Err(e);
                            }
                        }
                        to.write_shut = true;
                        moved = true;
                    }
                    Poll::Pending => {}
                }
            }
            return Ok(moved);
        }
        match poll_read_through(cx, from, to)? {
            Poll::Ready(0) => from.read_closed = true,
            Poll::Ready(n) => from.read += n as u64,
            Poll::Pending => return Ok(moved),
        }
        moved = true;
    }
}

/// Writes and flushes what waits for `to`. Returns whether it is all out; frees the queue once empty.
fn poll_flush_pending<W: Stream>(
    cx: &mut Context<'_>,
    to: &mut Side<W>,
    moved: &mut bool,
) -> io::Result<bool> {
    while !to.pending.is_empty() {
        match Pin::new(&mut to.io).poll_write(cx, &to.pending) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                to.pending.drain(..n);
                to.unflushed = true;
                *moved = true;
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(false),
        }
    }
    if to.pending.capacity() != 0 {
        to.pending = Vec::new();
    }
    if to.unflushed {
        match Pin::new(&mut to.io).poll_flush(cx) {
            Poll::Ready(r) => {
                r?;
                to.unflushed = false;
            }
            Poll::Pending => return Ok(false),
        }
    }
    Ok(true)
}

/// Reads once from `from` into the scratch buffer and writes it on to `to`, queueing what `to` cannot take now.
/// Ready(0) is EOF.
fn poll_read_through<R: Stream, W: Stream>(
    cx: &mut Context<'_>,
    from: &mut Side<R>,
    to: &mut Side<W>,
) -> Poll<io::Result<usize>> {
    SCRATCH_BUF.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut from.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let data = buf.filled();
        let n = data.len();
        let mut written = 0;
        while written < n {
            match Pin::new(&mut to.io).poll_write(cx, &data[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(w)) => {
                    written += w;
                    to.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        to.pending.extend_from_slice(&data[written..]);
        Poll::Ready(Ok(n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, D, E, G, F: Future>(_: fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle tunnel is mostly its task: keep its future small (no buffers, no readiness futures inline, the
    /// access log line behind a pointer).
    #[test]
    fn tunnel_future_stays_small() {
        let size = future_size(serve);
        assert!(size <= 512, "tunnel task future grew to {size} bytes");
    }
}
