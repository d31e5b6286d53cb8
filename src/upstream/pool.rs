//! Keep-alive connections to one upstream server: a lock-free queue of idle senders, bounded by `keepalive`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::proxy::body::RequestBody;

/// A connection to a server, ready for one request.
pub struct Conn {
    pub sender: SendRequest<RequestBody>,
    /// Taken from the idle queue rather than freshly connected.
    pub reused: bool,
}

/// Why a connection to a server could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// The idle connections of one server.
pub struct Pool {
    addr: SocketAddr,
    idle: Option<ArrayQueue<SendRequest<RequestBody>>>,
}

impl Pool {
    /// A pool keeping at most `keepalive` idle connections (0 = close each after use).
    pub fn new(addr: SocketAddr, keepalive: usize) -> Pool {
        Pool {
            addr,
            idle: (keepalive > 0).then(|| ArrayQueue::new(keepalive)),
        }
    }

    /// An idle connection that is still open, or a new one.
    pub async fn get(&self, connect_timeout: Duration) -> Result<Conn, ConnectError> {
        while let Some(mut sender) = self.idle.as_ref().and_then(|q| q.pop()) {
            if sender.is_closed() {
                continue;
            }
            if sender.is_ready() {
                return Ok(Conn {
                    sender,
                    reused: true,
                });
            }
            // Returned at the end of a response body; the connection turns idle a moment later.
            if let Ok(Ok(())) = tokio::time::timeout(connect_timeout, sender.ready()).await {
                return Ok(Conn {
                    sender,
                    reused: true,
                });
            }
        }
        self.connect(connect_timeout).await
    }

    /// Returns a connection whose response has been read to the end.
    pub fn put(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        if let Some(q) = &self.idle {
            // A full queue drops the connection, which closes it: `keepalive` bounds idle connections only.
            let _ = q.push(sender);
        }
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<Conn, ConnectError> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        stream.set_nodelay(true)?;
        let (sender, conn) = Builder::new().handshake(TokioIo::new(stream)).await?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        Ok(Conn {
            sender,
            reused: false,
        })
    }
}
