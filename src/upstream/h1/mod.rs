//! limpet's HTTP/1.1 client for the upstream side, narrow on purpose: a request head written whole, a response
//! head parsed with `httparse`, bodies framed by length, chunks or the connection's end. The connection that
//! runs it is [`super::conn::Conn`].

pub mod chunked;
pub mod head;
