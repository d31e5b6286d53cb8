//! The access log: one line per request or tunnel, written by a background task so the request path never
//! waits on a disk.

use std::fmt::Write as _;
use std::path::PathBuf;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config;
use crate::proxy::{ClientInfo, Outcome};

/// Lines queued before new ones are dropped (and counted) rather than wait.
const QUEUE: usize = 8192;

/// Where access log lines go.
pub struct AccessLog {
    tx: Option<mpsc::Sender<String>>,
}

impl AccessLog {
    /// Opens the configured destination and starts its writer.
    pub fn open(dest: &config::AccessLog) -> Result<AccessLog, String> {
        let out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match dest {
            config::AccessLog::Off => return Ok(AccessLog { tx: None }),
            config::AccessLog::Stderr => Box::new(tokio::io::stderr()),
            config::AccessLog::File(path) => Box::new(open_file(path)?),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, out));
        Ok(AccessLog { tx: Some(tx) })
    }

    /// Queues the line of one request; drops it when the writer is behind.
    pub fn record(&self, client: &ClientInfo, out: &Outcome) {
        let Some(tx) = &self.tx else { return };
        let _ = tx.try_send(line(client, out));
    }

    /// Waits until queued lines are written (best effort, at shutdown).
    pub async fn flush(&self) {
        if let Some(tx) = &self.tx {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), tx.reserve_many(QUEUE))
                .await;
        }
    }
}

fn open_file(path: &PathBuf) -> Result<tokio::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(tokio::fs::File::from_std)
        .map_err(|e| format!("cannot open access_log {}: {e}", path.display()))
}

async fn write_lines(
    mut rx: mpsc::Receiver<String>,
    mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
) {
    let mut batch = String::new();
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.push_str(&first);
        while let Ok(more) = rx.try_recv() {
            batch.push_str(&more);
            if batch.len() > 64 * 1024 {
                break;
            }
        }
        if out.write_all(batch.as_bytes()).await.is_err() {
            return;
        }
        let _ = out.flush().await;
    }
}

/// `client method path status bytes server upstream duration sticky`, space-separated, key=value after the first.
fn line(client: &ClientInfo, out: &Outcome) -> String {
    let mut s = String::with_capacity(160);
    let status = out.response.status().as_u16();
    let server = match (&out.upstream, out.server) {
        (Some(u), Some(i)) => u.peers[i].spec.name.as_str(),
        _ => "-",
    };
    let upstream = out.upstream.as_ref().map_or("-", |u| u.name());
    let _ = writeln!(
        s,
        "{} \"{} {}\" {} upstream={} server={} duration_ms={:.1} sticky={}",
        client.peer.ip(),
        out.method,
        out.uri.path(),
        status,
        upstream,
        server,
        out.started.elapsed().as_secs_f64() * 1000.0,
        out.sticky.unwrap_or("-"),
    );
    s
}
