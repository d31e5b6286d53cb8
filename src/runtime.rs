//! The runtime snapshot built from a config, and the state carried from one snapshot to the next.
//!
//! A reload builds a new [`Snapshot`] off the request path and swaps it in whole; requests in flight finish on the
//! one they started with. Per-server state and sticky tables live in the [`Carry`] and outlive snapshots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::config::{Balance, Config, Location, Origin, Problem, ServerBlock, Store};
use crate::metrics::ServerMetrics;
use crate::sticky::store::SessionStore;
use crate::sticky::table::SessionTable;
use crate::sticky::ServerId;
use crate::sync::lock;
use crate::tls;
use crate::upstream::{Pool, ServerState, TlsTarget, Upstream};

/// A location with its upstream resolved.
pub struct Route {
    pub location: Location,
    pub upstream: Arc<Upstream>,
}

/// A `[[server]]` block with its routes, longest prefix first.
pub struct Site {
    pub block: ServerBlock,
    pub routes: Vec<Route>,
}

impl Site {
    /// The route of the longest location prefix matching `path`.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| path.starts_with(r.location.path.as_str()))
    }

    fn serves_host(&self, host: &str) -> bool {
        self.block
            .server_name
            .iter()
            .any(|name| host_matches(name, host))
    }
}

/// nginx-style name match: exact, `*.example.com`, or `.example.com` (the domain and its subdomains).
fn host_matches(pattern: &str, host: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix('*') {
        host.len() > suffix.len() && ends_with_ignore_case(host, suffix)
    } else if let Some(domain) = pattern.strip_prefix('.') {
        host.eq_ignore_ascii_case(domain) || ends_with_ignore_case(host, pattern)
    } else {
        host.eq_ignore_ascii_case(pattern)
    }
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// The sites sharing one listen address.
pub struct AddrSites {
    pub sites: Vec<Arc<Site>>,
    /// TLS settings when the sites here terminate TLS (SNI picks the certificate).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl AddrSites {
    /// The site for a Host (port stripped): the first whose `server_name` matches, else the first without names,
    /// else the first.
    pub fn site(&self, host: Option<&str>) -> &Arc<Site> {
        let by_name = host.and_then(|h| self.sites.iter().find(|s| s.serves_host(h)));
        by_name
            .or_else(|| self.sites.iter().find(|s| s.block.server_name.is_empty()))
            .unwrap_or(&self.sites[0])
    }

    /// Settings of the connection layer (TLS, PROXY protocol, timeouts), shared by every site here.
    pub fn block(&self) -> &ServerBlock {
        &self.sites[0].block
    }
}

/// Everything a request needs, built from one config.
pub struct Snapshot {
    pub config: Config,
    /// The sites of each listen address, as configured.
    pub by_addr: HashMap<SocketAddr, Arc<AddrSites>>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Where access log lines go (kept open across reloads that leave `access_log` as it is).
    pub access_log: Arc<AccessLog>,
}

impl Snapshot {
    /// The upstream of this name.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }
}

/// A shared session store and what it was built from: (Redis URL, key prefix, store).
type StoreEntry = (String, String, Arc<SessionStore>);

/// A server's pool and what it was built from.
type PoolEntry = (PoolKey, Arc<Pool>);

/// What a pool is built from: a reload keeps the pool (and its warm connections) while this stays the same.
#[derive(PartialEq)]
struct PoolKey {
    addr: SocketAddr,
    keepalive: usize,
    keepalive_timeout: std::time::Duration,
    tls: Option<crate::config::UpstreamTls>,
}

/// State that outlives snapshots: per-server state by (upstream, address), sticky tables by upstream, and shared
/// session stores by (upstream, URL, key prefix).
#[derive(Default)]
pub struct Carry {
    servers: Mutex<HashMap<(String, String), Arc<ServerState>>>,
    /// Read on every sticky-session count change, written on reloads only (copied, then swapped in).
    by_id: Arc<ArcSwap<HashMap<ServerId, Arc<ServerState>>>>,
    tables: Mutex<HashMap<String, Arc<SessionTable>>>,
    stores: Mutex<HashMap<String, StoreEntry>>,
    pools: Mutex<HashMap<(String, String), PoolEntry>>,
    next_id: Mutex<ServerId>,
    /// limpet is ready: servers new from now on were added while running (those its first config, first DNS
    /// answers or an upgrade's hand-over named are not).
    running: std::sync::atomic::AtomicBool,
    /// Upstreams whose server counts are exported.
    counted: Mutex<HashSet<String>>,
}

impl Carry {
    /// Builds a snapshot, reusing state for servers and upstreams that were there before and dropping the rest.
    pub fn build(
        &self,
        config: Config,
        mut tls: TlsConfigs,
        access_log: Arc<AccessLog>,
    ) -> Snapshot {
        let mut keep_servers = HashSet::new();
        let mut upstreams = BTreeMap::new();
        for (name, up) in &config.upstreams {
            let mut targets = tls.upstreams.remove(name).unwrap_or_default().into_iter();
            let servers: Vec<(Arc<ServerState>, Arc<Pool>)> = up
                .servers
                .iter()
                .map(|s| {
                    keep_servers.insert((name.clone(), s.name.clone()));
                    let state = self.server_state(name, &s.name, up.health_check.is_some());
                    state.note_config(s);
                    let pool = self.pool(up, s, &state, targets.next());
                    (state, pool)
                })
                .collect();
            let table = (up.balance == Balance::Sid).then(|| self.table(name, up));
            let store = table.as_ref().and_then(|_| self.store(name, up));
            upstreams.insert(
                name.clone(),
                Arc::new(Upstream::new(up.clone(), servers, table, store)),
            );
        }
        self.prune(&keep_servers, &upstreams);
        self.count_servers(&upstreams);
        let by_addr = sites_by_addr(&config, &upstreams, &mut tls);
        Snapshot {
            config,
            by_addr,
            upstreams,
            access_log,
        }
    }

    /// limpet is ready: servers that snapshots add from now on ramp up (`slow_start`) once they are up.
    pub fn note_running(&self) {
        self.running
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn server_state(&self, upstream: &str, name: &str, checked: bool) -> Arc<ServerState> {
        let mut servers = lock(&self.servers);
        let key = (upstream.to_string(), name.to_string());
        if let Some(s) = servers.get(&key) {
            return s.clone();
        }
        let id = {
            let mut next = lock(&self.next_id);
            *next += 1;
            *next
        };
        let state = Arc::new(ServerState::new(id, upstream, name));
        if checked {
            // Active checks admit a new server after its first pass.
            state.set_health(crate::upstream::Health::Checking);
        }
        if self.running.load(std::sync::atomic::Ordering::Relaxed) {
            state.added_while_running();
        }
        servers.insert(key, state.clone());
        // Writers hold `servers`, so read-copy-update here loses no concurrent insert.
        let mut by_id = HashMap::clone(&self.by_id.load());
        by_id.insert(id, state.clone());
        self.by_id.store(Arc::new(by_id));
        state
    }

    /// The connection pool of a server, kept from the last snapshot while its address and pool settings stay.
    fn pool(
        &self,
        up: &crate::config::Upstream,
        server: &crate::config::ServerSpec,
        state: &ServerState,
        tls: Option<TlsTarget>,
    ) -> Arc<Pool> {
        let key = PoolKey {
            addr: server.addr,
            keepalive: up.keepalive,
            keepalive_timeout: up.keepalive_timeout,
            tls: up.tls.clone(),
        };
        let mut pools = lock(&self.pools);
        let slot = (up.name.clone(), server.name.clone());
        if let Some((k, pool)) = pools.get(&slot) {
            if *k == key {
                pool.set_tls(tls);
                return pool.clone();
            }
        }
        let pool = Arc::new(Pool::new(
            server.addr,
            up.keepalive,
            up.keepalive_timeout,
            tls,
            state.metrics.connects.clone(),
        ));
        pools.insert(slot, (key, pool.clone()));
        pool
    }

    fn table(&self, name: &str, up: &crate::config::Upstream) -> Arc<SessionTable> {
        let mut tables = lock(&self.tables);
        if let Some(t) = tables.get(name) {
            t.set_limits(up.sticky.session_ttl, up.sticky.max_sessions);
            return t.clone();
        }
        let by_id = self.by_id.clone();
        let on_count = Arc::new(move |id: ServerId, delta: i64| {
            if let Some(s) = by_id.load().get(&id) {
                s.metrics.sticky_sessions.add(delta);
            }
        });
        let table = Arc::new(SessionTable::new(
            up.sticky.session_ttl,
            up.sticky.max_sessions,
            on_count,
        ));
        tables.insert(name.to_string(), table.clone());
        table
    }

    /// The shared store of a sid upstream with `sticky.store = "redis://…"`, reused while its URL and key prefix
    /// stay the same. None for a local store, or (logged) when the store cannot be set up.
    fn store(&self, name: &str, up: &crate::config::Upstream) -> Option<Arc<SessionStore>> {
        let Store::Redis(url) = &up.sticky.store else {
            return None;
        };
        let prefix = &up.sticky.key_prefix;
        let ttl = up.sticky.session_ttl;
        let mut stores = lock(&self.stores);
        if let Some((u, p, store)) = stores.get(name) {
            if u == url && p == prefix {
                store.set_ttl(ttl);
                return Some(store.clone());
            }
        }
        match SessionStore::new(url, prefix, ttl, name) {
            Ok(store) => {
                stores.insert(
                    name.to_string(),
                    (url.clone(), prefix.clone(), store.clone()),
                );
                Some(store)
            }
            Err(e) => {
                tracing::error!(upstream = %name, error = %e, "session store disabled: local table only");
                stores.remove(name);
                None
            }
        }
    }

    /// Sets `limpet_upstream_servers` by origin, and drops the series of upstreams that are gone.
    fn count_servers(&self, upstreams: &BTreeMap<String, Arc<Upstream>>) {
        let gauge = &crate::metrics::metrics().upstream_servers;
        let mut counted = lock(&self.counted);
        for gone in counted.iter().filter(|n| !upstreams.contains_key(*n)) {
            for origin in Origin::ALL {
                let _ = gauge.remove_label_values(&[gone, origin.label()]);
            }
        }
        counted.clear();
        for (name, up) in upstreams {
            for origin in Origin::ALL {
                let n = up.peers.iter().filter(|p| p.spec.origin == origin).count();
                gauge
                    .with_label_values(&[name, origin.label()])
                    .set(n as i64);
            }
            counted.insert(name.clone());
        }
    }

    /// Drops state of servers, tables and stores that left the config, and sticky entries of removed servers.
    fn prune(&self, keep: &HashSet<(String, String)>, upstreams: &BTreeMap<String, Arc<Upstream>>) {
        let mut servers = lock(&self.servers);
        let mut tables = lock(&self.tables);
        tables.retain(|name, _| upstreams.get(name).is_some_and(|u| u.sessions.is_some()));
        lock(&self.stores).retain(|name, _| upstreams.get(name).is_some_and(|u| u.store.is_some()));
        for up in upstreams.values() {
            if let Some(t) = &up.sessions {
                let ids: HashSet<ServerId> = up.peers.iter().map(|p| p.state.id).collect();
                t.retain_servers(|id| ids.contains(&id));
            }
        }
        lock(&self.pools).retain(|k, _| keep.contains(k));
        let removed: Vec<_> = servers
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        if removed.is_empty() {
            return;
        }
        let mut by_id = HashMap::clone(&self.by_id.load());
        for key in removed {
            if let Some(s) = servers.remove(&key) {
                by_id.remove(&s.id);
                ServerMetrics::remove(&key.0, &key.1);
            }
        }
        self.by_id.store(Arc::new(by_id));
    }
}

fn sites_by_addr(
    config: &Config,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    tls: &mut TlsConfigs,
) -> HashMap<SocketAddr, Arc<AddrSites>> {
    let mut grouped: HashMap<SocketAddr, Vec<Arc<Site>>> = HashMap::new();
    for block in &config.servers {
        let routes = block
            .locations
            .iter()
            .filter_map(|l| {
                upstreams.get(&l.proxy_pass).map(|u| Route {
                    location: l.clone(),
                    upstream: u.clone(),
                })
            })
            .collect();
        let site = Arc::new(Site {
            block: block.clone(),
            routes,
        });
        for addr in &block.listen {
            grouped.entry(*addr).or_default().push(site.clone());
        }
    }
    grouped
        .into_iter()
        .map(|(addr, sites)| {
            let tls = tls.listeners.remove(&addr);
            (addr, Arc::new(AddrSites { sites, tls }))
        })
        .collect()
}

/// Server names and the certificate they are served.
type SniEntry = (Vec<String>, Arc<rustls::sign::CertifiedKey>);

/// TLS settings loaded from a config's files.
#[derive(Default)]
pub struct TlsConfigs {
    /// Server settings by listen address.
    pub listeners: HashMap<SocketAddr, Arc<rustls::ServerConfig>>,
    /// For each upstream with `tls = true`: one target per server, in config order.
    pub upstreams: HashMap<String, Vec<TlsTarget>>,
}

/// Loads the certificates of every TLS listener and the CAs of every TLS upstream; a missing or mismatched pair,
/// an unusable CA bundle or a bad server name is a problem with its key path.
pub fn tls_configs(config: &Config) -> Result<TlsConfigs, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut entries: HashMap<SocketAddr, Vec<SniEntry>> = HashMap::new();
    // The connection layer of an address is its first block's, `http2` included.
    let mut http2: HashMap<SocketAddr, bool> = HashMap::new();
    for (i, block) in config.servers.iter().enumerate() {
        for addr in &block.listen {
            http2.entry(*addr).or_insert(block.h2.over_tls);
        }
        let Some(files) = &block.tls else { continue };
        match tls::load_certified_key(files) {
            Ok(key) => {
                for addr in &block.listen {
                    entries
                        .entry(*addr)
                        .or_default()
                        .push((block.server_name.clone(), key.clone()));
                }
            }
            Err(e) => problems.push(Problem {
                path: format!("server[{i}].tls"),
                message: e.to_string(),
            }),
        }
    }
    let mut out = TlsConfigs::default();
    for (addr, list) in entries {
        let h2 = http2.get(&addr).copied().unwrap_or(true);
        match tls::server_config(list, h2) {
            Ok(c) => {
                out.listeners.insert(addr, c);
            }
            Err(e) => problems.push(Problem {
                path: format!("server (listen {addr}).tls"),
                message: e.to_string(),
            }),
        }
    }
    match upstream_targets(config) {
        Ok(targets) => out.upstreams = targets,
        Err(more) => problems.extend(more),
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The TLS settings of a snapshot whose servers changed (DNS, the runtime API): the listeners' as they are in
/// `current`, the upstreams' built for `config`'s servers.
pub fn tls_for_servers(current: &Snapshot, config: &Config) -> Result<TlsConfigs, Vec<Problem>> {
    let listeners = current
        .by_addr
        .iter()
        .filter_map(|(addr, sites)| Some((*addr, sites.tls.clone()?)))
        .collect();
    Ok(TlsConfigs {
        listeners,
        upstreams: upstream_targets(config)?,
    })
}

/// For each upstream with `tls = true`: one TLS target per server, in list order.
fn upstream_targets(config: &Config) -> Result<HashMap<String, Vec<TlsTarget>>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut out = HashMap::new();
    for (name, up) in &config.upstreams {
        if let Some(targets) = upstream_tls(name, up, &mut problems) {
            out.insert(name.clone(), targets);
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The TLS targets of an upstream's servers (None when it is plain, or on a problem).
fn upstream_tls(
    name: &str,
    up: &crate::config::Upstream,
    problems: &mut Vec<Problem>,
) -> Option<Vec<TlsTarget>> {
    let settings = up.tls.as_ref()?;
    let key = |k: &str| format!("upstream.{name}.{k}");
    let client = tls::client_config(settings.ca.as_deref())
        .map_err(|e| {
            let at = if settings.ca.is_some() {
                "tls_ca"
            } else {
                "tls"
            };
            problems.push(Problem {
                path: key(at),
                message: e.to_string(),
            });
        })
        .ok()?;
    let named = settings.server_name.as_deref();
    let mut targets = Vec::with_capacity(up.servers.len());
    for (i, s) in up.servers.iter().enumerate() {
        match TlsTarget::new(client.clone(), named, &s.name) {
            Ok(t) => targets.push(t),
            Err(message) => {
                let at = match named {
                    Some(_) => "tls_server_name".to_string(),
                    None => format!("server[{i}].addr"),
                };
                problems.push(Problem {
                    path: key(&at),
                    message,
                });
                return None;
            }
        }
    }
    Some(targets)
}

#[cfg(test)]
mod tests {
    use super::host_matches;

    #[test]
    fn server_names_match_like_nginx() {
        assert!(host_matches("example.com", "EXAMPLE.com"));
        assert!(!host_matches("example.com", "www.example.com"));
        assert!(host_matches("*.example.com", "www.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches(".example.com", "example.com"));
        assert!(host_matches(".example.com", "a.b.example.com"));
    }
}
