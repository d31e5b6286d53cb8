//! HTTP/1.1 origin for the bench: `GET /64k` → 65,536 bytes, `GET /connections` → how many connections it has
//! accepted so far, any other request → "ok".

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use limpet_bench_tools::OriginArgs;
use tokio::net::TcpStream;

static BODY_64K: [u8; 65536] = [b'x'; 65536];

/// Connections accepted since the start.
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

#[derive(Parser)]
#[command(about = "HTTP/1.1 bench origin: / -> \"ok\", /64k -> 65536 bytes, /connections -> accepted so far")]
struct Args {
    #[command(flatten)]
    origin: OriginArgs,
}

fn main() -> std::io::Result<()> {
    limpet_bench_tools::run_origin(&Args::parse().origin, serve)
}

async fn serve(stream: TcpStream) {
    ACCEPTED.fetch_add(1, Relaxed);
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service_fn(respond));
    // Peers resetting mid-request are normal under load; nothing to report.
    let _ = conn.await;
}

async fn respond(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.uri().path() {
        "/64k" => Bytes::from_static(&BODY_64K),
        "/connections" => Bytes::from(ACCEPTED.load(Relaxed).to_string()),
        _ => Bytes::from_static(b"ok"),
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}
