//! Helpers shared by the bench binaries.
//!
//! - `bench-backend`: HTTP/1.1 origin (`/` → "ok", `/64k` → 65,536 bytes).
//! - `bench-ws-echo`: WebSocket echo origin.
//! - `bench-ws-load`: WebSocket echo-rate client and idle-connection holder.
//!
//! The servers bind `--listen` (port 0 by default) and print `LISTENING <port>` on stdout,
//! which `bench/run.sh` waits for.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Binds `addr` and announces the chosen port on stdout as `LISTENING <port>`.
pub async fn bind_and_announce(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING {port}")?;
    out.flush()?;
    Ok(listener)
}

/// True for the errors that mean "this process (or the system) is out of file descriptors".
pub fn is_fd_exhaustion(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Accept errors never end a server: on fd exhaustion wait a little for descriptors to free up.
pub async fn backoff_after_accept_error(err: &std::io::Error) {
    if is_fd_exhaustion(err) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--listen` and `--threads`, the options of both bench origins.
#[derive(clap::Args)]
pub struct OriginArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// tokio worker threads
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Runs a bench origin: raises the open-file limit, binds `--listen` (announcing the port), and hands each
/// accepted connection, with TCP_NODELAY set, to `handle` in a task of its own. Returns only on a bind error.
pub fn run_origin<F, Fut>(args: &OriginArgs, handle: F) -> std::io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    raise_nofile_limit();
    runtime(args.threads)?.block_on(async {
        let listener = bind_and_announce(args.listen).await?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(handle(stream));
                }
                Err(e) => backoff_after_accept_error(&e).await,
            }
        }
    })
}

/// Builds a multi-threaded tokio runtime with `threads` workers.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("1h").is_err());
    }
}
