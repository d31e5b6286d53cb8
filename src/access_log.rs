//! The access log: one line per request, written once its response body has been sent, and one per WebSocket
//! tunnel, written when the tunnel ends. A background task does the writing, so the request path never waits on
//! a disk: lines are queued, and dropped when the writer is too far behind.
//!
//! A line reads `CLIENT "METHOD PATH" STATUS bytes=N upstream=U server=S duration_ms=D sticky=X`; a tunnel's line
//! adds `bytes_in=N`, what the client sent through it (`bytes` is always what the client received).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config;

/// Lines queued before new ones are dropped rather than wait.
const QUEUE: usize = 8192;
/// Bytes gathered into one write.
const BATCH: usize = 64 * 1024;

enum Msg {
    Line(String),
    /// Write everything queued before this, then answer.
    Flush(oneshot::Sender<()>),
}

/// Where access log lines go.
pub struct AccessLog {
    tx: Option<mpsc::Sender<Msg>>,
}

impl AccessLog {
    /// Opens the configured destination and starts its writer.
    pub fn open(dest: &config::AccessLog) -> Result<AccessLog, String> {
        let out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match dest {
            config::AccessLog::Off => return Ok(AccessLog { tx: None }),
            config::AccessLog::Stderr => Box::new(tokio::io::stderr()),
            config::AccessLog::File(path) => Box::new(open_file(path)?),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, out));
        Ok(AccessLog { tx: Some(tx) })
    }

    /// Whether lines are written at all (else requests need not keep what a line says).
    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// `body`, counting what it sends: `entry`'s line is queued once it has been sent (or dropped).
    pub fn wrap<B>(&self, entry: Option<Entry>, body: B) -> Logged<B> {
        let pending = self.tx.as_ref().zip(entry).map(|(tx, entry)| {
            Box::new(Pending {
                entry,
                tx: tx.clone(),
                bytes: 0,
            })
        });
        Logged {
            inner: body,
            pending,
        }
    }

    /// Queues the line of a WebSocket tunnel that has ended, with the bytes it carried each way.
    pub fn tunnel_ended(&self, entry: &Entry, from_server: u64, from_client: u64) {
        if let Some(tx) = &self.tx {
            queue(tx, entry.line(from_server, Some(from_client)));
        }
    }

    /// Waits (a second at most) until every line queued so far is written.
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, written) = oneshot::channel();
        let wait = async {
            if tx.send(Msg::Flush(done)).await.is_ok() {
                let _ = written.await;
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), wait).await;
    }
}

fn open_file(path: &Path) -> Result<tokio::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(tokio::fs::File::from_std)
        .map_err(|e| format!("cannot open access_log {}: {e}", path.display()))
}

async fn write_lines(
    mut rx: mpsc::Receiver<Msg>,
    mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
) {
    let mut batch = String::new();
    let mut acks = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => batch.push_str(&line),
                Msg::Flush(ack) => acks.push(ack),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if out.write_all(batch.as_bytes()).await.is_err() {
            return;
        }
        let _ = out.flush().await;
        batch.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// What a line says of its request, gathered when the response head is ready.
pub struct Entry {
    /// The client address after PROXY protocol and `trusted_proxies`.
    pub client: IpAddr,
    pub method: Method,
    /// Only its path is written.
    pub uri: Uri,
    pub status: u16,
    pub upstream: Option<String>,
    pub server: Option<String>,
    /// What the sticky lookup found (`hit`, `miss`, `new`, `dead`).
    pub sticky: Option<&'static str>,
    pub started: Instant,
}

/// Queues a line for the writer; a full queue drops it (counted).
fn queue(tx: &mpsc::Sender<Msg>, line: String) {
    if tx.try_send(Msg::Line(line)).is_err() {
        crate::metrics::metrics().access_log_dropped.inc();
    }
}

impl Entry {
    /// The line, with the bytes the client received (and, for a tunnel, those it sent).
    fn line(&self, bytes: u64, bytes_in: Option<u64>) -> String {
        let mut s = String::with_capacity(160);
        let server = self.server.as_deref().unwrap_or("-");
        let upstream = self.upstream.as_deref().unwrap_or("-");
        let _ = write!(
            s,
            "{} \"{} {}\" {} bytes={} upstream={} server={} duration_ms={:.1} sticky={}",
            self.client,
            self.method,
            self.uri.path(),
            self.status,
            bytes,
            upstream,
            server,
            self.started.elapsed().as_secs_f64() * 1000.0,
            self.sticky.unwrap_or("-"),
        );
        if let Some(n) = bytes_in {
            let _ = write!(s, " bytes_in={n}");
        }
        s.push('\n');
        s
    }
}

/// A line waiting for the end of its response body.
struct Pending {
    entry: Entry,
    tx: mpsc::Sender<Msg>,
    bytes: u64,
}

/// A response body that counts what it sends and queues its access log line when it is done (or dropped).
pub struct Logged<B> {
    inner: B,
    pending: Option<Box<Pending>>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Some(p), Poll::Ready(Some(Ok(frame)))) = (this.pending.as_mut(), &polled) {
            if let Some(data) = frame.data_ref() {
                p.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            queue(&p.tx, p.entry.line(p.bytes, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            client: [10, 0, 0, 7].into(),
            method: Method::POST,
            uri: "/socket.io/?EIO=4&sid=abc".parse().unwrap(),
            status: 200,
            upstream: None,
            server: None,
            sticky: Some("hit"),
            started: Instant::now(),
        }
    }

    #[test]
    fn a_request_line_has_every_field_and_no_query() {
        let line = entry().line(2, None);
        assert!(line.starts_with(
            "10.0.0.7 \"POST /socket.io/\" 200 bytes=2 upstream=- server=- duration_ms="
        ));
        assert!(line.ends_with(" sticky=hit\n"), "{line}");
    }

    #[test]
    fn a_tunnel_line_adds_what_the_client_sent() {
        let line = entry().line(7, Some(11));
        assert!(line.contains(" bytes=7 "), "{line}");
        assert!(line.ends_with(" sticky=hit bytes_in=11\n"), "{line}");
    }
}
