//! The shared session store: learned sessions written to Redis so that several limpet instances route a session
//! alike. The local table stays the first lookup; Redis is asked only on a local miss. Writes are batched into
//! pipelines by one writer task; a Redis outage degrades to local routing (logged, counted), never to a failed
//! request. After a failure the store is left alone for `BACKOFF`, so an outage that times out costs requests
//! nothing while the connection manager reconnects in the background.
//!
//! A client must not be able to turn its requests into Redis commands: a session's expiry is refreshed at most
//! once per `session_ttl / 4` (the local table tracks when), and a sid Redis did not know is remembered as
//! unknown for `UNKNOWN_TTL`, so repeating it costs no further read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::metrics::metrics;
use crate::sticky::table::SessionTable;

/// The longest a request waits on Redis: a handshake for its write, a local miss for its read.
pub const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// How long the first connection may take, at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Writes queued before new ones are dropped (counted in `limpet_sticky_store_writes_dropped_total`).
const QUEUE: usize = 16 * 1024;
/// Most commands in one pipeline.
const BATCH: usize = 512;
/// At most one warning per this many seconds while Redis fails.
const LOG_EVERY_MS: u64 = 10_000;
/// How long after a failure requests skip Redis.
const BACKOFF_MS: u64 = 1000;
/// How long a sid Redis did not hold is answered as unknown without asking again.
const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// Most sids remembered as unknown (the oldest are forgotten first).
const UNKNOWN_MAX: usize = 64 * 1024;

/// One `SET key server EX ttl`, acknowledged when someone waits for it.
struct Write {
    key: String,
    server: String,
    done: Option<oneshot::Sender<bool>>,
}

/// A Redis-backed view of one upstream's sessions.
pub struct SessionStore {
    upstream: String,
    conn: ConnectionManager,
    prefix: String,
    ttl_secs: AtomicU64,
    writes: mpsc::Sender<Write>,
    errors: IntCounter,
    dropped: IntCounter,
    /// `now_ms()` before which failures are not logged again.
    quiet_until: AtomicU64,
    /// `now_ms()` before which requests skip Redis (set by a failure).
    skip_until: AtomicU64,
    /// Set by a failure, cleared (and logged) by the next success.
    failing: AtomicBool,
    /// Sids Redis recently answered it did not hold.
    unknown: SessionTable,
    /// Reachable again after a failure, not yet taken by [`take_recovered`](Self::take_recovered).
    recovered: AtomicBool,
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
            upstream: upstream.to_string(),
            conn: conn.clone(),
            prefix: prefix.to_string(),
            ttl_secs: AtomicU64::new(ttl.as_secs().max(1)),
            writes: tx,
            errors: metrics().sticky_store_errors.with_label_values(&[upstream]),
            dropped: metrics()
                .sticky_store_dropped
                .with_label_values(&[upstream]),
            quiet_until: AtomicU64::new(0),
            skip_until: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            unknown: SessionTable::new(UNKNOWN_TTL, UNKNOWN_MAX, Arc::new(|_, _| {})),
            recovered: AtomicBool::new(false),
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

    /// False while requests skip Redis after a failure.
    fn usable(&self) -> bool {
        crate::clock::now_ms() >= self.skip_until.load(Relaxed)
    }

    /// Writes a learned session and waits (at most `OP_TIMEOUT`) until Redis has it. False when it did not
    /// (already counted and logged).
    pub async fn put(&self, sid: &str, server: &str) -> bool {
        if !self.usable() {
            return false;
        }
        let (done, acked) = oneshot::channel();
        let write = Write {
            key: self.key(sid),
            server: server.to_string(),
            done: Some(done),
        };
        if self.writes.try_send(write).is_err() {
            // Writes come faster than Redis takes them: this one is lost, Redis is not down.
            self.dropped.inc();
            return false;
        }
        // A pipeline that fails or times out is counted by the writer.
        matches!(tokio::time::timeout(OP_TIMEOUT, acked).await, Ok(Ok(true)))
    }

    /// Refreshes a session's expiry without waiting (the caller asks at most once per `session_ttl / 4`). It
    /// rewrites the value too, so sessions come back after Redis lost them (a restart without persistence).
    pub fn touch(&self, sid: &str, server: &str) {
        if self.usable() {
            let write = Write {
                key: self.key(sid),
                server: server.to_string(),
                done: None,
            };
            if self.writes.try_send(write).is_err() {
                self.dropped.inc();
            }
        }
    }

    /// The server (by address) Redis holds for a session; None when absent or when Redis does not answer in time.
    pub async fn get(&self, sid: &str) -> Option<String> {
        if !self.usable() || self.unknown.lookup(sid).is_some() {
            return None;
        }
        let mut conn = self.conn.clone();
        let key = self.key(sid);
        let get = async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut conn)
                .await
        };
        match tokio::time::timeout(OP_TIMEOUT, get).await {
            Ok(Ok(v)) => {
                self.succeeded();
                if v.is_none() {
                    self.unknown.learn(sid, 0);
                }
                v
            }
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

    fn succeeded(&self) {
        if self.failing.swap(false, Relaxed) {
            info!(upstream = %self.upstream, "session store reachable again");
            self.recovered.store(true, Relaxed);
        }
    }

    /// While failing, asks Redis whether it is back (a `PING`, bounded by `OP_TIMEOUT`), so recovery is seen even
    /// when no request needs Redis. Call it every second or so.
    pub fn probe_if_failing(self: &Arc<Self>) {
        if !self.failing.load(Relaxed) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let mut conn = store.conn.clone();
            let ping = redis::cmd("PING");
            if let Ok(Ok(())) =
                tokio::time::timeout(OP_TIMEOUT, ping.query_async::<()>(&mut conn)).await
            {
                store.succeeded();
            }
        });
    }

    /// Has Redis come back from a failure since the last call? It may have lost what it held: the caller marks
    /// its sessions for writing again.
    pub fn take_recovered(&self) -> bool {
        self.recovered.swap(false, Relaxed)
    }

    fn failed(&self, why: &str) {
        self.errors.inc();
        self.failing.store(true, Relaxed);
        let now = crate::clock::now_ms();
        self.skip_until.store(now + BACKOFF_MS, Relaxed);
        let quiet_until = self.quiet_until.load(Relaxed);
        if now >= quiet_until
            && self
                .quiet_until
                .compare_exchange(quiet_until, now + LOG_EVERY_MS, Relaxed, Relaxed)
                .is_ok()
        {
            let upstream = &self.upstream;
            warn!(%upstream, error = %why, "session store unavailable: routing with the local table only");
        }
    }
}

/// Connects (so the first handshake does not pay for it), then sends queued writes to Redis in pipelines and
/// acknowledges each `put` with whether its pipeline succeeded.
async fn write_batches(
    mut rx: mpsc::Receiver<Write>,
    mut conn: ConnectionManager,
    store: std::sync::Weak<SessionStore>,
) {
    let ping = redis::cmd("PING");
    let ping = tokio::time::timeout(CONNECT_TIMEOUT, ping.query_async::<()>(&mut conn)).await;
    if let Some(store) = store.upgrade() {
        match ping {
            Ok(Ok(())) => info!(upstream = %store.upstream, "session store connected"),
            Ok(Err(e)) => store.failed(&e.to_string()),
            Err(_) => store.failed("connect timed out"),
        }
    }
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let Some(store) = store.upgrade() else { return };
        let ttl = store.ttl_secs.load(Relaxed);
        let mut pipe = redis::pipe();
        for w in &batch {
            pipe.cmd("SET")
                .arg(&w.key)
                .arg(&w.server)
                .arg("EX")
                .arg(ttl)
                .ignore();
        }
        let sent = tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
        let ok = matches!(sent, Ok(Ok(())));
        if ok {
            store.succeeded();
        } else {
            let why = match sent {
                Ok(Err(e)) => e.to_string(),
                _ => "write timed out".to_string(),
            };
            store.failed(&why);
        }
        for done in batch.drain(..).filter_map(|w| w.done) {
            let _ = done.send(ok);
        }
    }
}
