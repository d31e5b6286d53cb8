//! One HTTP/1.1 connection to a server and the exchange of a request and its answer over it: limpet's own narrow
//! client (see [`super::h1`]). It has no task of its own: the request's task drives it while the request goes out
//! and the answer's head comes back, the client connection's task while the answer's body streams, and an idle
//! connection in the pool is polled by no one until it is taken.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, Method, Request};
use http_body::Body;
use tokio::io::AsyncWrite;

use super::h1::chunked::{Chunked, Step};
use super::h1::head::{self, BodyFraming, RequestFraming, ResponseHead};
use super::pool::UpstreamStream;
use crate::deadline::Idle;
use crate::request_body::{BodyError, RequestBody};

/// A response head longer than this is refused (502).
const MAX_HEAD: usize = 64 * 1024;
/// Read size while no body length says better.
const READ_SIZE: usize = 16 * 1024;
/// Read size ceiling for a body of known length.
const MAX_READ_SIZE: usize = 64 * 1024;

/// A connection to a server.
pub struct Conn {
    io: UpstreamStream,
    /// Bytes read and not yet used.
    buf: BytesMut,
    /// What is being written: a request head, a body chunk. Kept for the next request's head.
    out: Vec<u8>,
    /// How much of `out` is out.
    written: usize,
    /// The request body still being sent: it goes on while the answer streams if the server answers early.
    upload: Option<Upload>,
    /// Silence allowed on the connection: the read deadline of whichever request uses it. One timer entry per
    /// connection, not one per request.
    idle: Idle,
    /// Taken from the idle queue rather than freshly connected.
    pub reused: bool,
    /// Unusable for another request: closed, failed, or left inside a message.
    broken: bool,
    /// A body's failure, given at the next read so that what came before it reaches the client first.
    failed: Option<io::Error>,
}

/// Why an exchange did not come to an answer.
pub enum Failure {
    /// A pooled connection the server had closed before it took the request: it may go again on another.
    Stale(Box<Request<RequestBody>>),
    /// The server's fault: a failed connection, a closed one, an invalid answer.
    Upstream(io::Error),
    /// The request body failed (too large, too slow, the client went away).
    Client(BodyError),
    /// No answer within the read timeout.
    Timeout,
}

/// An answer's head and how its body is framed.
pub struct Answer {
    pub head: ResponseHead,
    pub body: BodyState,
    /// The connection may carry another request once the body has been read whole.
    pub keep_alive: bool,
}

/// Where the reading of an answer's body stands.
#[derive(Debug)]
pub enum BodyState {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

impl BodyState {
    fn of(framing: BodyFraming) -> BodyState {
        match framing {
            BodyFraming::Empty => BodyState::Done,
            BodyFraming::Length(n) => BodyState::Length(n),
            BodyFraming::Chunked => BodyState::Chunked(Chunked::default()),
            BodyFraming::Close => BodyState::Close,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyState::Done)
    }

    /// Bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            BodyState::Length(n) => Some(*n),
            BodyState::Done => Some(0),
            _ => None,
        }
    }
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn closed(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what)
}

/// Methods a request may be sent again for when a reused connection turns out closed (nginx's rule).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl Conn {
    pub fn new(io: UpstreamStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            written: 0,
            upload: None,
            idle: Idle::new(Duration::ZERO),
            reused: false,
            broken: false,
            failed: None,
        }
    }

    /// Not known to be unusable (without reading anything).
    pub fn is_open(&self) -> bool {
        !self.broken
    }

    /// Unusable: known so, or the server closed it or sent something while it was idle (read without waiting).
    pub fn is_closed(&mut self) -> bool {
        if self.broken {
            return true;
        }
        let mut quiet = Context::from_waker(Waker::noop());
        if self.poll_fill(&mut quiet, 1).is_ready() {
            // End of stream, an error, or bytes nobody asked for.
            self.broken = true;
        }
        self.broken
    }

    /// Reads more into the buffer, with room for at least `want` bytes: Ready(0) at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < want.min(1024) {
            self.buf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Writes what `out` holds from `written` on. Ready(Ok) once all of it is out and flushed.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes the request: what `out` holds, then the body's frames as the client sends them. Ready(Ok) once
    /// the request is out whole.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        loop {
            std::task::ready!(self.poll_write_out(cx)).map_err(SendError::Io)?;
            let Some(upload) = self.upload.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let frame = match std::task::ready!(Pin::new(&mut upload.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    self.upload = None;
                    return Poll::Ready(Err(SendError::Body(e)));
                }
                None => {
                    let chunked = upload.chunked;
                    self.upload = None;
                    self.out.clear();
                    self.written = 0;
                    if chunked {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    continue;
                }
            };
            upload.started = true;
            self.out.clear();
            self.written = 0;
            if let Ok(data) = frame.into_data() {
                if upload.chunked && !data.is_empty() {
                    self.out
                        .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    self.out.extend_from_slice(&data);
                    self.out.extend_from_slice(b"\r\n");
                } else if !upload.chunked {
                    self.out.extend_from_slice(&data);
                }
            }
        }
    }

    /// The request is out whole.
    pub fn sent(&self) -> bool {
        self.upload.is_none() && self.written == self.out.len()
    }

    /// Sends `request` and reads the answer's head (skipping `1xx` heads other than `101`). `read_timeout` counts
    /// from the moment the request has been sent whole, so time spent waiting on a slow client is never the
    /// server's. A body the server answers before it has been sent whole goes on being sent while the answer
    /// streams (the connection is not reused after).
    pub async fn exchange(
        &mut self,
        request: Request<RequestBody>,
        read_timeout: Duration,
    ) -> Result<Answer, Failure> {
        let (parts, body) = request.into_parts();
        let framing = if body.is_end_stream() {
            RequestFraming::Empty
        } else if parts.headers.contains_key(header::CONTENT_LENGTH) {
            RequestFraming::Length
        } else {
            RequestFraming::Chunked
        };
        self.out.clear();
        self.written = 0;
        head::encode_request(&parts, framing, &mut self.out);
        self.upload = (framing != RequestFraming::Empty).then(|| Upload {
            body,
            chunked: framing == RequestFraming::Chunked,
            started: false,
        });
        self.idle.restart(read_timeout);
        let mut exchange = Exchange::default();
        let result = poll_fn(|cx| self.poll_exchange(cx, &mut exchange, &parts.method)).await;
        let fault = match result {
            Ok(answer) => return Ok(answer),
            Err(fault) => fault,
        };
        self.broken = true;
        Err(match fault {
            Fault::Stale => {
                let body = self
                    .upload
                    .take()
                    .map_or_else(RequestBody::none, |u| u.body);
                Failure::Stale(Box::new(Request::from_parts(parts, body)))
            }
            Fault::Upstream(e) => Failure::Upstream(e),
            Fault::Client(e) => Failure::Client(e),
            Fault::Timeout => Failure::Timeout,
        })
    }

    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        x: &mut Exchange,
        method: &Method,
    ) -> Poll<Result<Answer, Fault>> {
        loop {
            match self.poll_send(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(SendError::Io(e))) => {
                    return Poll::Ready(Err(self.fault(x, method, e)))
                }
                Poll::Ready(Err(SendError::Body(e))) => return Poll::Ready(Err(Fault::Client(e))),
                Poll::Pending => {}
            }
            if !x.head_out && self.written == self.out.len() {
                x.head_out = true;
            }
            if self.sent() && !x.waiting {
                // Sent whole: the server's time starts now.
                x.waiting = true;
                self.idle.progress();
            }
            if let Some(answer) = self.parse_answer(method)? {
                return Poll::Ready(Ok(answer));
            }
            match self.poll_fill(cx, READ_SIZE) {
                Poll::Ready(Ok(0)) => {
                    let e = closed("connection closed before the response head");
                    return Poll::Ready(Err(self.fault(x, method, e)));
                }
                Poll::Ready(Ok(_)) => {
                    x.received = true;
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.fault(x, method, e))),
                Poll::Pending => {}
            }
            if x.waiting && self.idle.poll_expired(cx).is_ready() {
                return Poll::Ready(Err(Fault::Timeout));
            }
            return Poll::Pending;
        }
    }

    /// A failed exchange on a reused connection, before any answer byte and before any of the body was taken
    /// from the client, is a connection the server had closed: the request goes again when it is idempotent or
    /// never left.
    fn fault(&self, x: &Exchange, method: &Method, e: io::Error) -> Fault {
        let untouched = self.upload.as_ref().is_none_or(|u| !u.started);
        if self.reused && !x.received && untouched && (!x.head_out || idempotent(method)) {
            return Fault::Stale;
        }
        Fault::Upstream(e)
    }

    /// The answer's head, once the buffer holds one.
    fn parse_answer(&mut self, method: &Method) -> Result<Option<Answer>, Fault> {
        let fail = |why| Fault::Upstream(invalid(why));
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let Some(head) = head::parse_response(&mut self.buf).map_err(fail)? else {
                if self.buf.len() > MAX_HEAD {
                    return Err(fail("response head too large"));
                }
                return Ok(None);
            };
            if head.status.is_informational()
                && head.status != http::StatusCode::SWITCHING_PROTOCOLS
            {
                continue;
            }
            let framing = head::response_framing(method, &head).map_err(fail)?;
            let keep_alive = head::keeps_alive(&head, framing);
            return Ok(Some(Answer {
                head,
                body: BodyState::of(framing),
                keep_alive,
            }));
        }
    }

    /// The next piece of an answer's body: None at its end.
    pub fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        state: &mut BodyState,
    ) -> Poll<Option<io::Result<Bytes>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if !self.sent() {
            // Answered early: the request body goes on as the client sends it, as long as the server takes it.
            if let Poll::Ready(Err(_)) = self.poll_send(cx) {
                self.upload = None;
                self.broken = true;
            }
        }
        loop {
            match state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) => {
                    if !self.buf.is_empty() {
                        let take = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(self.buf.len());
                        *left -= take as u64;
                        let data = self.buf.split_to(take).freeze();
                        if *left == 0 {
                            *state = BodyState::Done;
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                    let want = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .clamp(8192, MAX_READ_SIZE);
                    match std::task::ready!(self.poll_fill(cx, want)) {
                        Ok(0) => {
                            return self.body_failed(cx, closed("body shorter than its length"))
                        }
                        Ok(_) => {}
                        Err(e) => return self.body_failed(cx, e),
                    }
                }
                BodyState::Chunked(dec) => match dec.step(&mut self.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Step::End) => {
                        *state = BodyState::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => match std::task::ready!(self.poll_fill(cx, READ_SIZE)) {
                        Ok(0) => return self.body_failed(cx, closed("chunked body cut short")),
                        Ok(_) => {}
                        Err(e) => return self.body_failed(cx, e),
                    },
                    Err(why) => return self.body_failed(cx, invalid(why)),
                },
                BodyState::Close => {
                    self.broken = true;
                    if !self.buf.is_empty() {
                        return Poll::Ready(Some(Ok(self.buf.split().freeze())));
                    }
                    match std::task::ready!(self.poll_fill(cx, READ_SIZE)) {
                        Ok(0) => {
                            *state = BodyState::Done;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return self.body_failed(cx, e),
                    }
                }
            }
        }
    }

    /// Fails the body at the next poll: the client connection first writes out what it holds of the body, so the
    /// client sees the part that came before the failure (a visibly cut response, as a relayed stream would be).
    fn body_failed(
        &mut self,
        cx: &mut Context<'_>,
        e: io::Error,
    ) -> Poll<Option<io::Result<Bytes>>> {
        self.broken = true;
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Ready once the server has been silent for the request's read timeout.
    pub fn poll_idle_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.idle.poll_expired(cx)
    }

    /// Something arrived from the server.
    pub fn progress(&mut self) {
        self.idle.progress();
    }

    /// Sends the rest of a request the server answered early; the connection, once the request is out whole.
    /// Gives up when the client's body fails or the server takes nothing for the request's read timeout.
    pub async fn finish_send(mut self) -> Option<Conn> {
        self.idle.progress();
        let sent = poll_fn(|cx| match self.poll_send(cx) {
            Poll::Ready(r) => Poll::Ready(r.is_ok()),
            Poll::Pending => self.idle.poll_expired(cx).map(|()| false),
        })
        .await;
        sent.then_some(self)
    }

    /// Back to the pool after an answer read whole: usable if nothing is left over. A buffer grown past the
    /// usual read size is let go.
    pub fn finish_answer(&mut self, keep_alive: bool) {
        if !keep_alive || !self.buf.is_empty() || !self.sent() {
            self.broken = true;
        }
        self.reused = true;
        if self.buf.capacity() > READ_SIZE {
            self.buf = BytesMut::new();
        }
    }

    /// The socket after a `101`, with the bytes the server sent after its head.
    pub fn into_upgraded(self) -> (UpstreamStream, Bytes) {
        (self.io, self.buf.freeze())
    }
}

/// A request body being sent.
struct Upload {
    body: RequestBody,
    chunked: bool,
    /// A frame has been taken from the client: the request can no longer go again.
    started: bool,
}

/// Why sending a request stopped.
enum SendError {
    Io(io::Error),
    Body(BodyError),
}

/// Where one exchange stands.
#[derive(Default)]
struct Exchange {
    /// The head has been written whole.
    head_out: bool,
    /// A byte of the answer has arrived.
    received: bool,
    /// The request is out whole and the read timeout runs.
    waiting: bool,
}

/// Why an exchange failed; `Stale`: the request may go again on another connection.
enum Fault {
    Stale,
    Upstream(io::Error),
    Client(BodyError),
    Timeout,
}
