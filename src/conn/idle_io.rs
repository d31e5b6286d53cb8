//! Client IO with the connection's deadlines, and what the connection's service tells it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::head_scan::{HeadCounts, HeadScan};
use super::slots::{Clock, Reuse};
use super::ClientStream;
use crate::deadline::{after, Timer};

/// What a connection's service tells its [`IdleIo`]: a request is being served, or the connection has become a
/// tunnel (which keeps its own idle timeout).
pub struct ConnPhase {
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
    /// A connection waiting for its first request: as idle as between two, so reusable at the cap (as nginx).
    pub fn new(reuse: Arc<Reuse>, clock: Clock) -> Arc<ConnPhase> {
        reuse.idle(&clock);
        Arc::new(ConnPhase {
            reuse,
            clock,
            requests: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            tunnel: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            head: AtomicU64::new(0),
        })
    }

    /// A connection whose requests come interleaved (HTTP/2): busy for good, so its [`IdleIo`] keeps only the
    /// send deadline; the connection keeps its idle timeout, and says when it is idle, itself.
    pub fn multiplexed(reuse: Arc<Reuse>, clock: Clock) -> Arc<ConnPhase> {
        Arc::new(ConnPhase {
            reuse,
            clock,
            requests: AtomicU64::new(0),
            busy: AtomicBool::new(true),
            tunnel: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            head: AtomicU64::new(0),
        })
    }

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
pub struct Busy(Arc<ConnPhase>);

impl Busy {
    /// Marks the next request in progress; with it, the framing counts of its head when they are known.
    pub fn new(phase: &Arc<ConnPhase>) -> (Busy, Option<HeadCounts>) {
        let n = phase.requests.fetch_add(1, Relaxed) + 1;
        phase.busy.store(true, Relaxed);
        (Busy(phase.clone()), phase.head_counts(n))
    }

    /// The request was answered with `101`: the connection is a tunnel from now on, with no deadline of its own.
    pub fn became_tunnel(&self) {
        self.0.tunnel.store(true, Relaxed);
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
pub struct IdleIo {
    inner: ClientStream,
    phase: Arc<ConnPhase>,
    limits: Limits,
    seen_requests: u64,
    /// When the first byte of the head being read arrived (the connection's start for the first head).
    head_started: Option<Instant>,
    /// The last byte moved, either way.
    last: Instant,
    /// Counting the framing lines of the head being read, while it is.
    scan: Option<HeadScan>,
    read_waiting: bool,
    write_waiting: bool,
    timer: Timer,
}

/// A connection's time limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For a request head once its first byte came (the first head: from the connection's start), and for a
    /// write to make progress.
    pub header_timeout: Duration,
    /// For the next request head to start after the last byte moved.
    pub keepalive_timeout: Duration,
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
    pub fn new(
        inner: ClientStream,
        phase: Arc<ConnPhase>,
        limits: Limits,
        started: Instant,
    ) -> IdleIo {
        IdleIo {
            inner,
            phase,
            limits,
            seen_requests: 0,
            head_started: Some(started),
            last: started,
            scan: Some(HeadScan::default()),
            read_waiting: false,
            write_waiting: false,
            timer: Timer::default(),
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
                Some(t) => after(t, self.limits.header_timeout),
                None => after(self.last, self.limits.keepalive_timeout),
            }
        });
        let write = self
            .write_waiting
            .then(|| after(self.last, self.limits.header_timeout));
        read.into_iter().chain(write).min()
    }

    /// Ready when the current deadline has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.deadline() {
            Some(deadline) => self.timer.poll_until(cx, deadline),
            None => Poll::Pending,
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
