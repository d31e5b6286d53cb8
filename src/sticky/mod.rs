//! Sticky sessions for Socket.IO: Engine.IO wire parsing and the sid → server table.
//!
//! - [`engineio`]: pure functions that find a request's sid (query, then `io` cookie) and the sid an
//!   Engine.IO handshake answer opens (EIO=3 and EIO=4 bodies, `io` Set-Cookie).
//! - [`table`]: the sharded, bounded, expiring in-memory [`SessionTable`].

pub mod engineio;
pub mod store;
pub mod table;

pub use table::ServerId;
