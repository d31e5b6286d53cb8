//! Keep-alive connections to one upstream server, plain TCP or TLS: a stack of idle senders, bounded by
//! `keepalive`, the most recently used taken first (so connections past what the load needs age out), each closed
//! once idle for `keepalive_timeout`. Pools outlive reloads for servers whose address and settings stay.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus::IntCounter;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::conn::Conn;
use crate::sync::lock;

/// Why a connection to a server could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
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

/// An idle connection and when it was handed back.
struct Idle {
    conn: Conn,
    since: Instant,
}

impl Idle {
    /// Still open, and idle for less than `timeout`.
    fn fresh(&mut self, timeout: Duration) -> bool {
        self.since.elapsed() < timeout && !self.conn.is_closed()
    }
}

/// The idle connections of one server.
pub struct Pool {
    addr: SocketAddr,
    /// Replaced on a reload that keeps the pool (a CA file may have been rewritten).
    tls: ArcSwapOption<TlsTarget>,
    keepalive: usize,
    keepalive_timeout: Duration,
    /// Oldest at the front, most recently returned at the back. The lock is held for one push or pop, never
    /// across I/O.
    idle: Mutex<VecDeque<Idle>>,
    /// Connections opened for requests.
    connects: IntCounter,
}

impl Pool {
    /// A pool keeping at most `keepalive` idle connections (0 = close each after use) for at most
    /// `keepalive_timeout` each, speaking TLS when `tls`; `connects` counts the connections it opens.
    pub fn new(
        addr: SocketAddr,
        keepalive: usize,
        keepalive_timeout: Duration,
        tls: Option<TlsTarget>,
        connects: IntCounter,
    ) -> Pool {
        Pool {
            addr,
            tls: ArcSwapOption::from(tls.map(Arc::new)),
            keepalive,
            keepalive_timeout,
            idle: Mutex::new(VecDeque::with_capacity(keepalive.min(64))),
            connects,
        }
    }

    /// The most recently used idle connection that is still open and fresh.
    fn pop(&self) -> Option<Conn> {
        loop {
            let mut idle = lock(&self.idle).pop_back()?;
            if idle.fresh(self.keepalive_timeout) {
                return Some(idle.conn);
            }
        }
    }

    /// An idle connection that is still open, or a new one.
    pub async fn get(&self, connect_timeout: Duration) -> Result<Conn, ConnectError> {
        if let Some(conn) = self.pop() {
            return Ok(conn);
        }
        self.connect(connect_timeout).await
    }

    /// Returns a connection whose response has been read to the end. Past `keepalive` idle ones, the oldest is
    /// closed: `keepalive` bounds idle connections only.
    pub fn put(&self, conn: Conn) {
        if self.keepalive == 0 || !conn.is_open() {
            return;
        }
        let since = Instant::now();
        let oldest = {
            let mut idle = lock(&self.idle);
            let oldest = (idle.len() >= self.keepalive)
                .then(|| idle.pop_front())
                .flatten();
            idle.push_back(Idle { conn, since });
            oldest
        };
        drop(oldest);
    }

    /// Closes the connections idle for `keepalive_timeout` or more, and those the server closed.
    pub fn close_idle(&self) {
        let timeout = self.keepalive_timeout;
        let stale: VecDeque<Idle> = {
            let mut idle = lock(&self.idle);
            if idle.iter_mut().all(|i| i.fresh(timeout)) {
                return;
            }
            let (keep, stale) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| i.since.elapsed() < timeout && i.conn.is_open());
            *idle = keep;
            stale
        };
        drop(stale);
    }

    /// The TLS settings for connections opened from now on.
    pub fn set_tls(&self, tls: Option<TlsTarget>) {
        self.tls.store(tls.map(Arc::new));
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
        let Some(tls) = self.tls.load_full() else {
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
        let conn = Conn::new(self.open(connect_timeout).await?);
        self.connects.inc();
        Ok(conn)
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
