//! The running process: the current snapshot, the listeners, reload and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::access_log::{AccessLog, Logged};
use crate::config::{self, Config, Problem};
use crate::conn::slots::{Admitted, Slots};
use crate::health::FirstRound;
use crate::listener::Listeners;
use crate::metrics::metrics;
use crate::proxy::{ClientInfo, Outcome};
use crate::runtime::{self, Carry, Snapshot};
use crate::upstream::now_ms;

/// Everything the process shares between connections.
pub struct App {
    snapshot: ArcSwap<Snapshot>,
    carry: Carry,
    config_path: PathBuf,
    /// Every client connection's slot, against `max_connections`.
    slots: Arc<Slots>,
    /// Every connection and tunnel, for graceful shutdown.
    pub tracker: TaskTracker,
    stopping: watch::Sender<bool>,
    listeners: Mutex<Listeners>,
    reloading: tokio::sync::Mutex<()>,
    access_log: ArcSwap<AccessLog>,
    /// Background tasks of the current snapshot (health checks), stopped when it is replaced.
    background: Mutex<Option<watch::Sender<bool>>>,
    /// Until ready: the bound listen sockets, and the first round of health checks to wait for.
    starting: Mutex<Option<Starting>>,
    /// The first round of checks is done and the listeners accept.
    ready: AtomicBool,
}

/// What [`App::run`] needs to become ready.
struct Starting {
    bound: Vec<(SocketAddr, TcpListener)>,
    first_round: FirstRound,
}

/// Why a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Bind(String),
    #[error("still starting (first health checks): reload refused")]
    Starting,
}

impl App {
    /// Builds the first snapshot and binds every listener; fails without side effects worth undoing.
    pub async fn start(
        config_path: PathBuf,
        loaded: config::Loaded,
    ) -> Result<(Arc<App>, Option<TcpListener>), ApplyError> {
        let tls = runtime::tls_configs(&loaded.config).map_err(|p| problems(&config_path, p))?;
        let carry = Carry::default();
        let admin = match &loaded.config.admin {
            Some(a) => Some(crate::listener::bind(a.listen).map_err(|e| {
                ApplyError::Bind(format!("cannot listen on {} (admin.listen): {e}", a.listen))
            })?),
            None => None,
        };
        let listeners = Listeners::default();
        let bound = listeners
            .bind_new(
                loaded
                    .config
                    .servers
                    .iter()
                    .flat_map(|s| s.listen.iter().copied()),
            )
            .map_err(ApplyError::Bind)?;
        let access_log =
            AccessLog::open(&loaded.config.global.access_log).map_err(ApplyError::Bind)?;
        let snapshot = carry.build(loaded.config, tls);
        let app = Arc::new(App {
            snapshot: ArcSwap::from_pointee(snapshot),
            carry,
            config_path,
            slots: Arc::new(Slots::default()),
            tracker: TaskTracker::new(),
            stopping: watch::channel(false).0,
            listeners: Mutex::new(listeners),
            reloading: tokio::sync::Mutex::new(()),
            access_log: ArcSwap::from_pointee(access_log),
            background: Mutex::new(None),
            starting: Mutex::new(None),
            ready: AtomicBool::new(false),
        });
        let first_round = app.start_background();
        *app.starting.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Starting { bound, first_round });
        Ok((app, admin))
    }

    /// Waits for the first round of health checks (each bounded by its `timeout`), then starts accepting: a
    /// limpet that accepts can route, so the first burst of clients spreads over every server that is up.
    async fn become_ready(self: &Arc<Self>) {
        let Some(starting) = self
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let started = tokio::time::Instant::now();
        starting.first_round.done().await;
        self.lock_listeners().apply(self, starting.bound, &|_| true);
        self.ready.store(true, Relaxed);
        info!(after = ?started.elapsed(), "ready: first health checks done, accepting");
    }

    /// Accepting, after the first round of health checks.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// A place for a new client connection under `max_connections` (at the cap, in place of idle keep-alive
    /// connections told to close). `gauge` is its listener's `limpet_client_connections_active`.
    pub fn admit(&self, gauge: &IntGauge) -> Admitted {
        let max = self.snapshot.load().config.global.max_connections;
        self.slots.admit(max, gauge)
    }

    /// Watches the shutdown flag.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// The response of a request, with its access log line to come (when the access log is on).
    pub fn access_log(&self, client: &ClientInfo, out: Outcome) -> http::Response<Logged> {
        self.access_log.load().record(client, out)
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, Listeners> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the config file and swaps in a new snapshot; on any error the running config stays.
    pub async fn reload(self: &Arc<Self>) -> Result<(), ApplyError> {
        let _one_at_a_time = self.reloading.lock().await;
        // Loading resolves host names (blocking): keep it off the runtime's worker threads.
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .unwrap_or_else(|e| {
                Err(config::ConfigError {
                    file: self.config_path.display().to_string(),
                    problems: vec![Problem {
                        path: String::new(),
                        message: format!("config loader failed: {e}"),
                    }],
                })
            });
        let result = loaded
            .map_err(ApplyError::from)
            .and_then(|loaded| self.try_reload(loaded));
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics().config_reloads.with_label_values(&[label]).inc();
        match &result {
            Ok(()) => info!(config = %self.config_path.display(), "config reloaded"),
            Err(e) => error!(
                "reload failed, the running config stays: {}",
                e.to_string().replace("\n ", ";")
            ),
        }
        result
    }

    fn try_reload(self: &Arc<Self>, loaded: config::Loaded) -> Result<(), ApplyError> {
        if !self.is_ready() {
            return Err(ApplyError::Starting);
        }
        for w in &loaded.warnings {
            warn!("config: {w}");
        }
        let tls =
            runtime::tls_configs(&loaded.config).map_err(|p| problems(&self.config_path, p))?;
        let old = self.snapshot();
        if let (Some(a), Some(b)) = (&old.config.admin, &loaded.config.admin) {
            if a.listen != b.listen {
                warn!("admin.listen changes take effect on restart");
            }
        }
        let wanted: Vec<SocketAddr> = loaded
            .config
            .servers
            .iter()
            .flat_map(|s| s.listen.iter().copied())
            .collect();
        let bound = self
            .lock_listeners()
            .bind_new(wanted.iter().copied())
            .map_err(ApplyError::Bind)?;
        let access_log = if loaded.config.global.access_log == old.config.global.access_log {
            None
        } else {
            Some(AccessLog::open(&loaded.config.global.access_log).map_err(ApplyError::Bind)?)
        };
        let snapshot = self.carry.build(loaded.config, tls);
        self.snapshot.store(Arc::new(snapshot));
        if let Some(log) = access_log {
            self.access_log.store(Arc::new(log));
        }
        self.lock_listeners()
            .apply(self, bound, &|a| wanted.contains(a));
        // Servers new to this config take traffic after their own first check; the rest serve on meanwhile.
        drop(self.start_background());
        Ok(())
    }

    /// (Re)starts the tasks that belong to the current snapshot: health checks and housekeeping (sticky table
    /// expiry, idle pooled connections, passive marks running out). Says when new servers' first checks are done.
    fn start_background(self: &Arc<Self>) -> FirstRound {
        let (tx, rx) = watch::channel(false);
        if let Some(old) = self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(tx)
        {
            let _ = old.send(true);
        }
        let snap = self.snapshot();
        let first_round = crate::health::start(&snap, rx.clone());
        tokio::spawn(housekeeping(snap, rx));
        first_round
    }

    /// Graceful shutdown: stop accepting, tell connections to finish, wait up to `shutdown_timeout`.
    pub async fn shutdown(self: &Arc<Self>) {
        let timeout = self.snapshot().config.global.shutdown_timeout;
        self.stopping.send_replace(true);
        self.lock_listeners().stop_all();
        info!(timeout = %humantime::format_duration(timeout), "shutting down: no longer accepting");
        if let Some(bg) = self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = bg.send(true);
        }
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                left = self.tracker.len(),
                "shutdown_timeout reached: closing what is left"
            );
        }
        self.access_log.load().flush().await;
    }

    /// Runs until SIGTERM or SIGINT, reloading on SIGHUP.
    pub async fn run(self: Arc<Self>) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stopped_early = tokio::select! {
            _ = self.become_ready() => false,
            _ = term.recv() => true,
            _ = int.recv() => true,
        };
        if stopped_early {
            self.shutdown().await;
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    info!("SIGHUP: reloading");
                    let _ = self.reload().await;
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// The config file this process reads.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// The running config.
    pub fn config(&self) -> Config {
        self.snapshot().config.clone()
    }
}

fn problems(path: &std::path::Path, problems: Vec<Problem>) -> ApplyError {
    ApplyError::Config(config::ConfigError {
        file: path.display().to_string(),
        problems,
    })
}

/// Every second until the snapshot is replaced: forgets idle sticky sessions, closes pooled connections idle
/// past their upstream's `keepalive_timeout`, and logs passive marks that ran out.
async fn housekeeping(snap: Arc<Snapshot>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = now_ms();
        for up in snap.upstreams.values() {
            if let Some(t) = &up.sessions {
                t.purge_expired();
                if let Some(store) = &up.store {
                    store.probe_if_failing();
                    if store.take_recovered() {
                        t.mark_unstored();
                    }
                }
            }
            for p in &up.peers {
                p.pool.close_idle();
                if p.state.passive_mark_ended(now) {
                    info!(upstream = %up.name(), server = %p.spec.name, by = "passive check", "server is up: fail_timeout passed");
                }
            }
        }
    }
}
