//! The WebSocket tunnel: bytes both ways after a `101 Switching Protocols`, until either side closes or nothing
//! moves for the location's `read_timeout`.
//!
//! On plain TCP both ends are taken back from hyper and relayed with readiness: an idle tunnel holds no copy
//! buffer. Data is read into a per-thread scratch buffer and written straight on; only what the other side cannot
//! take at once is kept, until it can.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tracing::debug;

use crate::listener::ClientStream;
use crate::upstream::InFlight;

const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Joins both upgrades and relays until the tunnel ends. `in_flight` keeps the server counted meanwhile.
pub async fn run(client: OnUpgrade, upstream: OnUpgrade, idle: Duration, in_flight: InFlight) {
    let metrics = in_flight.state().metrics.clone();
    metrics.tunnels_total.inc();
    metrics.tunnels_active.inc();
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            if let Err(e) = relay_upgraded(c, u, idle).await {
                debug!(error = %e, "tunnel ended with an error");
            }
        }
        Err(e) => debug!(error = %e, "upgrade failed"),
    }
    metrics.tunnels_active.dec();
    drop(in_flight);
}

async fn relay_upgraded(client: Upgraded, upstream: Upgraded, idle: Duration) -> io::Result<()> {
    let client = match client.downcast::<TokioIo<ClientStream>>() {
        Ok(parts) => match parts.io.into_inner() {
            ClientStream::Tcp(tcp) => Either::Tcp(tcp, parts.read_buf),
            other => Either::Other(Box::new(other), parts.read_buf),
        },
        Err(up) => return relay_generic(TokioIo::new(up), TokioIo::new(upstream), idle).await,
    };
    let (upstream, upstream_buf) = match upstream.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => (parts.io.into_inner(), parts.read_buf),
        Err(up) => {
            return match client {
                Either::Tcp(tcp, buf) => {
                    relay_generic(Prefixed::new(tcp, buf), TokioIo::new(up), idle).await
                }
                Either::Other(s, buf) => {
                    relay_generic(Prefixed::new(*s, buf), TokioIo::new(up), idle).await
                }
            }
        }
    };
    match client {
        Either::Tcp(tcp, client_buf) => {
            let mut a = Side::new(tcp);
            let mut b = Side::new(upstream);
            b.pending.extend_from_slice(&client_buf);
            a.pending.extend_from_slice(&upstream_buf);
            relay_tcp(&mut a, &mut b, idle).await
        }
        Either::Other(s, client_buf) => {
            relay_generic(
                Prefixed::new(*s, client_buf),
                Prefixed::new(upstream, upstream_buf),
                idle,
            )
            .await
        }
    }
}

enum Either {
    Tcp(TcpStream, bytes::Bytes),
    Other(Box<ClientStream>, bytes::Bytes),
}

/// One end of a TCP relay: the socket, bytes waiting to be written TO it, and whether it has sent EOF.
struct Side {
    sock: TcpStream,
    pending: Vec<u8>,
    read_closed: bool,
}

impl Side {
    fn new(sock: TcpStream) -> Side {
        Side {
            sock,
            pending: Vec::new(),
            read_closed: false,
        }
    }
}

/// Relays between two sockets until both directions closed, an error, or `idle` without traffic.
async fn relay_tcp(a: &mut Side, b: &mut Side, idle: Duration) -> io::Result<()> {
    let mut deadline = Instant::now() + idle;
    flush_pending(a)?;
    flush_pending(b)?;
    loop {
        if a.read_closed && b.read_closed && a.pending.is_empty() && b.pending.is_empty() {
            return Ok(());
        }
        // Read from a side only while the other has nothing queued (backpressure).
        let read_a = !a.read_closed && b.pending.is_empty();
        let read_b = !b.read_closed && a.pending.is_empty();
        let moved = tokio::select! {
            r = a.sock.readable(), if read_a => { r?; pump(a, b)? }
            r = b.sock.readable(), if read_b => { r?; pump(b, a)? }
            r = a.sock.writable(), if !a.pending.is_empty() => { r?; flush_pending(a)? }
            r = b.sock.writable(), if !b.pending.is_empty() => { r?; flush_pending(b)? }
            _ = sleep_until(deadline) => {
                debug!("tunnel idle timeout");
                return Ok(());
            }
        };
        if moved {
            deadline = Instant::now() + idle;
        }
    }
}

/// Moves what `from` has to offer into `to` (or into `to.pending` when `to` is full). Returns whether bytes moved.
fn pump(from: &mut Side, to: &mut Side) -> io::Result<bool> {
    SCRATCH_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        let n = match from.sock.try_read(&mut buf) {
            Ok(0) => {
                from.read_closed = true;
                if to.pending.is_empty() {
                    shutdown_write(&to.sock);
                }
                return Ok(true);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut written = 0;
        while written < n {
            match to.sock.try_write(&buf[written..n]) {
                Ok(w) => written += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if written < n {
            to.pending.extend_from_slice(&buf[written..n]);
        }
        Ok(true)
    })
}

/// Writes queued bytes; frees the queue once empty and forwards a half-close that waited for it.
fn flush_pending(to: &mut Side) -> io::Result<bool> {
    if to.pending.is_empty() {
        return Ok(false);
    }
    let mut written = 0;
    while written < to.pending.len() {
        match to.sock.try_write(&to.pending[written..]) {
            Ok(w) => written += w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    to.pending.drain(..written);
    if to.pending.is_empty() {
        to.pending = Vec::new();
    }
    Ok(written > 0)
}

fn shutdown_write(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).shutdown(Shutdown::Write);
}

/// A stream that first yields bytes hyper had already read from it.
struct Prefixed<S> {
    prefix: bytes::Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(inner: S, prefix: bytes::Bytes) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Relays any two streams (TLS, or whatever hyper could not hand back) with copy buffers and an idle watchdog.
async fn relay_generic<A, B>(a: A, b: B, idle: Duration) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut a = Activity {
        inner: a,
        last: last.clone(),
        start,
    };
    let mut b = Activity {
        inner: b,
        last: last.clone(),
        start,
    };
    {
        let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
        tokio::pin!(copy);
        loop {
            let since = Duration::from_millis(last.load(Relaxed));
            tokio::select! {
                r = &mut copy => return r.map(|_| ()),
                _ = sleep_until(start + since + idle) => {
                    if start.elapsed() >= Duration::from_millis(last.load(Relaxed)) + idle {
                        break;
                    }
                }
            }
        }
    }
    debug!("tunnel idle timeout");
    let _ = a.inner.shutdown().await;
    let _ = b.inner.shutdown().await;
    Ok(())
}

/// A stream that notes when it last read something.
struct Activity<S> {
    inner: S,
    last: Arc<AtomicU64>,
    start: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last
                .store(self.start.elapsed().as_millis() as u64, Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
