//! Upgrading the binary without dropping a connection or a session.
//!
//! The old process starts the new binary (the path it was started from, the same arguments) and passes it its
//! listening sockets, so no connection attempt is refused meanwhile. The new process loads its config, runs its
//! first health checks and says it is ready (or why it failed: the old one then serves on). The old one stops
//! accepting and hands over its sticky sessions and runtime state (drains, servers added through the API, passive
//! marks); the new one takes them in, then accepts. The old process keeps its open tunnels and in-flight requests
//! until they end or `upgrade_linger` passes, sending on every session it still learns, and then exits.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command as ProcessCommand, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::App;
use crate::clock::now_ms;
use crate::config::{self, Origin};
use crate::conn::CloseAt;
use crate::health::FirstRound;
use crate::runtime::Snapshot;
use crate::sticky::ServerId;
use crate::sync::lock;
use crate::upgrade::{Channel, Edit, Message, Session, State, Waiting, SOCKET_ENV};
use crate::upstream::state::DrainOverride;

/// How long the new process may take to connect, load its config and finish its first health checks.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a lingering process waits for its admin connections at the end.
const ADMIN_LINGER: Duration = Duration::from_secs(10);
/// How long the new process may take to take the state in and start accepting.
const SERVING_TIMEOUT: Duration = Duration::from_secs(60);

/// This process as an upgrade sees it.
pub struct Process {
    /// The binary and arguments this process was started with: what an upgrade starts.
    exe: Option<PathBuf>,
    args: Vec<OsString>,
    /// 1 for a process started by hand, one more for each upgrade since.
    generation: AtomicU64,
    /// The process this one took over from (0: none).
    upgraded_from: AtomicU32,
    /// The process an upgrade handed over to (0: none).
    upgraded_to: AtomicU32,
    /// One upgrade at a time.
    upgrading: tokio::sync::Mutex<()>,
    /// A second descriptor of the admin listener, for an upgrade.
    admin_socket: Mutex<Option<OwnedFd>>,
    /// True while another process accepts on the admin socket.
    pub(super) admin_paused: watch::Sender<bool>,
    /// True once the new process serves: this one lingers.
    handed_over: watch::Sender<bool>,
    /// For a process started by an upgrade: the channel to the old one, until the state is taken over.
    handover: Mutex<Option<Channel>>,
    /// Admin connections, so a lingering process answers `POST /upgrade` before it exits.
    pub admin_connections: tokio_util::task::TaskTracker,
}

impl Process {
    pub fn new() -> Process {
        Process {
            exe: std::env::current_exe().ok(),
            args: std::env::args_os().skip(1).collect(),
            generation: AtomicU64::new(1),
            upgraded_from: AtomicU32::new(0),
            upgraded_to: AtomicU32::new(0),
            upgrading: tokio::sync::Mutex::new(()),
            admin_socket: Mutex::new(None),
            admin_paused: watch::channel(false).0,
            handed_over: watch::channel(false).0,
            handover: Mutex::new(None),
            admin_connections: tokio_util::task::TaskTracker::new(),
        }
    }

    /// This process was started by an upgrade from `old_pid`: it takes over over `channel` once it is ready.
    pub fn taking_over(&self, channel: Channel, old_pid: u32, old_generation: u64) {
        self.generation.store(old_generation + 1, Relaxed);
        self.upgraded_from.store(old_pid, Relaxed);
        *lock(&self.handover) = Some(channel);
        // The old process answers on the admin socket until this one takes over.
        self.admin_paused.send_replace(true);
        info!(
            old_pid,
            generation = old_generation + 1,
            "upgrade: taking over from the old process once ready"
        );
    }

    fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Keeps a second descriptor of the admin listener for upgrades.
    pub fn note_admin(&self, admin: Option<&TcpListener>) {
        let Some(listener) = admin else {
            return;
        };
        match listener.as_fd().try_clone_to_owned() {
            Ok(fd) => *lock(&self.admin_socket) = Some(fd),
            Err(e) => {
                warn!(error = %e, "cannot keep a second admin descriptor: an upgrade will bind it anew")
            }
        }
    }

    /// Resolves while the admin listener should not accept (another process does).
    pub fn admin_paused(&self) -> watch::Receiver<bool> {
        self.admin_paused.subscribe()
    }

    pub fn handed_over(&self) -> watch::Receiver<bool> {
        self.handed_over.subscribe()
    }

    /// What `/status` says of this process.
    pub fn status(&self) -> serde_json::Value {
        let to = self.upgraded_to.load(Relaxed);
        let from = self.upgraded_from.load(Relaxed);
        serde_json::json!({
            "pid": std::process::id(),
            "generation": self.generation(),
            "upgraded_from": (from != 0).then_some(from),
            "upgraded_to": (to != 0).then_some(to),
            "upgrade": if to != 0 { "handed over: lingering" } else if self.upgrading.try_lock().is_err() { "in progress" } else { "none" },
        })
    }
}

impl App {
    /// Hands this process over to a new one started from the same binary path with the same arguments. Returns
    /// the new process's pid once it serves; on an error this process serves on as before.
    pub async fn upgrade(self: &Arc<Self>) -> Result<u32, UpgradeError> {
        // On its own task: a caller that goes away (an admin client hanging up) does not stop it half way.
        let app = self.clone();
        tokio::spawn(async move { app.upgrade_now().await })
            .await
            .unwrap_or_else(|e| {
                Err(UpgradeError::Failed(format!(
                    "the upgrade task failed: {e}"
                )))
            })
    }

    async fn upgrade_now(self: &Arc<Self>) -> Result<u32, UpgradeError> {
        let Ok(_one_at_a_time) = self.process.upgrading.try_lock() else {
            warn!("upgrade refused: another one is under way");
            return Err(UpgradeError::Busy("an upgrade is already under way"));
        };
        if !self.is_ready() || self.is_stopping() || *self.process.handed_over.borrow() {
            return Err(UpgradeError::Busy(
                "not serving (starting, stopping or already handed over)",
            ));
        }
        // No reload or server change meanwhile: the new process reads the same files, and gets this state.
        let _no_changes = self.reloading.lock().await;
        let result = self.hand_over().await.map_err(UpgradeError::Failed);
        match &result {
            Ok(pid) => {
                self.process.upgraded_to.store(*pid, Relaxed);
                info!(old_pid = std::process::id(), new_pid = pid, generation = self.process.generation() + 1, "upgrade: the new process serves; this one lingers with its open tunnels and requests");
                self.shared.draining.store(true, Relaxed);
                self.process.handed_over.send_replace(true);
            }
            Err(e) => error!(error = %e, "upgrade failed: this process serves on"),
        }
        result
    }

    async fn hand_over(self: &Arc<Self>) -> Result<u32, String> {
        let exe = self
            .process
            .exe
            .clone()
            .ok_or("the binary's path is unknown")?;
        let args = self.process.args.clone();
        let sockets = self.lock_listeners().descriptors();
        let admin = lock(&self.process.admin_socket)
            .as_ref()
            .and_then(|fd| fd.try_clone().ok());
        let generation = self.process.generation();
        info!(old_pid = std::process::id(), exe = %exe.display(), "upgrade: starting the new process");
        let (mut channel, new_pid) = tokio::task::spawn_blocking(move || {
            start_new(&exe, &args, (&sockets, admin), generation)
        })
        .await
        .map_err(|e| e.to_string())??;
        // The new process is ready: it accepts once it has the state; the sockets' queues wait meanwhile.
        self.lock_listeners().pause();
        self.process.admin_paused.send_replace(true);
        let (learned_tx, learned_rx) = std::sync::mpsc::channel();
        let snap = self.snapshot();
        for up in snap.upstreams.values() {
            if let Some(t) = &up.sessions {
                t.set_mirror(Some(learned_tx.clone()));
            }
        }
        let state = self.export_state();
        let sessions: usize = state.sessions.values().map(Vec::len).sum();
        let sent = tokio::task::spawn_blocking(move || -> Result<Channel, String> {
            channel
                .send(&Message::State(Box::new(state)))
                .map_err(|e| e.to_string())?;
            channel
                .set_read_timeout(Some(SERVING_TIMEOUT))
                .map_err(|e| e.to_string())?;
            match channel.recv().map_err(|e| e.to_string())? {
                Message::Serving => Ok(channel),
                other => Err(format!("unexpected {other:?}")),
            }
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match sent {
            Ok(channel) => {
                info!(sessions, new_pid, "upgrade: state handed over");
                let app = self.clone();
                std::thread::spawn(move || app.send_learned(channel, learned_rx));
                Ok(new_pid)
            }
            Err(e) => {
                for up in snap.upstreams.values() {
                    if let Some(t) = &up.sessions {
                        t.set_mirror(None);
                    }
                }
                self.lock_listeners().resume(&self.shared);
                self.process.admin_paused.send_replace(false);
                // The new process may be half way: it is not to accept beside this one.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &new_pid.to_string()])
                    .status();
                Err(format!(
                    "the new process (pid {new_pid}) failed to take over: {e}; accepting again"
                ))
            }
        }
    }

    /// Sends the sessions this process learns while it lingers, until the new process goes away.
    fn send_learned(
        &self,
        mut channel: Channel,
        learned: std::sync::mpsc::Receiver<(u64, ServerId)>,
    ) {
        while let Ok(first) = learned.recv() {
            let mut batch = vec![first];
            batch.extend(learned.try_iter());
            let snap = self.snapshot();
            let mut by_upstream: BTreeMap<String, Vec<Session>> = BTreeMap::new();
            for (key, id) in batch {
                let found = snap.upstreams.values().find_map(|up| {
                    let p = up.peers.iter().find(|p| p.state.id == id)?;
                    Some((up.name().to_string(), p.spec.name.clone()))
                });
                if let Some((upstream, server)) = found {
                    by_upstream.entry(upstream).or_default().push(Session {
                        key,
                        server,
                        idle_ms: 0,
                    });
                }
            }
            for (upstream, sessions) in by_upstream {
                if channel
                    .send(&Message::Learned { upstream, sessions })
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    /// Sticky sessions, drains, passive marks and servers the API added, for the new process.
    fn export_state(&self) -> State {
        let snap = self.snapshot();
        let now = now_ms();
        let mut state = State::default();
        for up in snap.upstreams.values() {
            let names: HashMap<ServerId, &str> = up
                .peers
                .iter()
                .map(|p| (p.state.id, p.spec.name.as_str()))
                .collect();
            if let Some(t) = &up.sessions {
                let sessions = t
                    .export()
                    .into_iter()
                    .filter_map(|(key, id, idle)| {
                        Some(Session {
                            key,
                            server: names.get(&id)?.to_string(),
                            idle_ms: idle.as_millis() as u64,
                        })
                    })
                    .collect();
                state.sessions.insert(up.name().to_string(), sessions);
            }
            for p in &up.peers {
                let (upstream, server) = (up.name(), p.spec.name.as_str());
                let draining = match p.state.drain_override() {
                    DrainOverride::Drain => Some(true),
                    DrainOverride::Undrain => Some(false),
                    DrainOverride::None => None,
                };
                if let Some(d) = draining {
                    state.drains.push((upstream.into(), server.into(), d));
                }
                if let Some(left) = p.state.passive_left(now) {
                    state.passive.push((upstream.into(), server.into(), left));
                }
            }
        }
        state.edits = lock(&self.edits)
            .iter()
            .map(|((upstream, server), settings)| Edit {
                upstream: upstream.clone(),
                server: server.clone(),
                settings: *settings,
            })
            .collect();
        state.leaving = self.export_leaving(&snap);
        for (name, up) in &lock(&self.base).upstreams {
            if up.state_file.is_some() {
                continue;
            }
            let mut added = up.clone();
            added.servers.retain(|s| s.origin == Origin::Api);
            added.dns.retain(|d| d.template.origin == Origin::Api);
            if !added.servers.is_empty() || !added.dns.is_empty() {
                state
                    .added
                    .insert(name.clone(), config::state_file::render(&added));
            }
        }
        state
    }

    /// The servers draining on their way out, by upstream and origin, as state-file text.
    fn export_leaving(&self, snap: &Snapshot) -> Vec<(String, String, String)> {
        let membership = lock(&self.membership);
        let mut out = Vec::new();
        for up in snap.upstreams.values() {
            for origin in Origin::ALL {
                let mut list = up.config.clone();
                list.dns.clear();
                list.servers
                    .retain(|s| s.origin == origin && membership.is_leaving(up.name(), &s.name));
                if !list.servers.is_empty() {
                    out.push((
                        up.name().to_string(),
                        origin.label().to_string(),
                        config::state_file::render(&list),
                    ));
                }
            }
        }
        out
    }

    /// For a process started by an upgrade: says it is ready, takes the old process's state in, and returns the
    /// channel (the caller starts accepting, then [`App::follow_old`]). None when this is no upgrade, or when the
    /// old process went away (this one then simply starts).
    pub(super) async fn take_over(self: &Arc<Self>) -> Option<Channel> {
        let channel = lock(&self.process.handover).take()?;
        let got = tokio::task::spawn_blocking(move || -> Result<(Channel, State), String> {
            let mut channel = channel;
            channel
                .send(&Message::Ready {
                    pid: std::process::id(),
                })
                .map_err(|e| e.to_string())?;
            channel
                .set_read_timeout(Some(SERVING_TIMEOUT))
                .map_err(|e| e.to_string())?;
            match channel.recv().map_err(|e| e.to_string())? {
                Message::State(state) => Ok((channel, *state)),
                other => Err(format!("unexpected {other:?}")),
            }
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match got {
            Ok((channel, state)) => {
                // Servers the state adds are checked before this process accepts, as its own config's were.
                if let Some(round) = self.import_state(state) {
                    round.done().await;
                }
                Some(channel)
            }
            Err(e) => {
                warn!(error = %e, "upgrade: no state from the old process: starting without it");
                None
            }
        }
    }

    /// Tells the old process this one serves, then takes in the sessions it still learns.
    pub(super) fn follow_old(self: &Arc<Self>, mut channel: Channel) {
        let app = self.clone();
        std::thread::spawn(move || {
            if channel.send(&Message::Serving).is_err() {
                return;
            }
            let _ = channel.set_read_timeout(None);
            while let Ok(Message::Learned { upstream, sessions }) = channel.recv() {
                app.import_sessions(&upstream, &sessions);
            }
        });
    }

    /// Takes the old process's state in; says when the servers it added have had their first check.
    fn import_state(self: &Arc<Self>, state: State) -> Option<FirstRound> {
        let mut dns_added = false;
        let mut round = None;
        if !state.added.is_empty() || !state.edits.is_empty() || !state.leaving.is_empty() {
            {
                let mut base = lock(&self.base);
                apply_edits(&mut base, &state.edits);
                let mut membership = lock(&self.membership);
                for (name, origin, text) in &state.leaving {
                    let Ok((mut servers, _)) = config::state_file::parse(text) else {
                        continue;
                    };
                    for s in &mut servers {
                        s.origin = Origin::from_label(origin).unwrap_or(Origin::Config);
                    }
                    membership.take_leaving(name, servers);
                }
                drop(membership);
                for (name, text) in &state.added {
                    let (Some(up), Ok((servers, dns))) = (
                        base.upstreams.get_mut(name),
                        config::state_file::parse(text),
                    ) else {
                        continue;
                    };
                    for mut s in servers {
                        if !up.servers.iter().any(|x| x.name == s.name) {
                            s.origin = Origin::Api;
                            up.servers.push(s);
                        }
                    }
                    for mut d in dns {
                        if !up.dns.iter().any(|x| x.template.name == d.template.name) {
                            d.template.origin = Origin::Api;
                            up.dns.push(d);
                            dns_added = true;
                        }
                    }
                }
            }
            round = Some(self.swap_servers());
        }
        if dns_added {
            drop(self.start_lookups());
        }
        let snap = self.snapshot();
        let peer = |up: &str, name: &str| {
            snap.upstream(up)
                .and_then(|u| u.peers.iter().find(|p| p.spec.name == name))
        };
        for (up, name, drain) in &state.drains {
            if let Some(p) = peer(up, name) {
                p.state.set_drain_override(if *drain {
                    DrainOverride::Drain
                } else {
                    DrainOverride::Undrain
                });
            }
        }
        for (up, name, left) in &state.passive {
            if let Some(p) = peer(up, name) {
                p.state.restore_passive(*left);
            }
        }
        let mut taken = 0;
        for (up, sessions) in &state.sessions {
            taken += self.import_sessions(up, sessions);
        }
        info!(
            sessions = taken,
            drains = state.drains.len(),
            passive_marks = state.passive.len(),
            added = state.added.len(),
            edits = state.edits.len(),
            leaving = state.leaving.len(),
            "upgrade: took over the old process's state"
        );
        round
    }

    /// Adds sessions of `upstream` handed over by the old process; returns how many were taken.
    fn import_sessions(&self, upstream: &str, sessions: &[Session]) -> usize {
        let snap = self.snapshot();
        let Some(up) = snap.upstream(upstream) else {
            return 0;
        };
        let Some(table) = &up.sessions else { return 0 };
        let ids: HashMap<&str, ServerId> = up
            .peers
            .iter()
            .map(|p| (p.spec.name.as_str(), p.state.id))
            .collect();
        let mut taken = 0;
        for s in sessions {
            if let Some(id) = ids.get(s.server.as_str()) {
                table.import(s.key, *id, Duration::from_millis(s.idle_ms));
                taken += 1;
            }
        }
        taken
    }

    /// After a hand-over: lets connections finish their requests and close, keeps tunnels until they end or
    /// `upgrade_linger` passes (closing what is left over `close_spread`), then returns. A stop command
    /// (SIGTERM) meanwhile shortens the wait to `shutdown_timeout`, as a shutdown would.
    pub(super) async fn linger(
        self: &Arc<Self>,
        commands: &mut tokio::sync::mpsc::Receiver<super::Command>,
    ) {
        let global = self.snapshot().config.global.clone();
        let linger = global.upgrade_linger;
        self.close_tunnels(CloseAt::ending_within(linger, global.close_spread));
        info!(upgrade_linger = %humantime::format_duration(linger), "upgrade: lingering until the last tunnel and request end");
        let tracker = &self.shared.tracker;
        tracker.close();
        let mut deadline = crate::deadline::after(tokio::time::Instant::now(), linger);
        let mut stopped = false;
        loop {
            tokio::select! {
                _ = tracker.wait() => break,
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(left = tracker.len(), "upgrade_linger reached: closing what is left");
                    break;
                }
                command = commands.recv(), if !stopped => match command {
                    Some(super::Command::Stop) | None => {
                        stopped = true;
                        let timeout = global.shutdown_timeout;
                        info!(timeout = %humantime::format_duration(timeout), "stopping while lingering after an upgrade");
                        self.close_tunnels(CloseAt::ending_within(timeout, global.close_spread));
                        deadline = deadline.min(crate::deadline::after(tokio::time::Instant::now(), timeout));
                    }
                    Some(other) => warn!(?other, "ignored: this process handed over and lingers"),
                },
            }
        }
        self.snapshot().access_log.flush().await;
        // Answers still being written on the admin listener (the upgrade's own) go out first; an admin
        // connection's idle time is bounded by its header timeout.
        let admin = &self.process.admin_connections;
        admin.close();
        let _ = tokio::time::timeout(ADMIN_LINGER, admin.wait()).await;
        info!("upgrade: the old process exits");
    }
}

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Another upgrade is under way, or this process is not serving.
    #[error("{0}")]
    Busy(&'static str),
    /// The new process could not take over; this one serves on.
    #[error("{0}")]
    Failed(String),
}

/// Starts the new process and waits until it is ready (or failed). Blocking.
fn start_new(
    exe: &std::path::Path,
    args: &[OsString],
    (sockets, admin): (&[(SocketAddr, OwnedFd)], Option<OwnedFd>),
    generation: u64,
) -> Result<(Channel, u32), String> {
    let waiting = Waiting::new().map_err(|e| format!("cannot open the hand-over socket: {e}"))?;
    let mut child = ProcessCommand::new(exe)
        .args(args)
        .env(SOCKET_ENV, &waiting.path)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let mut channel = match waiting.accept(READY_TIMEOUT, &mut child) {
        Ok(c) => c,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.to_string());
        }
    };
    let addrs = sockets.iter().map(|(a, _)| *a).collect();
    let mut fds: Vec<_> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
    fds.extend(admin.as_ref().map(|fd| fd.as_fd()));
    let hello = Message::Sockets {
        addrs,
        admin: admin.is_some(),
        old_pid: std::process::id(),
        generation,
    };
    let reply = channel
        .send_with_fds(&hello, &fds)
        .and_then(|()| channel.set_read_timeout(Some(READY_TIMEOUT)))
        .and_then(|()| channel.recv());
    match reply {
        Ok(Message::Ready { pid }) => {
            // The new process outlives this one; its exit status is not this one's to collect.
            std::thread::spawn(move || child.wait());
            Ok((channel, pid))
        }
        Ok(Message::Failed { error }) => {
            let _ = child.wait();
            Err(format!("the new process refused: {error}"))
        }
        other => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("the new process did not get ready: {other:?}"))
        }
    }
}

/// Applies the old process's runtime API edits to the config file's servers that this process loaded too. A
/// removal that would leave an upstream with nothing is not applied.
fn apply_edits(base: &mut config::Config, edits: &[Edit]) {
    for edit in edits {
        let Some(up) = base.upstreams.get_mut(&edit.upstream) else {
            continue;
        };
        if up.state_file.is_some() {
            continue;
        }
        let Some(at) = up
            .servers
            .iter()
            .position(|s| s.name == edit.server && s.origin == Origin::Config)
        else {
            continue;
        };
        match edit.settings {
            Some(e) => {
                let s = &mut up.servers[at];
                (s.weight, s.drain, s.down) = (e.weight, e.drain, e.down);
            }
            None if up.servers.len() > 1 || !up.dns.is_empty() => {
                up.servers.remove(at);
            }
            None => {}
        }
    }
}
