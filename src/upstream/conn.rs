//! One HTTP/1.1 connection to a server, driven by the task that uses it: the request's task while it waits for
//! the answer, the client connection's task while the answer's body streams. No task of its own, so a request
//! costs no hop to another task and back; an idle connection in the pool is polled by no one until it is taken.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use tracing::debug;

use crate::deadline::Idle;
use crate::request_body::RequestBody;

/// What processes a connection's reads and writes (hyper's connection future, with upgrades); ends when the
/// connection closes, fails, or is handed to a tunnel by a `101`.
pub type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// A connection to a server and its silence deadline.
pub struct Conn {
    pub sender: SendRequest<RequestBody>,
    /// None once the connection has ended.
    driver: Option<Driver>,
    /// Silence allowed on the connection: the read deadline of whichever request uses it. One timer entry per
    /// connection, not one per request.
    idle: Idle,
    /// Taken from the idle queue rather than freshly connected.
    pub reused: bool,
}

impl Conn {
    pub fn new(sender: SendRequest<RequestBody>, driver: Driver) -> Conn {
        Conn {
            sender,
            driver: Some(driver),
            idle: Idle::new(Duration::ZERO),
            reused: false,
        }
    }

    /// Lets the connection read and write what it can. Ready once it has ended.
    pub fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(driver) = self.driver.as_mut() else {
            return Poll::Ready(());
        };
        let result = std::task::ready!(driver.as_mut().poll(cx));
        if let Err(e) = result {
            debug!(error = %e, "upstream connection ended");
        }
        self.driver = None;
        Poll::Ready(())
    }

    /// Ended, or known to the sender as closed. Reads what already arrived first (a server's close of an idle
    /// connection ends it here).
    pub fn is_closed(&mut self) -> bool {
        let _ = self.poll_drive(&mut Context::from_waker(Waker::noop()));
        self.driver.is_none() || self.sender.is_closed()
    }

    /// Not known to have ended (without reading anything).
    pub fn is_open(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
    }

    /// Waits until the connection can take a request, driving it meanwhile.
    pub async fn ready(&mut self) -> hyper::Result<()> {
        poll_fn(|cx| {
            let mut quiet = Context::from_waker(Waker::noop());
            if let Poll::Ready(r) = self.sender.poll_ready(&mut quiet) {
                return Poll::Ready(r);
            }
            let _ = self.poll_drive(cx);
            self.sender.poll_ready(&mut quiet)
        })
        .await
    }

    /// Runs `fut` to its end, driving the connection meanwhile. `fut` must be one that only this connection's
    /// progress completes (its answer, its body, its readiness).
    pub async fn drive<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        poll_fn(|cx| self.poll_with(cx, |cx| fut.as_mut().poll(cx))).await
    }

    /// Polls `poll`, and when it is not done, drives the connection and polls it again. `poll` gets a context
    /// that wakes no one: what completes it happens only while the connection is driven, which is always
    /// followed by a poll here, so waking the task for it would only poll it once more for nothing.
    pub fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let mut quiet = Context::from_waker(Waker::noop());
        if let Poll::Ready(out) = poll(&mut quiet) {
            return Poll::Ready(out);
        }
        let _ = self.poll_drive(cx);
        poll(&mut quiet)
    }

    /// Starts the silence clock over for a request allowed `limit` between reads.
    pub fn restart_idle(&mut self, limit: Duration) {
        self.idle.restart(limit);
    }

    /// Something arrived from the server.
    pub fn progress(&mut self) {
        self.idle.progress();
    }

    /// Ready once the server has been silent for the limit last set.
    pub fn poll_idle_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.idle.poll_expired(cx)
    }

    /// Drives the connection until it has ended (after a `101`, that hands its socket to the upgrade).
    pub async fn finish(mut self) {
        poll_fn(|cx| self.poll_drive(cx)).await
    }
}
