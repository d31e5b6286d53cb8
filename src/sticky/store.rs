//! The shared session store: learned sessions written to Redis so that several limpet instances route a session
//! alike. The local table stays the first lookup; Redis is asked only on a local miss. Writes are batched into
//! pipelines by one writer task; a Redis outage degrades to local routing (logged, counted), never to a failed
//! request.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::metrics::metrics;

/// The longest a request waits on Redis: a handshake for its write, a local miss for its read.
pub const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// Writes queued before new ones are dropped (counted as errors).
const QUEUE: usize = 16 * 1024;
/// Most commands in one pipeline.
const BATCH: usize = 512;
/// At most one warning per this many seconds while Redis fails.
const LOG_EVERY_SECS: u64 = 10;

enum Write {
    Put {
        key: String,
        server: String,
        done: Option<oneshot::Sender<bool>>,
    },
    Touch {
        key: String,
    },
}

/// A Redis-backed view of one upstream's sessions.
pub struct SessionStore {
    conn: ConnectionManager,
    prefix: String,
    ttl_secs: AtomicU64,
    writes: mpsc::Sender<Write>,
    errors: IntCounter,
    last_log: Arc<AtomicU64>,
}

impl SessionStore {
    /// Connects lazily (limpet starts whether or not Redis is up) and starts the writer.
    pub fn new(
        url: &str,
        prefix: &str,
        ttl: Duration,
        upstream: &str,
    ) -> Result<Arc<SessionStore>, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("invalid Redis URL {url:?}: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot set up Redis {url:?}: {e}"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let store = Arc::new(SessionStore {
            conn: conn.clone(),
            prefix: prefix.to_string(),
            ttl_secs: AtomicU64::new(ttl.as_secs().max(1)),
            writes: tx,
            errors: metrics().sticky_store_errors.with_label_values(&[upstream]),
            last_log: Arc::new(AtomicU64::new(0)),
        });
        tokio::spawn(write_batches(rx, conn, Arc::downgrade(&store)));
        Ok(store)
    }

    /// A reload may change the session TTL.
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_secs.store(ttl.as_secs().max(1), Relaxed);
    }

    fn key(&self, sid: &str) -> String {
        format!("{}{}", self.prefix, sid)
    }

    /// Writes a learned session and waits (at most `OP_TIMEOUT`) until Redis has it. False when it did not.
    pub async fn put(&self, sid: &str, server: &str) -> bool {
        let (done, acked) = oneshot::channel();
        let write = Write::Put {
            key: self.key(sid),
            server: server.to_string(),
            done: Some(done),
        };
        if self.writes.try_send(write).is_err() {
            self.failed("write queue full");
            return false;
        }
        matches!(tokio::time::timeout(OP_TIMEOUT, acked).await, Ok(Ok(true)))
    }

    /// Refreshes a session's expiry, without waiting.
    pub fn touch(&self, sid: &str) {
        let _ = self.writes.try_send(Write::Touch { key: self.key(sid) });
    }

    /// The server (by address) Redis holds for a session; None when absent or when Redis does not answer in time.
    pub async fn get(&self, sid: &str) -> Option<String> {
        let mut conn = self.conn.clone();
        let key = self.key(sid);
        let get = async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut conn)
                .await
        };
        match tokio::time::timeout(OP_TIMEOUT, get).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("read timed out");
                None
            }
        }
    }

    fn failed(&self, why: &str) {
        self.errors.inc();
        let now = crate::upstream::now_ms() / 1000;
        let last = self.last_log.load(Relaxed);
        if now >= last + LOG_EVERY_SECS
            && self
                .last_log
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            warn!(error = %why, "session store unavailable: routing with the local table only");
        }
    }
}

/// Sends queued writes to Redis in pipelines; acknowledges each `put` with whether its pipeline succeeded.
async fn write_batches(
    mut rx: mpsc::Receiver<Write>,
    mut conn: ConnectionManager,
    store: std::sync::Weak<SessionStore>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let Some(store) = store.upgrade() else { return };
        let ttl = store.ttl_secs.load(Relaxed);
        let mut pipe = redis::pipe();
        for w in &batch {
            match w {
                Write::Put { key, server, .. } => pipe
                    .cmd("SET")
                    .arg(key)
                    .arg(server)
                    .arg("EX")
                    .arg(ttl)
                    .ignore(),
                Write::Touch { key } => pipe.cmd("EXPIRE").arg(key).arg(ttl).ignore(),
            };
        }
        let sent = tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
        let ok = matches!(sent, Ok(Ok(())));
        if !ok {
            let why = match sent {
                Ok(Err(e)) => e.to_string(),
                _ => "write timed out".to_string(),
            };
            store.failed(&why);
        }
        for w in batch.drain(..) {
            if let Write::Put {
                done: Some(done), ..
            } = w
            {
                let _ = done.send(ok);
            }
        }
    }
}
