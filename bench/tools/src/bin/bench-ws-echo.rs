//! WebSocket echo origin for the bench: every text or binary message is sent straight back.

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use limpet_bench_tools::OriginArgs;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "WebSocket echo origin (any path)")]
struct Args {
    #[command(flatten)]
    origin: OriginArgs,
}

fn main() -> std::io::Result<()> {
    limpet_bench_tools::run_origin(&Args::parse().origin, echo)
}

/// An idle connection is one parked task plus tungstenite's read buffer: nothing else is held.
async fn echo(stream: TcpStream) {
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
