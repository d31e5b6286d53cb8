//! Response bodies: limpet's own short answers, and a server's body streamed on, which drives its connection,
//! keeps its server counted in flight, times out when idle, and hands its connection back to the pool.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::request_body::BodyError;
use crate::upstream::conn::BodyState;
use crate::upstream::{Conn, InFlight, Upstream};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The server a response body comes from, counted in flight until the body is done.
pub struct Lease {
    pub upstream: Arc<Upstream>,
    pub index: usize,
    pub in_flight: InFlight,
}

/// A response body streamed from a server.
pub struct UpstreamBody {
    /// Bytes already read from the body (sticky learning peeks at its start).
    prefix: Option<Bytes>,
    /// The connection the body arrives on, read as the client takes the body; its silence deadline is the
    /// request's `read_timeout`. Back to the pool when the body has been read whole and `reusable`.
    conn: Option<Conn>,
    state: BodyState,
    reusable: bool,
    lease: Option<Lease>,
}

impl UpstreamBody {
    /// Streams the body of an answer read from `conn`.
    pub fn new(mut conn: Conn, state: BodyState, reusable: bool, lease: Lease) -> UpstreamBody {
        conn.progress();
        UpstreamBody {
            prefix: None,
            conn: Some(conn),
            state,
            reusable,
            lease: Some(lease),
        }
    }

    /// Puts bytes already taken from the body back in front of it.
    pub fn set_prefix(&mut self, prefix: Bytes) {
        if !prefix.is_empty() {
            self.prefix = Some(prefix);
        }
    }

    fn fail(&mut self, why: &dyn std::fmt::Display) {
        if let Some(lease) = self.lease.take() {
            lease.upstream.peers[lease.index].record_failure(lease.upstream.name(), why);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match conn.poll_body(cx, &mut this.state) {
            Poll::Ready(Some(Ok(data))) => {
                conn.progress();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = BodyError::Upstream(e);
                this.fail(&e);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match conn.poll_idle_expired(cx) {
                Poll::Ready(()) => {
                    let e = BodyError::UpstreamTimeout;
                    this.fail(&e);
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.state.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match self.state.remaining() {
            Some(n) => SizeHint::with_exact(n + extra),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(extra);
                hint
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if !self.state.is_done() {
            return;
        }
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let pool = &lease.upstream.peers[lease.index].pool;
        let reusable = self.reusable;
        if conn.sent() {
            conn.finish_answer(reusable);
            pool.put(conn);
            return;
        }
        // Answered before the client's body was all sent: the rest goes on, as the server may expect it whole,
        // then the connection can serve again.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = pool.clone();
        runtime.spawn(async move {
            if let Some(mut conn) = conn.finish_send().await {
                conn.finish_answer(reusable);
                pool.put(conn);
            }
        });
    }
}

/// Every response body limpet sends: its own short answers, or a server's stream.
pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream(Box<UpstreamBody>),
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(body) => Pin::new(body.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Upstream(body) => body.size_hint(),
        }
    }
}

/// A response body that keeps `T` alive until hyper is done with the body (drops it).
pub struct Held<B, T> {
    body: B,
    _held: T,
}

impl<B, T> Held<B, T> {
    pub fn new(body: B, held: T) -> Held<B, T> {
        Held { body, _held: held }
    }
}

impl<B: Body + Unpin, T: Unpin> Body for Held<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
