//! A client connection's plumbing, which knows nothing of routing: its stream and deadlines, the framing scan of
//! its request heads, and its slots (the connection cap, per-address caps, idle reuse).

pub mod head_scan;
pub mod idle_io;
pub mod slots;
pub mod streams;
pub mod tunnels;

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub use head_scan::{HeadCounts, HeadScan};

/// A client connection, plain or TLS.
pub type ClientStream = crate::stream::MaybeTls<TlsStream<TcpStream>>;

/// What limpet knows of the client connection a request came on.
#[derive(Clone)]
pub struct ClientInfo {
    /// The TCP peer (or the source a PROXY protocol header gave).
    pub peer: SocketAddr,
    /// The peer's address as header text (`X-Forwarded-For`, `X-Real-IP`), made once per connection.
    pub peer_text: HeaderValue,
    /// The listen address it was accepted on, as configured.
    pub listener: SocketAddr,
    pub https: bool,
    /// Held by the connection and by a tunnel it turns into.
    pub hold: Arc<ConnHold>,
}

/// What a client connection holds while it lives, tunnel included.
pub struct ConnHold {
    /// Tracks tunnels for graceful shutdown.
    pub tracker: tokio_util::task::TaskTracker,
    /// Its slot under `max_connections`.
    pub permit: slots::Permit,
    /// Its place under `max_connections_per_ip`, when the listener has one.
    pub _per_ip: Option<slots::IpPermit>,
    /// The open streams of an HTTP/2 connection (None on HTTP/1.1).
    pub streams: Option<Arc<streams::Streams>>,
    /// The process's open tunnels, closed paced when it has to close them all.
    pub tunnels: Arc<tunnels::Tunnels>,
}

/// When open tunnels are closed: one after another between `from` and `from + spread`, so the fleet behind and
/// the clients in front see a trickle of reconnects, not a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseAt {
    pub from: tokio::time::Instant,
    pub spread: std::time::Duration,
}

impl CloseAt {
    /// The closing window that ends `within` from now and lasts `spread` (at most `within`).
    pub fn ending_within(within: std::time::Duration, spread: std::time::Duration) -> CloseAt {
        let spread = spread.min(within);
        CloseAt {
            from: crate::deadline::after(tokio::time::Instant::now(), within - spread),
            spread,
        }
    }
}
