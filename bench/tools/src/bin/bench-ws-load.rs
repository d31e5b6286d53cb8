//! WebSocket load client for the bench.
//!
//! Echo mode (default): `--conns` connections each send a `--size`-byte binary message, wait for the
//! echo and repeat until `--duration` is up; prints one JSON line
//! `{"conns":…,"msgs":…,"seconds":…,"rate":…,"p50_us":…,"p99_us":…,"errors":…}`.
//!
//! Idle mode (`--idle N`): opens N connections (spread over 127.0.0.1, 127.0.0.2, … once N passes
//! what one source address has ephemeral ports for), prints `OPEN <n>` (or `OPEN <n> LIMIT <reason>`
//! when the open-file limit stopped it, `OPEN <n> ERROR <reason>` on any other failure), and with
//! `--hold-until-stdin-closes` keeps them open until stdin reaches EOF.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{stream, SinkExt, StreamExt};
use limpet_bench_tools::{is_fd_exhaustion, parse_duration, raise_nofile_limit};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{self, http::Uri, Message};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

#[derive(Parser)]
#[command(about = "WebSocket echo-rate client and idle-connection holder")]
struct Args {
    /// ws://HOST:PORT/PATH
    #[arg(long)]
    url: String,
    /// echo mode: concurrent connections
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// echo mode: how long to send for (e.g. 10s, 500ms)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// echo mode: message size in bytes
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// idle mode: open this many connections and hold them
    #[arg(long)]
    idle: Option<usize>,
    /// idle mode: keep the connections until stdin is closed (otherwise exit once they are open)
    #[arg(long)]
    hold_until_stdin_closes: bool,
    /// connection handshakes in flight at once
    #[arg(long, default_value_t = 200)]
    open_concurrency: usize,
    /// give up on one connection's TCP + WebSocket handshake after this long
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    open_timeout: Duration,
    /// connections per local source address before moving on to the next 127.0.0.x
    /// (default: the size of net.ipv4.ip_local_port_range less 1,000)
    #[arg(long)]
    ports_per_source: Option<usize>,
    /// tokio worker threads
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// Why opening a connection failed: the open-file limit, or anything else.
enum OpenError {
    Limit(String),
    Other(String),
}

impl From<std::io::Error> for OpenError {
    fn from(e: std::io::Error) -> Self {
        if is_fd_exhaustion(&e) {
            OpenError::Limit(e.to_string())
        } else {
            OpenError::Other(e.to_string())
        }
    }
}

impl From<tungstenite::Error> for OpenError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Io(io) => io.into(),
            tungstenite::Error::Http(resp) => {
                OpenError::Other(format!("handshake answered HTTP {}", resp.status()))
            }
            other => OpenError::Other(other.to_string()),
        }
    }
}

impl OpenError {
    fn describe(&self) -> &str {
        match self {
            OpenError::Limit(s) | OpenError::Other(s) => s,
        }
    }
}

fn main() {
    let args = Args::parse();
    let nofile = raise_nofile_limit();
    let rt = match limpet_bench_tools::runtime(args.threads) {
        Ok(rt) => rt,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    let target = match rt.block_on(resolve(&args.url)) {
        Ok(t) => t,
        Err(e) => fail(&e),
    };
    match args.idle {
        Some(n) => rt.block_on(idle(&args, target, n, nofile)),
        None => rt.block_on(echo(&args, target)),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-ws-load: {msg}");
    std::process::exit(1)
}

async fn resolve(url: &str) -> Result<SocketAddr, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad --url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("ws") {
        return Err(format!("--url must start with ws:// (got {url:?})"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("--url {url:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{host} resolves to nothing"))
}

async fn open(url: &str, target: SocketAddr, source: Option<IpAddr>) -> Result<Ws, OpenError> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

/// Opens `n` connections, `concurrency` handshakes at a time, stopping at the first failure.
async fn open_many(args: &Args, target: SocketAddr, n: usize) -> (Vec<Ws>, Option<OpenError>) {
    let per_source = args
        .ports_per_source
        .unwrap_or_else(ports_per_source_address)
        .max(1);
    let spread = target.ip().is_loopback() && target.is_ipv4() && n > per_source;
    let timeout = args.open_timeout;
    let mut opening = stream::iter(0..n)
        .map(|i| {
            let source = spread.then(|| {
                let last = (1 + i / per_source).min(254) as u8;
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
            });
            let url = args.url.as_str();
            async move {
                match tokio::time::timeout(timeout, open(url, target, source)).await {
                    Ok(r) => r,
                    Err(_) => Err(OpenError::Other(format!(
                        "handshake not answered within {timeout:?}"
                    ))),
                }
            }
        })
        .buffer_unordered(args.open_concurrency.max(1));
    let mut open = Vec::with_capacity(n);
    while let Some(result) = opening.next().await {
        match result {
            Ok(ws) => open.push(ws),
            Err(e) => return (open, Some(e)),
        }
    }
    (open, None)
}

/// Ephemeral ports one source address can use towards one destination, less a margin.
fn ports_per_source_address() -> usize {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let mut bounds = range
        .iter()
        .flat_map(|s| s.split_whitespace())
        .filter_map(|v| v.parse::<usize>().ok());
    match (bounds.next(), bounds.next()) {
        (Some(lo), Some(hi)) if hi > lo + 2000 => hi - lo + 1 - 1000,
        _ => 20_000,
    }
}

async fn idle(args: &Args, target: SocketAddr, n: usize, nofile: u64) {
    let (held, stopped) = open_many(args, target, n).await;
    match &stopped {
        None => println!("OPEN {}", held.len()),
        Some(OpenError::Limit(why)) => println!(
            "OPEN {} LIMIT open-file limit of the client (RLIMIT_NOFILE {nofile}): {why}",
            held.len()
        ),
        Some(OpenError::Other(why)) => println!("OPEN {} ERROR {why}", held.len()),
    }
    if args.hold_until_stdin_closes {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 512];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    }
    drop(held);
}

struct ConnResult {
    latencies_us: Vec<u32>,
    error: Option<String>,
}

async fn echo(args: &Args, target: SocketAddr) {
    let (conns, stopped) = open_many(args, target, args.conns).await;
    if let Some(e) = stopped {
        fail(&format!(
            "opened {} of {} connections: {}",
            conns.len(),
            args.conns,
            e.describe()
        ));
    }
    let payload = vec![b'x'; args.size];
    let start = Instant::now();
    let deadline = start + args.duration;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|ws| tokio::spawn(echo_loop(ws, payload.clone(), deadline)))
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0usize;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(r) => {
                latencies.extend_from_slice(&r.latencies_us);
                if let Some(e) = r.error {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        eprintln!("bench-ws-load: {errors} connection(s) failed, first: {e}");
    }
    latencies.sort_unstable();
    let msgs = latencies.len();
    println!(
        "{{\"conns\":{},\"msgs\":{msgs},\"seconds\":{seconds:.3},\"rate\":{:.1},\"p50_us\":{},\"p99_us\":{},\"errors\":{errors}}}",
        args.conns,
        msgs as f64 / seconds,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    );
}

async fn echo_loop(mut ws: Ws, payload: Vec<u8>, deadline: Instant) -> ConnResult {
    let mut latencies_us = Vec::with_capacity(1 << 14);
    let error = loop {
        if Instant::now() >= deadline {
            break None;
        }
        let sent = Instant::now();
        if let Err(e) = ws.send(Message::binary(payload.clone())).await {
            break Some(format!("send: {e}"));
        }
        match next_data(&mut ws).await {
            Ok(()) => {
                let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
                latencies_us.push(us);
            }
            Err(e) => break Some(e),
        }
    };
    let _ = ws.close(None).await;
    ConnResult {
        latencies_us,
        error,
    }
}

/// Waits for the next text or binary message (the echo), skipping control frames.
async fn next_data(ws: &mut Ws) -> Result<(), String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(_) | Message::Text(_))) => return Ok(()),
            Some(Ok(Message::Close(_))) | None => return Err("closed by peer".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read: {e}")),
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
