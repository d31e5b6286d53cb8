//! Keep-alive connections to one upstream server, plain TCP or TLS: a lock-free queue of idle senders, bounded by
//! `keepalive`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
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
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// HTTPS to one server: the client settings and the name its certificate must carry.
#[derive(Clone)]
pub struct TlsTarget {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl TlsTarget {
    /// The target for the server written `addr_name` (`host:port`): its certificate must carry `server_name` when
    /// given, else the host of `addr_name` (an IP address is checked against the certificate's IP names).
    pub fn new(
        config: Arc<rustls::ClientConfig>,
        server_name: Option<&str>,
        addr_name: &str,
    ) -> Result<TlsTarget, String> {
        let host = server_name.unwrap_or_else(|| host_of(addr_name));
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::from(ip),
            Err(_) => ServerName::try_from(host.to_string())
                .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?,
        };
        Ok(TlsTarget {
            connector: TlsConnector::from(config),
            name,
        })
    }
}

/// The host of `host:port` (IPv6 brackets removed).
fn host_of(addr_name: &str) -> &str {
    let host = addr_name
        .rsplit_once(':')
        .map_or(addr_name, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// A fresh stream to a server: plain TCP, or TLS over it for an upstream with `tls = true`.
pub type UpstreamStream = crate::stream::MaybeTls<TlsStream<TcpStream>>;

/// The idle connections of one server.
pub struct Pool {
    addr: SocketAddr,
    tls: Option<TlsTarget>,
    idle: Option<ArrayQueue<SendRequest<RequestBody>>>,
}

impl Pool {
    /// A pool keeping at most `keepalive` idle connections (0 = close each after use), speaking TLS when `tls`.
    pub fn new(addr: SocketAddr, keepalive: usize, tls: Option<TlsTarget>) -> Pool {
        Pool {
            addr,
            tls,
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

    /// A new stream to the server, outside the pool: the TCP connect and any TLS handshake within `timeout`.
    pub async fn open(&self, timeout: Duration) -> Result<UpstreamStream, ConnectError> {
        tokio::time::timeout(timeout, self.open_now())
            .await
            .map_err(|_| ConnectError::Timeout)?
    }

    async fn open_now(&self) -> Result<UpstreamStream, ConnectError> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            return Ok(UpstreamStream::Tcp(stream));
        };
        let stream = tls
            .connector
            .connect(tls.name.clone(), stream)
            .await
            .map_err(ConnectError::Tls)?;
        Ok(UpstreamStream::Tls(Box::new(stream)))
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<Conn, ConnectError> {
        // Each kind of stream keeps its own type so the tunnel can recognize a plain socket.
        let sender = match self.open(connect_timeout).await? {
            UpstreamStream::Tcp(s) => self.handshake(s).await?,
            UpstreamStream::Tls(s) => self.handshake(*s).await?,
        };
        Ok(Conn {
            sender,
            reused: false,
        })
    }

    async fn handshake<T>(&self, io: T) -> Result<SendRequest<RequestBody>, ConnectError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = Builder::new().handshake(TokioIo::new(io)).await?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("node-1.internal:3000"), "node-1.internal");
        assert_eq!(host_of("127.0.0.1:443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("bare"), "bare");
    }

    #[test]
    fn server_names() {
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        );
        let name = |configured, addr| {
            TlsTarget::new(config.clone(), configured, addr).map(|t| format!("{:?}", t.name))
        };
        assert!(name(None, "node-1.internal:3000")
            .unwrap()
            .contains("node-1.internal"));
        assert!(name(None, "[::1]:3000").unwrap().contains("IpAddress"));
        assert!(name(Some("api.example.com"), "10.0.0.1:443")
            .unwrap()
            .contains("api.example.com"));
        assert!(name(Some("bad name!"), "10.0.0.1:443").is_err());
    }
}
