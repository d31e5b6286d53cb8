//! Upstream groups at run time: their servers with live state, balancers over primaries and backups, and the pick.

pub mod conn;
pub mod dns;
pub mod h1;
pub mod membership;
pub mod pool;
mod ramp;
pub mod state;

use std::sync::Arc;

use crate::balance::{Balancer, Candidate, Method, PickKey, ServerView};
use crate::clock::now_ms;
use crate::config::{self, Balance};
use crate::metrics::{metrics, StatusCounters, NO_SERVER};
use crate::sticky::store::SessionStore;
use crate::sticky::table::SessionTable;
use crate::sticky::ServerId;
pub use conn::Conn;
pub use pool::{ConnectError, Pool, TlsTarget};
use prometheus::{Histogram, IntCounter};
pub use state::{Health, InFlight, ServerState};
use tracing::warn;

/// One server of an upstream: its config, its carried-over state and its idle connections.
pub struct Peer {
    pub spec: config::ServerSpec,
    pub state: Arc<ServerState>,
    pub pool: Arc<Pool>,
}

impl Peer {
    pub fn usable(&self, now: u64) -> bool {
        self.state.usable(&self.spec, now)
    }

    pub fn alive(&self, now: u64) -> bool {
        self.state.alive(&self.spec, now)
    }

    /// At its `max_conns`: takes no request, not even one of a session it holds.
    pub fn full(&self) -> bool {
        self.spec.max_conns != 0 && self.state.active() >= u64::from(self.spec.max_conns)
    }

    /// Still serves the sticky sessions it holds (see [`ServerState::holds_sessions`]).
    pub fn holds_sessions(&self) -> bool {
        self.state.holds_sessions(&self.spec)
    }

    /// Counts a failed request (passive check) and logs, once, when that marks the server down.
    pub fn record_failure(&self, upstream: &str, why: &dyn std::fmt::Display) {
        if !self.state.record_failure(&self.spec) {
            return;
        }
        let until = if self.state.is_checked() {
            "an active check passes".to_string()
        } else {
            format!(
                "{} passes",
                humantime::format_duration(self.spec.fail_timeout)
            )
        };
        warn!(%upstream, server = %self.spec.name, by = "passive check", reason = %why, %until, "server is down");
    }
}

/// Sticky lookup counters of one upstream.
pub struct Lookups {
    pub hit: IntCounter,
    pub miss: IntCounter,
    pub dead: IntCounter,
}

impl Lookups {
    fn new(upstream: &str) -> Lookups {
        let c = |r: &str| metrics().sticky_lookups.with_label_values(&[upstream, r]);
        Lookups {
            hit: c("hit"),
            miss: c("miss"),
            dead: c("dead"),
        }
    }
}

/// A runtime upstream group.
pub struct Upstream {
    pub config: config::Upstream,
    pub peers: Vec<Peer>,
    /// The method new requests and new sessions are placed by (the sticky fallback for `sid`).
    pub method: Method,
    /// The sid table, for `balance = "sid"`.
    pub sessions: Option<Arc<SessionTable>>,
    /// The sessions shared with other limpet instances, for `sticky.store = "redis://…"`.
    pub store: Option<Arc<SessionStore>>,
    /// Sticky lookups by result.
    pub lookups: Lookups,
    /// Request durations.
    pub duration: Histogram,
    /// Requests answered without reaching a server, by status class.
    pub no_server: StatusCounters,
    primaries: Vec<usize>,
    backups: Vec<usize>,
    primary: Balancer,
    backup: Balancer,
}

/// Balancer method for a config method (sid places new sessions with its fallback).
pub fn method_of(balance: Balance, fallback: Balance) -> Method {
    match if balance == Balance::Sid {
        fallback
    } else {
        balance
    } {
        Balance::RoundRobin | Balance::Sid => Method::RoundRobin,
        Balance::LeastConn => Method::LeastConn,
        Balance::IpHash => Method::IpHash,
        Balance::Hash => Method::Hash,
    }
}

/// The servers of one set (primaries or backups) as a balancer sees them.
struct View<'a> {
    peers: &'a [Peer],
    set: &'a [usize],
    tried: &'a [usize],
    now: u64,
}

impl ServerView for View<'_> {
    fn usable(&self, index: usize) -> bool {
        let p = self.set[index];
        !self.tried.contains(&p) && self.peers[p].usable(self.now)
    }

    fn load(&self, index: usize) -> u64 {
        self.peers[self.set[index]].state.active()
    }
}

impl Upstream {
    /// Builds the runtime group from its config, the servers' carried-over state and connection pools (each in
    /// config order), its sticky table and its shared store.
    pub fn new(
        config: config::Upstream,
        servers: Vec<(Arc<ServerState>, Arc<Pool>)>,
        sessions: Option<Arc<SessionTable>>,
        store: Option<Arc<SessionStore>>,
    ) -> Upstream {
        let peers: Vec<Peer> = config
            .servers
            .iter()
            .zip(servers)
            .map(|(spec, (state, pool))| Peer {
                pool,
                spec: spec.clone(),
                state,
            })
            .collect();
        let (backups, primaries): (Vec<usize>, Vec<usize>) =
            (0..peers.len()).partition(|&i| peers[i].spec.backup);
        let candidates = |set: &[usize]| -> Vec<Candidate> {
            set.iter()
                .map(|&i| Candidate {
                    weight: peers[i].spec.weight,
                    key: peers[i].spec.name.clone(),
                })
                .collect()
        };
        let method = method_of(config.balance, config.sticky.fallback);
        Upstream {
            primary: Balancer::new(method, &candidates(&primaries)),
            backup: Balancer::new(method, &candidates(&backups)),
            primaries,
            backups,
            method,
            lookups: Lookups::new(&config.name),
            duration: metrics().duration(&config.name),
            no_server: StatusCounters::new(&config.name, NO_SERVER),
            sessions,
            store,
            peers,
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Picks a server for a new request or session: primaries first, backups only while no primary is usable.
    /// `tried` holds servers already attempted for this request. A server ramping up (`slow_start`) takes the pick
    /// only at its current share; otherwise the others take it, unless none can.
    pub fn pick(&self, key: &PickKey<'_>, tried: &[usize]) -> Option<usize> {
        let now = now_ms();
        let first = self.pick_among(key, tried, now)?;
        if self.takes(first, key, now) {
            return Some(first);
        }
        let mut skip = tried.to_vec();
        skip.push(first);
        for _ in 0..self.peers.len() {
            let Some(next) = self.pick_among(key, &skip, now) else {
                break;
            };
            if self.takes(next, key, now) {
                return Some(next);
            }
            skip.push(next);
        }
        Some(first)
    }

    /// Does the server at `index` take this pick (always, unless it is ramping up)?
    fn takes(&self, index: usize, key: &PickKey<'_>, now: u64) -> bool {
        let peer = &self.peers[index];
        peer.state
            .ramp(&peer.spec, now)
            .is_none_or(|share| ramp::admits(self.method, key, u64::from(peer.state.id), share))
    }

    fn pick_among(&self, key: &PickKey<'_>, tried: &[usize], now: u64) -> Option<usize> {
        let view = |set| View {
            peers: &self.peers,
            set,
            tried,
            now,
        };
        self.primary
            .pick(key, &view(&self.primaries))
            .map(|i| self.primaries[i])
            .or_else(|| {
                self.backup
                    .pick(key, &view(&self.backups))
                    .map(|i| self.backups[i])
            })
    }

    /// Index of the server with this stable id, if it is still in the group.
    pub fn index_of(&self, id: ServerId) -> Option<usize> {
        self.peers.iter().position(|p| p.state.id == id)
    }

    /// Index of the server whose address (as written in the config) is `name`.
    pub fn index_of_name(&self, name: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.spec.name == name)
    }

    /// Index of the server whose `route` is `route`.
    pub fn index_of_route(&self, route: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.spec.route == route)
    }
}
