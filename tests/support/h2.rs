//! An HTTP/2 client for the tests (hyper's): prior knowledge over TCP, or ALPN `h2` over TLS; one connection
//! carries every request sent through it. Also a raw frame writer for abuse tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::eio::{Exchange, Reply};

const WAIT: Duration = Duration::from_secs(30);

/// One HTTP/2 connection to limpet.
pub struct H2 {
    pub send: SendRequest<Full<Bytes>>,
    /// Requests sent so far.
    pub requests: usize,
}

impl H2 {
    /// Prior knowledge over plain TCP (a listener with `h2c = true`).
    pub async fn connect(addr: SocketAddr) -> H2 {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        H2::handshake(tcp).await
    }

    /// TLS with ALPN `h2` (and `http/1.1`), trusting `roots`; panics unless `h2` was agreed.
    pub async fn connect_tls(addr: SocketAddr, roots: rustls::RootCertStore) -> H2 {
        let tls = tls_connect(addr, roots, &[b"h2", b"http/1.1"]).await;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "limpet agreed h2"
        );
        H2::handshake(tls).await
    }

    pub async fn handshake<S>(io: S) -> H2
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        H2 { send, requests: 0 }
    }

    /// Sends a request and reads the whole answer; Err when the stream or connection failed.
    pub async fn try_request(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        self.requests += 1;
        tokio::time::timeout(WAIT, self.send.ready())
            .await
            .map_err(|_| "connection not ready in time".to_string())?
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(WAIT, self.send.send_request(req))
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(WAIT, body.collect())
            .await
            .map_err(|_| "body not whole in time".to_string())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        let head = parts
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join("\r\n");
        Ok(Reply {
            status: parts.status.as_u16(),
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// `GET path` on this connection.
    pub async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, "", "").await
    }
}

/// An HTTP/2 request for `target` with `headers` ("Name: value\r\n" each).
pub fn request(method: &str, target: &str, headers: &str, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(format!("http://limpet{target}"))
        .version(Version::HTTP_2);
    for line in headers.split("\r\n").filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').expect("Name: value");
        b = b.header(k.trim(), v.trim());
    }
    if !body.is_empty() {
        b = b.header("content-type", "text/plain;charset=UTF-8");
    }
    b.body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

impl Exchange for H2 {
    async fn send(&mut self, method: &str, target: &str, headers: &str, body: &str) -> Reply {
        let n = self.requests + 1;
        self.try_request(request(method, target, headers, body))
            .await
            .unwrap_or_else(|e| panic!("{method} {target} (request {n}) failed: {e}"))
    }
}

/// A TLS connection to `addr` offering `alpn`, trusting `roots`, for the name "localhost".
pub async fn tls_connect(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake in time")
    .expect("TLS handshake")
}

/// A certificate for "localhost" and 127.0.0.1 written to `dir` (cert.pem, key.pem), and roots that trust it.
pub fn localhost_cert(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    rustls::RootCertStore,
) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    (cert_path, key_path, roots)
}

/// A raw connection that has sent the client preface and an empty SETTINGS frame, nothing more.
pub async fn raw_preface(addr: SocketAddr) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    s.write_all(frame::PREFACE).await.unwrap();
    s.write_all(&frame::frame(frame::SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    s
}

/// Sends a GET of `path` on `stream` (HEADERS ending the stream) over a raw connection.
pub async fn send_get(s: &mut TcpStream, stream: u32, path: &str) {
    use tokio::io::AsyncWriteExt;
    let headers = frame::frame(
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        stream,
        &frame::get_block(path, &[]),
    );
    s.write_all(&headers).await.expect("send HEADERS");
}

/// One frame as read: (kind, flags, stream, payload).
pub type Frame = (u8, u8, u32, Vec<u8>);

/// Reads frames until limpet closes or `timeout` passes: the whole frames read, and whether it closed.
pub async fn read_frames(s: &mut TcpStream, timeout: Duration) -> (Vec<Frame>, bool) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut chunk = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut frames = Vec::new();
    let mut rest = &buf[..];
    while rest.len() >= 9 {
        let len = frame::length(rest);
        if rest.len() < 9 + len {
            break;
        }
        let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        frames.push((rest[3], rest[4], id, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    (frames, closed)
}

/// The error code of the first GOAWAY among `frames`.
pub fn goaway_code(frames: &[Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|(kind, ..)| *kind == frame::GOAWAY)
        .and_then(|(_, _, _, p)| p.get(4..8))
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

/// Raw HTTP/2 frames, for peers that misbehave on purpose.
pub mod frame {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;

    /// The payload length a frame header gives.
    pub fn length(head: &[u8]) -> usize {
        (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2])
    }

    /// One frame: 9-byte header, then the payload.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// HPACK for a GET of `path` on "limpet" over http, with literal fields (no indexing, no Huffman) and
    /// `extra` literal (name, value) pairs.
    pub fn get_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        // Indexed: :method GET (2), :scheme http (6).
        let mut out = vec![0x82, 0x86];
        literal_indexed_name(&mut out, 4, path); // :path
        literal_indexed_name(&mut out, 1, "limpet"); // :authority
        for (name, value) in extra {
            out.push(0x00);
            string(&mut out, name);
            string(&mut out, value);
        }
        out
    }

    fn literal_indexed_name(out: &mut Vec<u8>, index: u8, value: &str) {
        // Literal without indexing, indexed name (4-bit prefix; every index used here is < 15).
        out.push(index);
        string(out, value);
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        integer(out, 7, 0x00, s.len());
        out.extend_from_slice(s.as_bytes());
    }

    /// An HPACK integer with an `n`-bit prefix and `flags` in the high bits.
    pub fn integer(out: &mut Vec<u8>, n: u32, flags: u8, mut value: usize) {
        let max = (1usize << n) - 1;
        if value < max {
            out.push(flags | value as u8);
            return;
        }
        out.push(flags | max as u8);
        value -= max;
        while value >= 128 {
            out.push((value % 128 + 128) as u8);
            value /= 128;
        }
        out.push(value as u8);
    }
}
