//! HTTP/1.1 origin for the bench: `GET /64k` → 65,536 bytes, any other request → "ok".

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

static BODY_64K: [u8; 65536] = [b'x'; 65536];

#[derive(Parser)]
#[command(about = "HTTP/1.1 bench origin: / -> \"ok\", /64k -> 65536 bytes")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// tokio worker threads
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    limpet_bench_tools::raise_nofile_limit();
    limpet_bench_tools::runtime(args.threads)?.block_on(serve(args.listen))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = limpet_bench_tools::bind_and_announce(addr).await?;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                limpet_bench_tools::backoff_after_accept_error(&e).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(respond));
            // Peers resetting mid-request are normal under load; nothing to report.
            let _ = conn.await;
        });
    }
}

async fn respond(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.uri().path() == "/64k" {
        Bytes::from_static(&BODY_64K)
    } else {
        Bytes::from_static(b"ok")
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}
