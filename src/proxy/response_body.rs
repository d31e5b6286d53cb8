//! Response bodies: limpet's own short answers, and a server's body streamed on, which keeps its server counted
//! in flight, times out when idle, and hands its connection back to the pool.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use crate::deadline::Idle;
use crate::request_body::{BodyError, RequestBody};
use crate::upstream::{InFlight, Upstream};

/// What a response body holds on to until it ends.
pub struct Lease {
    pub upstream: Arc<Upstream>,
    pub index: usize,
    pub in_flight: InFlight,
    /// The connection, returned to the pool once the body has been read to its end.
    pub sender: Option<SendRequest<RequestBody>>,
}

/// A response body streamed from a server.
pub struct UpstreamBody {
    prefix: Option<Bytes>,
    inner: Incoming,
    idle: Idle,
    lease: Option<Lease>,
    ended: bool,
}

impl UpstreamBody {
    /// Streams `inner` (after `prefix`, bytes already read from it), failing when it stays silent `idle_timeout`.
    pub fn new(
        prefix: Option<Bytes>,
        inner: Incoming,
        idle_timeout: Duration,
        lease: Lease,
    ) -> UpstreamBody {
        let ended = prefix.is_none() && inner.is_end_stream();
        UpstreamBody {
            prefix,
            inner,
            idle: Idle::new(idle_timeout),
            lease: Some(lease),
            ended,
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = BodyError::Upstream(e);
                this.fail(&e);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.idle.poll_expired(cx) {
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
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + extra);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if self.ended || self.inner.is_end_stream() {
            if let Some(sender) = lease.sender {
                lease.upstream.peers[lease.index].pool.put(sender);
            }
        }
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
