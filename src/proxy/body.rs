//! Bodies in both directions, streamed: the client's request body with its size limit, and the response body
//! that keeps its server counted in flight, times out when idle, and hands its connection back to the pool.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::oneshot;

use super::ProxyError;
use crate::conn::deadline::Idle;
use crate::upstream::{InFlight, Upstream};

/// Why a body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than client_max_body_size")]
    TooLarge,
    #[error("client body: {0}")]
    Client(hyper::Error),
    #[error("upstream body: {0}")]
    Upstream(hyper::Error),
    #[error("upstream sent nothing for read_timeout")]
    UpstreamTimeout,
    #[error("client sent no body bytes for client_header_timeout")]
    ClientTimeout,
}

impl BodyError {
    /// The answer to give when the client's request body caused the failure (None: the upstream did).
    pub fn client_fault(&self) -> Option<ProxyError> {
        match self {
            BodyError::TooLarge => Some(ProxyError::BodyTooLarge),
            BodyError::Client(_) => Some(ProxyError::BadRequest("malformed request body")),
            BodyError::ClientTimeout => Some(ProxyError::Refused(
                StatusCode::REQUEST_TIMEOUT,
                "request body too slow",
            )),
            BodyError::Upstream(_) | BodyError::UpstreamTimeout => None,
        }
    }
}

/// The request body sent upstream: the client's, streamed, failing once it passes the location's limit or when
/// the client leaves it silent for too long.
pub struct RequestBody {
    inner: Option<Incoming>,
    limit: u64,
    seen: u64,
    idle: Option<Idle>,
    /// Told when the body has been read to its end (dropped unsent when it fails or is dropped early).
    sent: Option<oneshot::Sender<()>>,
}

impl RequestBody {
    /// Streams `inner`, allowing at most `limit` bytes (0 = unlimited) and at most `idle` between two reads.
    pub fn new(inner: Incoming, limit: u64, idle: Duration) -> RequestBody {
        let idle = (!inner.is_end_stream()).then(|| Idle::new(idle));
        RequestBody {
            inner: Some(inner),
            limit,
            seen: 0,
            idle,
            sent: None,
        }
    }

    /// A signal for the moment the body has been read whole (None when there is none to read).
    pub fn watch_sent(&mut self) -> Option<oneshot::Receiver<()>> {
        if self.is_end_stream() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.sent = Some(tx);
        Some(rx)
    }

    fn ended(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
    }

    /// No body (health checks).
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            limit: 0,
            seen: 0,
            idle: None,
            sent: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => {
                this.ended();
                return Poll::Ready(None);
            }
            Poll::Pending => {
                return match this.idle.as_mut().map(|i| i.poll_expired(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Some(Err(BodyError::ClientTimeout))),
                    _ => Poll::Pending,
                };
            }
        };
        if let Some(idle) = this.idle.as_mut() {
            idle.progress();
        }
        if let Some(data) = frame.data_ref() {
            this.seen += data.len() as u64;
            if this.limit != 0 && this.seen > this.limit {
                return Poll::Ready(Some(Err(BodyError::TooLarge)));
            }
        }
        if this.inner.as_ref().is_some_and(|b| b.is_end_stream()) {
            this.ended();
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

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
