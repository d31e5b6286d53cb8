//! Per-server mutable state: health, passive failures, drain, in-flight counts. All atomics, carried across
//! reloads for servers whose address is unchanged.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use crate::clock::now_ms;

use crate::config::ServerSpec;
use crate::metrics::ServerMetrics;
use crate::sticky::ServerId;
use crate::warn_limit::WarnLimit;

/// What active health checks last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
    /// Active checks are configured and have not passed yet.
    Checking,
}

/// A runtime override of the config's `drain` key, set through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOverride {
    None,
    Drain,
    Undrain,
}

/// The live state of one server of one upstream.
pub struct ServerState {
    pub id: ServerId,
    pub metrics: ServerMetrics,
    health: AtomicU8,
    drain: AtomicU8,
    /// The config's `drain` as last loaded (0 false, 1 true, 2 not loaded yet).
    config_drain: AtomicU8,
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    down_until_ms: AtomicU64,
    /// Active checks run for this server: a passive mark then lasts until a check passes.
    checked: AtomicBool,
    /// A passive mark was logged and its end not yet.
    passive_logged: AtomicBool,
    /// Failed connects to this server, logged at most once a second.
    pub connect_warnings: WarnLimit,
    /// When the server last came up (ms on limpet's clock; 0 = not since limpet started): `slow_start` ramps
    /// its weight from then.
    up_since_ms: AtomicU64,
    /// Added while running: its first pass counts as coming up.
    added_later: AtomicBool,
    /// The config's `down` as last loaded (0 false, 1 true, 2 not loaded yet).
    config_down: AtomicU8,
    /// Active-check results in a row.
    pub check_streak: CheckStreak,
}

/// Consecutive active-check results of one kind, kept with the server's state so that a check task restarted by a
/// reload or a change of servers goes on counting where the last one stopped.
#[derive(Default)]
pub struct CheckStreak {
    passes: AtomicU32,
    fails: AtomicU32,
}

impl CheckStreak {
    /// Counts one result; returns how many results of its kind came in a row, this one included.
    pub fn count(&self, ok: bool) -> u32 {
        let (this, other) = if ok {
            (&self.passes, &self.fails)
        } else {
            (&self.fails, &self.passes)
        };
        other.store(0, Relaxed);
        let before = this
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_add(1)))
            .unwrap_or(u32::MAX);
        before.saturating_add(1)
    }
}

/// The least share of its weight a server coming up takes (slow start begins "near zero", not at zero).
pub const RAMP_FLOOR: f64 = 0.01;

/// `down_until_ms` of a passive mark that only an active pass clears.
const UNTIL_CHECK_PASSES: u64 = u64::MAX;

impl ServerState {
    pub fn new(id: ServerId, upstream: &str, name: &str) -> ServerState {
        ServerState {
            id,
            metrics: ServerMetrics::new(upstream, name),
            health: AtomicU8::new(Health::Up as u8),
            drain: AtomicU8::new(DrainOverride::None as u8),
            config_drain: AtomicU8::new(2),
            fails: AtomicU32::new(0),
            window_start_ms: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
            checked: AtomicBool::new(false),
            passive_logged: AtomicBool::new(false),
            connect_warnings: WarnLimit::new(),
            up_since_ms: AtomicU64::new(0),
            added_later: AtomicBool::new(false),
            config_down: AtomicU8::new(2),
            check_streak: CheckStreak::default(),
        }
    }

    /// Marks a server added while running (not with limpet's first config): its weight ramps once it is up.
    pub fn added_while_running(&self) {
        self.added_later.store(true, Relaxed);
        if self.health() == Health::Up {
            self.came_up();
        }
    }

    /// The server just came up: its `slow_start` ramp starts now.
    fn came_up(&self) {
        self.up_since_ms.store(now_ms().max(1), Relaxed);
    }

    /// The share of its weight the server takes at `now`, while its `slow_start` ramp lasts: from
    /// [`RAMP_FLOOR`] up to (not including) 1. None once it takes its full weight.
    pub fn ramp(&self, spec: &ServerSpec, now: u64) -> Option<f64> {
        let span = spec.slow_start.as_millis() as u64;
        let since = self.up_since_ms.load(Relaxed);
        if span == 0 || since == 0 {
            return None;
        }
        let elapsed = now.saturating_sub(since);
        (elapsed < span).then(|| (elapsed as f64 / span as f64).max(RAMP_FLOOR))
    }

    /// Requests and tunnels in flight right now.
    pub fn active(&self) -> u64 {
        self.metrics.active.get().max(0) as u64
    }

    pub fn health(&self) -> Health {
        match self.health.load(Relaxed) {
            0 => Health::Up,
            1 => Health::Down,
            _ => Health::Checking,
        }
    }

    /// Sets the health state; returns whether it changed. Up from down (or from a first check, for a server
    /// added while running) starts the `slow_start` ramp.
    pub fn set_health(&self, h: Health) -> bool {
        let code = match h {
            Health::Up => 0,
            Health::Down => 1,
            Health::Checking => 2,
        };
        let before = self.health.swap(code, Relaxed);
        if code == 0 && (before == 1 || (before == 2 && self.added_later.load(Relaxed))) {
            self.came_up();
        }
        before != code
    }

    pub fn drain_override(&self) -> DrainOverride {
        match self.drain.load(Relaxed) {
            1 => DrainOverride::Drain,
            2 => DrainOverride::Undrain,
            _ => DrainOverride::None,
        }
    }

    pub fn set_drain_override(&self, d: DrainOverride) {
        self.drain.store(d as u8, Relaxed);
    }

    /// Notes the config's `drain` and `down` at a load. When `drain` changed, the config wins over an earlier
    /// admin override; a server no longer `down` comes up (its `slow_start` ramp starts).
    pub fn note_config(&self, spec: &ServerSpec) {
        let code = u8::from(spec.drain);
        let before = self.config_drain.swap(code, Relaxed);
        if before != 2 && before != code {
            self.set_drain_override(DrainOverride::None);
        }
        let down_before = self.config_down.swap(u8::from(spec.down), Relaxed);
        if down_before == 1 && !spec.down {
            self.came_up();
        }
    }

    /// Is the server draining (config or admin API)?
    pub fn draining(&self, spec: &ServerSpec) -> bool {
        match self.drain_override() {
            DrainOverride::Drain => true,
            DrainOverride::Undrain => false,
            DrainOverride::None => spec.drain,
        }
    }

    /// Says whether active checks run for this server. Without them, a mark waiting for a pass is lifted.
    pub fn set_checked(&self, checked: bool) {
        self.checked.store(checked, Relaxed);
        if !checked {
            let _ = self
                .down_until_ms
                .compare_exchange(UNTIL_CHECK_PASSES, 0, Relaxed, Relaxed);
        }
    }

    /// Marked down by passive failure accounting until some moment after `now`?
    pub fn passively_down(&self, now: u64) -> bool {
        now < self.down_until_ms.load(Relaxed)
    }

    /// Alive: may take new requests and sessions (if not draining). Not `down`, health Up, not passively down.
    pub fn alive(&self, spec: &ServerSpec, now: u64) -> bool {
        !spec.down && self.health() == Health::Up && !self.passively_down(now)
    }

    /// Still serves the sticky sessions it holds: not confirmed gone (`down` in the config, or marked down by
    /// active checks). A passive mark keeps new sessions away but leaves the existing ones where they are.
    pub fn holds_sessions(&self, spec: &ServerSpec) -> bool {
        !spec.down && self.health() != Health::Down
    }

    /// Do active checks run for this server?
    pub fn is_checked(&self) -> bool {
        self.checked.load(Relaxed)
    }

    /// Usable: alive, not draining and under `max_conns`: may take a new request or session.
    pub fn usable(&self, spec: &ServerSpec, now: u64) -> bool {
        self.alive(spec, now)
            && !self.draining(spec)
            && (spec.max_conns == 0 || self.active() < u64::from(spec.max_conns))
    }

    /// Counts a failed attempt (nginx `max_fails` within `fail_timeout`); returns true when it marks the server down:
    /// for `fail_timeout`, or until an active check passes when checks run.
    pub fn record_failure(&self, spec: &ServerSpec) -> bool {
        if spec.max_fails == 0 {
            return false;
        }
        let now = now_ms();
        let window = spec.fail_timeout.as_millis() as u64;
        let fails = if now.saturating_sub(self.window_start_ms.load(Relaxed)) > window {
            self.window_start_ms.store(now, Relaxed);
            self.fails.store(1, Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Relaxed) + 1
        };
        if fails < spec.max_fails {
            return false;
        }
        self.fails.store(0, Relaxed);
        let until = if self.checked.load(Relaxed) {
            UNTIL_CHECK_PASSES
        } else {
            now + window
        };
        self.down_until_ms.store(until, Relaxed);
        self.passive_logged.store(true, Relaxed);
        true
    }

    /// A success ends the current failure window.
    pub fn record_success(&self) {
        if self.fails.load(Relaxed) != 0 {
            self.fails.store(0, Relaxed);
        }
    }

    /// Clears a passive mark (an active check passed); says whether one was in force.
    pub fn clear_passive(&self) -> bool {
        self.fails.store(0, Relaxed);
        let before = self.down_until_ms.swap(0, Relaxed);
        self.passive_logged.store(false, Relaxed);
        let was_down = before > now_ms();
        if was_down {
            self.came_up();
        }
        was_down
    }

    /// A passive mark in force at `now`, for a hand-over: Some(Some(ms left)), or Some(None) for one that lasts
    /// until an active check passes.
    pub fn passive_left(&self, now: u64) -> Option<Option<u64>> {
        match self.down_until_ms.load(Relaxed) {
            UNTIL_CHECK_PASSES => Some(None),
            until if until > now => Some(Some(until - now)),
            _ => None,
        }
    }

    /// Puts back a passive mark handed over by another process (see [`ServerState::passive_left`]).
    pub fn restore_passive(&self, left: Option<u64>) {
        let until = left.map_or(UNTIL_CHECK_PASSES, |ms| now_ms().saturating_add(ms));
        self.down_until_ms.store(until, Relaxed);
        self.passive_logged.store(true, Relaxed);
    }

    /// True once for a passive mark that ran out on its own (after `fail_timeout`), so its end is logged once.
    pub fn passive_mark_ended(&self, now: u64) -> bool {
        let ended = self.passive_logged.load(Relaxed)
            && !self.passively_down(now)
            && self.passive_logged.swap(false, Relaxed);
        if ended {
            self.came_up();
        }
        ended
    }
}

/// An in-flight request or tunnel on a server: counted while it lives (least_conn, max_conns, the gauge).
pub struct InFlight {
    state: Arc<ServerState>,
}

impl InFlight {
    pub fn new(state: Arc<ServerState>) -> InFlight {
        state.metrics.active.inc();
        InFlight { state }
    }

    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.metrics.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(max_fails: u32) -> ServerSpec {
        ServerSpec {
            name: "127.0.0.1:1".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            weight: 1,
            max_fails,
            fail_timeout: Duration::from_secs(10),
            max_conns: 0,
            backup: false,
            down: false,
            drain: false,
            route: String::new(),
            slow_start: Duration::ZERO,
            origin: crate::config::Origin::Config,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn max_fails_within_fail_timeout_marks_down_for_fail_timeout() {
        let s = ServerState::new(1, "t_passive", "a");
        let sp = spec(2);
        assert!(!s.record_failure(&sp));
        assert!(s.record_failure(&sp));
        assert!(!s.alive(&sp, now_ms()));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(s.alive(&sp, now_ms()));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_add_up() {
        let s = ServerState::new(2, "t_passive", "b");
        let sp = spec(2);
        assert!(!s.record_failure(&sp));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!s.record_failure(&sp));
        assert!(s.alive(&sp, now_ms()));
    }

    #[tokio::test(start_paused = true)]
    async fn with_active_checks_a_passive_mark_lasts_until_a_pass() {
        let s = ServerState::new(5, "t_passive", "e");
        s.set_checked(true);
        let sp = spec(1);
        assert!(s.record_failure(&sp));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!s.alive(&sp, now_ms()));
        s.clear_passive();
        assert!(s.alive(&sp, now_ms()));
        assert!(s.record_failure(&sp));
        s.set_checked(false);
        assert!(s.alive(&sp, now_ms()), "checks removed: the mark is lifted");
    }

    #[test]
    fn max_fails_zero_never_marks_down() {
        let s = ServerState::new(3, "t_passive", "c");
        let sp = spec(0);
        for _ in 0..10 {
            assert!(!s.record_failure(&sp));
        }
        assert!(s.alive(&sp, now_ms()));
    }

    #[test]
    fn in_flight_guard_counts() {
        let s = Arc::new(ServerState::new(4, "t_passive", "d"));
        let a = InFlight::new(s.clone());
        let b = InFlight::new(s.clone());
        assert_eq!(s.active(), 2);
        drop(a);
        drop(b);
        assert_eq!(s.active(), 0);
    }
}
