//! WebSocket echo origin for the bench: every text or binary message is sent straight back.

use std::net::SocketAddr;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "WebSocket echo origin (any path)")]
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
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(echo(stream));
            }
            Err(e) => limpet_bench_tools::backoff_after_accept_error(&e).await,
        }
    }
}

/// An idle connection is one parked task plus tungstenite's read buffer: nothing else is held.
async fn echo(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                if ws.send(msg).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            // Pings are answered by tungstenite itself on the next read or write.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}
