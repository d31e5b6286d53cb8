//! The running process: the current snapshot, the listeners, reload and graceful shutdown; the binary upgrade's
//! hand-over is in [`upgrade`].

mod upgrade;

pub use upgrade::UpgradeError;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::access_log::AccessLog;
use crate::clock::now_ms;
use crate::config::{self, Config, Problem};
use crate::conn::CloseAt;
use crate::health::FirstRound;
use crate::listener::{take_given, Listeners, Shared};
use crate::metrics::metrics;
use crate::runtime::{self, Carry, Snapshot};
use crate::sync::lock;
use crate::upgrade::EditedSettings;
use crate::upstream::dns::{self, Answer};
use crate::upstream::membership::Membership;

/// Everything the process shares between connections.
pub struct App {
    /// What the listeners share: the snapshot, connection slots, the tracker.
    shared: Shared,
    carry: Carry,
    config_path: PathBuf,
    stopping: watch::Sender<bool>,
    listeners: Mutex<Listeners>,
    reloading: tokio::sync::Mutex<()>,
    /// Background tasks of the current snapshot (health checks), stopped when it is replaced.
    background: Mutex<Option<watch::Sender<bool>>>,
    /// Until ready: the bound listen sockets, and the first round of health checks to wait for.
    starting: Mutex<Option<Starting>>,
    /// The first round of checks is done and the listeners accept.
    ready: AtomicBool,
    /// The loaded config with the runtime API's edits: what DNS answers and departing servers are added to.
    base: Mutex<Config>,
    /// DNS answers and the servers on their way out.
    membership: Mutex<Membership>,
    /// Runtime API edits of the config file's servers (upstreams without a state file) since the last load, by
    /// (upstream, server): what an upgrade hands over.
    edits: Mutex<BTreeMap<(String, String), Option<EditedSettings>>>,
    /// The DNS tasks of the current config, stopped when it is replaced.
    lookups: Mutex<Option<watch::Sender<bool>>>,
    /// Where DNS tasks send their answers.
    answers: mpsc::Sender<Answer>,
    /// This process: how it was started, its generation, and where an upgrade stands.
    process: upgrade::Process,
}

/// What a running limpet is told to do (by signals, or by the caller of an in-process run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Re-read the config file (SIGHUP).
    Reload,
    /// Shut down gracefully (SIGTERM, SIGINT).
    Stop,
    /// Hand over to a new process started from the same binary path (SIGUSR2).
    Upgrade,
}

/// What [`App::drive`] needs to become ready.
struct Starting {
    bound: Vec<(SocketAddr, TcpListener)>,
    first_round: FirstRound,
    /// The first lookup of every DNS entry.
    first_lookups: FirstRound,
}

/// Why a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Bind(String),
    #[error("{0}")]
    AccessLog(String),
    #[error("still starting (first health checks): reload refused")]
    Starting,
}

impl App {
    /// Builds the first snapshot and binds every listener (taking the socket of `given` for an address there
    /// instead of binding it); fails without side effects worth undoing.
    pub async fn start(
        config_path: PathBuf,
        loaded: config::Loaded,
        (mut given, given_admin): (Vec<(SocketAddr, TcpListener)>, Option<TcpListener>),
    ) -> Result<(Arc<App>, Option<TcpListener>), ApplyError> {
        let tls = runtime::tls_configs(&loaded.config).map_err(|p| problems(&config_path, p))?;
        let carry = Carry::default();
        let admin = match &loaded.config.admin {
            Some(a) => Some(
                match given_admin.or_else(|| take_given(&mut given, a.listen)) {
                    Some(socket) => socket,
                    None => crate::listener::bind(a.listen).map_err(|e| {
                        ApplyError::Bind(format!(
                            "cannot listen on {} (admin.listen): {e}",
                            a.listen
                        ))
                    })?,
                },
            ),
            None => None,
        };
        let listeners = Listeners::default();
        let wanted = loaded
            .config
            .servers
            .iter()
            .flat_map(|s| s.listen.iter().copied());
        let bound = listeners
            .bind_new(wanted, &mut given)
            .map_err(ApplyError::Bind)?;
        let access_log =
            AccessLog::open(&loaded.config.global.access_log).map_err(ApplyError::AccessLog)?;
        let base = loaded.config;
        seed_state_files(&base);
        let snapshot = carry.build(base.clone(), tls, Arc::new(access_log));
        let (stopping, stop_rx) = watch::channel(false);
        let (answers, answers_rx) = mpsc::channel(64);
        let process = upgrade::Process::new();
        let app = Arc::new(App {
            shared: Shared {
                snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
                slots: Arc::default(),
                tracker: TaskTracker::new(),
                stopping: stop_rx,
                tunnels: Arc::default(),
                handed_over: process.handed_over(),
                draining: Arc::default(),
            },
            carry,
            config_path,
            stopping,
            listeners: Mutex::new(listeners),
            reloading: tokio::sync::Mutex::new(()),
            background: Mutex::new(None),
            starting: Mutex::new(None),
            ready: AtomicBool::new(false),
            membership: Mutex::default(),
            edits: Mutex::default(),
            lookups: Mutex::new(None),
            answers,
            process,
            base: Mutex::new(base),
        });
        let first_round = app.start_background();
        let first_lookups = app.start_lookups();
        app.process.note_admin(admin.as_ref());
        tokio::spawn(app.clone().follow_membership(answers_rx));
        *lock(&app.starting) = Some(Starting {
            bound,
            first_round,
            first_lookups,
        });
        Ok((app, admin))
    }

    /// Waits for the first round of health checks (each bounded by its `timeout`), then starts accepting: a
    /// limpet that accepts can route, so the first burst of clients spreads over every server that is up.
    async fn become_ready(self: &Arc<Self>) {
        let Some(starting) = lock(&self.starting).take() else {
            return;
        };
        let started = tokio::time::Instant::now();
        // Servers DNS names count as the config's: their first lookup, then their first check.
        let _ = tokio::time::timeout(FIRST_LOOKUPS_TIMEOUT, starting.first_lookups.done()).await;
        let named = self.has_lookups().then(|| self.swap_servers());
        starting.first_round.done().await;
        if let Some(round) = named {
            round.done().await;
        }
        // Started by an upgrade: take the old process's sessions before the first connection.
        let handed = self.take_over().await;
        self.carry.note_running();
        self.lock_listeners()
            .apply(&self.shared, starting.bound, &|_| true);
        self.ready.store(true, Relaxed);
        info!(after = ?started.elapsed(), "ready: first health checks done, accepting");
        self.process.admin_paused.send_replace(false);
        if let Some(channel) = handed {
            self.follow_old(channel);
        }
    }

    /// This process as an upgrade sees it (`/status`, the admin listener's pause).
    pub fn process(&self) -> &upgrade::Process {
        &self.process
    }

    /// Accepting, after the first round of health checks.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, Listeners> {
        lock(&self.listeners)
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
        let old = self.snapshot();
        let config = {
            let mut membership = lock(&self.membership);
            membership.retain(&loaded.config);
            let named = membership.named(&loaded.config);
            // Servers a DNS answer dropped since the last snapshot drain, as they would without this reload; the
            // servers the config file dropped go at once.
            membership.note_departures_of(&old.config, &named, |s| s.origin == config::Origin::Dns);
            membership.with_leaving(named)
        };
        let tls = runtime::tls_configs(&config).map_err(|p| problems(&self.config_path, p))?;
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
            .bind_new(wanted.iter().copied(), &mut Vec::new())
            .map_err(ApplyError::Bind)?;
        let access_log = if loaded.config.global.access_log == old.config.global.access_log {
            old.access_log.clone()
        } else {
            let opened = AccessLog::open(&loaded.config.global.access_log);
            Arc::new(opened.map_err(ApplyError::AccessLog)?)
        };
        seed_state_files(&loaded.config);
        *lock(&self.base) = loaded.config;
        lock(&self.edits).clear();
        let snapshot = self.carry.build(config, tls, access_log);
        self.shared.snapshot.store(Arc::new(snapshot));
        self.lock_listeners()
            .apply(&self.shared, bound, &|a| wanted.contains(a));
        // Servers new to this config take traffic after their own first check; the rest serve on meanwhile.
        drop(self.start_background());
        drop(self.start_lookups());
        Ok(())
    }

    /// Does the loaded config name servers by DNS?
    fn has_lookups(&self) -> bool {
        lock(&self.base)
            .upstreams
            .values()
            .any(|u| !u.dns.is_empty())
    }

    /// (Re)starts one DNS task per `resolve` or `service` entry of the loaded config. Says when each has had its
    /// first lookup.
    fn start_lookups(self: &Arc<Self>) -> FirstRound {
        let (first_tx, first_rx) = mpsc::channel(1);
        let (tx, stop) = watch::channel(false);
        if let Some(old) = lock(&self.lookups).replace(tx) {
            let _ = old.send(true);
        }
        if !self.has_lookups() {
            return FirstRound::new(first_rx);
        }
        let base = lock(&self.base).clone();
        let resolver = match dns::resolver(&base.global) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "no DNS resolver (global.resolver, /etc/resolv.conf): resolve and service entries stay empty");
                return FirstRound::new(first_rx);
            }
        };
        let bounds = (base.global.resolve_min, base.global.resolve_max);
        for (name, up) in &base.upstreams {
            for entry in &up.dns {
                tokio::spawn(dns::follow(
                    resolver.clone(),
                    name.clone(),
                    entry.clone(),
                    bounds,
                    self.answers.clone(),
                    stop.clone(),
                    Some(first_tx.clone()),
                ));
            }
        }
        FirstRound::new(first_rx)
    }

    /// Applies DNS answers as they come, and drops departing servers once they hold nothing (checked every
    /// second). A change that comes while limpet is still starting is applied once it is ready. Runs for the life
    /// of the process.
    async fn follow_membership(self: Arc<Self>, mut answers: mpsc::Receiver<Answer>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut pending = false;
        loop {
            let changed = tokio::select! {
                answer = answers.recv() => match answer {
                    Some(a) => {
                        let changed = lock(&self.membership).answer(&a.upstream, &a.entry, a.found);
                        // Readiness (waiting on `first`) now sees the servers this answer names.
                        drop(a.first);
                        changed
                    }
                    None => return,
                },
                _ = tick.tick() => self.prune_departed(),
            };
            pending |= changed;
            if pending && self.is_ready() && !self.is_stopping() {
                let _one_at_a_time = self.reloading.lock().await;
                drop(self.swap_servers());
                pending = false;
            }
        }
    }

    /// Drops the departing servers that hold no request, tunnel or sticky session any more, or are confirmed
    /// down; says whether any went.
    fn prune_departed(&self) -> bool {
        let snap = self.snapshot();
        let done = |upstream: &str, spec: &config::ServerSpec| {
            let peer = snap
                .upstream(upstream)
                .and_then(|u| u.peers.iter().find(|p| p.spec.name == spec.name));
            peer.is_none_or(|p| {
                !p.holds_sessions()
                    || (p.state.active() == 0 && p.state.metrics.sticky_sessions.get() <= 0)
            })
        };
        lock(&self.membership).prune_leaving(done)
    }

    /// Builds and swaps in a snapshot for the current servers (loaded config, API edits, DNS answers, departing
    /// servers), keeping everything else. The caller holds `reloading` (or runs before limpet is ready). Says
    /// when new servers' first checks are done.
    fn swap_servers(self: &Arc<Self>) -> FirstRound {
        let old = self.snapshot();
        let config = {
            let base = lock(&self.base);
            let mut membership = lock(&self.membership);
            let named = membership.named(&base);
            membership.note_departures(&old.config, &named);
            membership.with_leaving(named)
        };
        let tls = match runtime::tls_for_servers(&old, &config) {
            Ok(tls) => tls,
            Err(p) => {
                let why: Vec<String> = p.iter().map(ToString::to_string).collect();
                error!(problems = %why.join("; "), "server list change not applied");
                return FirstRound::new(mpsc::channel(1).1);
            }
        };
        log_changes(&old.config, &config);
        let snapshot = self.carry.build(config, tls, old.access_log.clone());
        self.shared.snapshot.store(Arc::new(snapshot));
        self.start_background()
    }

    /// Applies a runtime API change to one upstream's server list: `change` edits a copy; the result is written
    /// to the upstream's `state_file` (when it has one), then swapped in. Nothing changes on an error.
    pub async fn change_servers<T>(
        self: &Arc<Self>,
        upstream: &str,
        change: impl FnOnce(&mut config::Upstream) -> Result<T, ChangeError>,
    ) -> Result<T, ChangeError> {
        let _one_at_a_time = self.reloading.lock().await;
        if !self.is_ready() {
            return Err(ChangeError::Conflict(
                "still starting (first health checks)".into(),
            ));
        }
        if *self.process().handed_over().borrow() {
            return Err(ChangeError::Conflict(
                "this process has handed over to a new one: send changes to it".into(),
            ));
        }
        let mut up = lock(&self.base)
            .upstreams
            .get(upstream)
            .cloned()
            .ok_or_else(|| ChangeError::NotFound(format!("no upstream {upstream:?}")))?;
        let dns_before = dns_names(&up);
        let out = change(&mut up)?;
        if let Some(path) = &up.state_file {
            config::state_file::write(path, &up).map_err(|e| {
                ChangeError::Storage(format!("cannot write {}: {e}", path.display()))
            })?;
        }
        let dns_changed = dns_names(&up) != dns_before;
        {
            let mut base = lock(&self.base);
            if let (None, Some(before)) = (&up.state_file, base.upstreams.get(upstream)) {
                note_edits(&mut lock(&self.edits), before, &up);
            }
            base.upstreams.insert(upstream.to_string(), up);
        }
        drop(self.swap_servers());
        if dns_changed {
            // An entry added is looked up from now on; one removed is no longer followed.
            drop(self.start_lookups());
        }
        Ok(out)
    }

    /// The loaded entries of an upstream, with the runtime API's edits.
    pub fn entries(&self, upstream: &str) -> Option<config::Upstream> {
        lock(&self.base).upstreams.get(upstream).cloned()
    }

    /// Is this server of this upstream draining out (removed by DNS or the API)?
    pub fn is_departing(&self, upstream: &str, name: &str) -> bool {
        lock(&self.membership).is_leaving(upstream, name)
    }

    /// (Re)starts the tasks that belong to the current snapshot: health checks and housekeeping (sticky table
    /// expiry, idle pooled connections, passive marks running out). Says when new servers' first checks are done.
    fn start_background(self: &Arc<Self>) -> FirstRound {
        let (tx, rx) = watch::channel(false);
        if let Some(old) = lock(&self.background).replace(tx) {
            let _ = old.send(true);
        }
        let snap = self.snapshot();
        let first_round = crate::health::start(&snap, rx.clone());
        tokio::spawn(housekeeping(snap, rx));
        first_round
    }

    /// Graceful shutdown: stop accepting, tell connections to finish, wait up to `shutdown_timeout`.
    pub async fn shutdown(self: &Arc<Self>) {
        let global = self.snapshot().config.global.clone();
        let timeout = global.shutdown_timeout;
        // Tunnels still open near the end of shutdown_timeout are closed over its last close_spread.
        self.close_tunnels(CloseAt::ending_within(timeout, global.close_spread));
        self.stopping.send_replace(true);
        self.lock_listeners().stop_all();
        info!(timeout = %humantime::format_duration(timeout), "shutting down: no longer accepting");
        if let Some(bg) = lock(&self.background).take() {
            let _ = bg.send(true);
        }
        let tracker = &self.shared.tracker;
        tracker.close();
        if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
            warn!(
                left = tracker.len(),
                "shutdown_timeout reached: closing what is left"
            );
        }
        self.snapshot().access_log.flush().await;
    }

    /// Closes every open tunnel, one after another over the window `at`.
    fn close_tunnels(&self, at: CloseAt) {
        let tunnels = self.shared.tunnels.clone();
        tokio::spawn(async move { tunnels.close_paced(at).await });
    }

    /// Runs until SIGTERM or SIGINT, reloading on SIGHUP.
    pub async fn run(self: Arc<Self>) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            loop {
                let command = tokio::select! {
                    _ = hup.recv() => {
                        info!("SIGHUP: reloading");
                        Command::Reload
                    }
                    _ = term.recv() => Command::Stop,
                    _ = int.recv() => Command::Stop,
                    _ = usr2.recv() => {
                        info!("SIGUSR2: upgrading");
                        Command::Upgrade
                    }
                };
                if tx.send(command).await.is_err() {
                    return;
                }
            }
        });
        self.drive(rx).await;
        Ok(())
    }

    /// Serves until told to stop (or until every sender is gone), then shuts down gracefully; reloads when told.
    /// A reload asked for before limpet is ready waits until it is.
    pub async fn drive(self: Arc<Self>, mut commands: mpsc::Receiver<Command>) {
        let mut reload_waiting = false;
        let ready = self.become_ready();
        tokio::pin!(ready);
        loop {
            tokio::select! {
                _ = &mut ready => break,
                command = commands.recv() => match command {
                    Some(Command::Reload) => reload_waiting = true,
                    Some(Command::Upgrade) => warn!("upgrade refused: still starting"),
                    Some(Command::Stop) | None => return self.shutdown().await,
                },
            }
        }
        if reload_waiting {
            let _ = self.reload().await;
        }
        let mut handed_over = self.process.handed_over();
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Reload) => drop(self.reload().await),
                    Some(Command::Upgrade) => drop(self.upgrade().await),
                    Some(Command::Stop) | None => break,
                },
                _ = handed_over.wait_for(|h| *h) => return self.linger(&mut commands).await,
            }
        }
        self.shutdown().await;
    }
}

/// Why a runtime API change was refused (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Storage(String),
}

/// Records how `after` changed the config file's servers of `before` (weight, drain, down; removal).
fn note_edits(
    edits: &mut BTreeMap<(String, String), Option<EditedSettings>>,
    before: &config::Upstream,
    after: &config::Upstream,
) {
    for old in before
        .servers
        .iter()
        .filter(|s| s.origin == config::Origin::Config)
    {
        let key = (before.name.clone(), old.name.clone());
        let Some(new) = after.servers.iter().find(|s| s.name == old.name) else {
            edits.insert(key, None);
            continue;
        };
        if (old.weight, old.drain, old.down) != (new.weight, new.drain, new.down) {
            let edited = EditedSettings {
                weight: new.weight,
                drain: new.drain,
                down: new.down,
            };
            edits.insert(key, Some(edited));
        }
    }
}

/// The names of an upstream's `resolve` and `service` entries.
fn dns_names(up: &config::Upstream) -> Vec<String> {
    up.dns.iter().map(|d| d.template.name.clone()).collect()
}

/// How long readiness waits for the first DNS lookups (each lookup is bounded on its own, too).
const FIRST_LOOKUPS_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes the `state_file` of each upstream that has one and whose file is not there yet, from the config's list.
fn seed_state_files(config: &Config) {
    for up in config.upstreams.values() {
        let Some(path) = &up.state_file else { continue };
        if path.exists() {
            continue;
        }
        match config::state_file::write(path, up) {
            Ok(()) => {
                info!(upstream = %up.name, file = %path.display(), "state file seeded from the config")
            }
            Err(e) => {
                warn!(upstream = %up.name, file = %path.display(), error = %e, "cannot write the state file: runtime changes will not be kept")
            }
        }
    }
}

/// Logs the servers a DNS answer or a runtime change adds and removes.
fn log_changes(old: &Config, new: &Config) {
    for (name, up) in &new.upstreams {
        let Some(before) = old.upstreams.get(name) else {
            continue;
        };
        for s in &up.servers {
            match before.servers.iter().find(|b| b.name == s.name) {
                None => {
                    info!(upstream = %name, server = %s.name, origin = s.origin.label(), "server added: it takes traffic after its first check")
                }
                Some(b) if s.drain && !b.drain => {
                    info!(upstream = %name, server = %s.name, "server draining")
                }
                Some(_) => {}
            }
        }
        for b in &before.servers {
            if !up.servers.iter().any(|s| s.name == b.name) {
                info!(upstream = %name, server = %b.name, "server removed");
            }
        }
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
