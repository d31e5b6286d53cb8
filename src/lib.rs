//! limpet: a sticky-session HTTP/1.1 and WebSocket reverse proxy for Socket.IO fleets.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, its defaults and validation (every error with its key path).
//! - [`runtime`]: the immutable snapshot built from a config; state carried across reloads.
//! - [`app`]: the running process: snapshot swap on reload, graceful shutdown, signals.
//! - [`listener`]: accept loops, PROXY protocol, TLS, HTTP/1.1 serving of client connections.
//! - [`proxy`]: forwarding a request (routing, sticky lookup, pooled upstream connections, errors) and the
//!   WebSocket tunnel.
//! - [`upstream`]: server groups, per-server state, the pick (primaries, then backups), connection pools.
//! - [`balance`]: round robin, least connections, ip_hash, consistent hash.
//! - [`sticky`]: Engine.IO parsing and the sid → server table.
//! - [`health`]: active health checks.
//! - [`metrics`], [`admin`], [`access_log`]: what operators see.
//! - [`tls`], [`proxy_protocol`], [`stream`]: the edge.
//! - [`convert_nginx`]: `limpet convert-nginx`.
//! - [`conn`]: a connection's deadlines and slots (the connection cap, per-address caps, idle reuse).
//! - [`warn_limit`]: per-request warnings, rate-limited.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod balance;
pub mod clock;
pub mod config;
pub mod conn;
pub mod convert_nginx;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod runtime;
pub mod sticky;
pub mod stream;
pub mod sync;
pub mod tls;
pub mod upstream;
pub mod warn_limit;
