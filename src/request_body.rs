//! The client's request body as sent upstream: streamed, with its size limit and idle timeout.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::deadline::Idle;

/// Why a body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than client_max_body_size")]
    TooLarge,
    #[error("client body: {0}")]
    Client(hyper::Error),
    #[error("upstream body: {0}")]
    Upstream(std::io::Error),
    #[error("upstream sent nothing for read_timeout")]
    UpstreamTimeout,
    #[error("client sent no body bytes for client_header_timeout")]
    ClientTimeout,
}

/// The request body sent upstream: the client's, streamed, failing once it passes the location's limit or when
/// the client leaves it silent for too long.
pub struct RequestBody {
    inner: Option<Incoming>,
    limit: u64,
    seen: u64,
    idle: Option<Idle>,
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
        }
    }

    /// No body.
    pub fn none() -> RequestBody {
        RequestBody {
            inner: None,
            limit: 0,
            seen: 0,
            idle: None,
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
            Poll::Ready(None) => return Poll::Ready(None),
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
