//! limpet: a sticky-session HTTP/1.1 and WebSocket reverse proxy for Socket.IO fleets.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, its defaults and validation (every error with its key path).
//! - [`runtime`]: the immutable snapshot built from a config; state carried across reloads.
//! - [`app`]: the running process: snapshot swap on reload, graceful shutdown, signals, binary upgrades
//!   (with [`upgrade`], the hand-over channel).
//! - [`listener`]: accept loops, PROXY protocol, TLS, HTTP/1.1 serving of client connections.
//! - [`proxy`]: one request, one way: read its facts once (`request`), route, plan (`affinity`: sid stickiness),
//!   send over pooled upstream connections, respond; errors; the WebSocket tunnel.
//! - [`upstream`]: server groups, per-server state, the pick (primaries, then backups), connection pools.
//! - [`balance`]: round robin, least connections, ip_hash, consistent hash.
//! - [`sticky`]: Engine.IO parsing and the sid → server table.
//! - [`health`]: active health checks.
//! - [`metrics`], [`admin`], [`access_log`]: what operators see.
//! - [`tls`], [`proxy_protocol`], [`stream`]: the edge.
//! - [`cli`]: the `limpet` command; [`convert_nginx`]: `limpet convert-nginx`.
//! - [`conn`]: a client connection's plumbing, which knows nothing of routing: its stream and deadlines, the
//!   framing scan of its heads, its slots (the connection cap, per-address caps, idle reuse).
//! - [`request_body`]: the client's body as sent upstream.
//! - [`deadline`], [`clock`], [`sync`]: checked deadlines and the lazily re-armed idle timer, the millisecond
//!   clock, the lock helper.
//! - [`warn_limit`]: per-request warnings, rate-limited.
//!
//! Only the command, the in-process entry and the parsers of peer input (for the tests and fuzz targets) are
//! public: everything else is the crate's own, so the compiler reports what nothing uses.
#![forbid(unsafe_code)]

mod access_log;
mod admin;
mod app;
mod balance;
pub mod cli;
mod clock;
mod config;
mod conn;
mod convert_nginx;
mod cookie;
mod deadline;
mod health;
mod listener;
mod metrics;
mod proxy;
pub mod proxy_protocol;
mod request_body;
mod runtime;
mod sticky;
mod stream;
mod sync;
mod tls;
mod upgrade;
mod upstream;
mod warn_limit;

pub use app::Command;
pub use config::parse as parse_config;
pub use conn::HeadScan;
pub use sticky::engineio;
pub use sticky::table::SessionTable;
/// The upstream HTTP/1.1 reader's parsers (response heads, chunked bodies), for property tests and fuzzing.
pub use upstream::h1;

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Runs limpet in this process: loads the config at `config_path`, serves on the listen sockets of `sockets`
/// (keyed by the address the config lists, so a caller can bind port 0 and know the address beforehand) and
/// binds the others, until `commands` says stop or closes. Signals are left to the caller.
pub async fn run(
    config_path: PathBuf,
    sockets: Vec<(SocketAddr, std::net::TcpListener)>,
    commands: mpsc::Receiver<Command>,
) -> Result<(), String> {
    let loaded = config::load(&config_path).map_err(|e| e.to_string())?;
    let sockets = sockets
        .into_iter()
        .map(|(addr, socket)| {
            socket.set_nonblocking(true)?;
            Ok((addr, TcpListener::from_std(socket)?))
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("listen socket: {e}"))?;
    let (app, admin) = app::App::start(config_path, loaded, (sockets, None))
        .await
        .map_err(|e| e.to_string())?;
    let admin = admin.map(|admin| tokio::spawn(admin::serve(app.clone(), admin)));
    app.drive(commands).await;
    // The admin listener serves through the graceful drain and closes with it.
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(())
}
