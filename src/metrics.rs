//! Every metric limpet exports, in one Prometheus registry.
//!
//! Label handles are resolved when a server's state is created (see `upstream::state`), so recording a request
//! touches only atomics.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process-wide metrics.
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub server_up: IntGaugeVec,
    pub active_connections: IntGaugeVec,
    pub tunnels_active: IntGaugeVec,
    pub tunnels_total: IntCounterVec,
    pub sticky_sessions: IntGaugeVec,
    pub sticky_lookups: IntCounterVec,
    pub sticky_learned: IntCounterVec,
    pub sticky_store_errors: IntCounterVec,
    pub sticky_store_dropped: IntCounterVec,
    pub upstream_connects: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub health_checks: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub client_connections: IntGaugeVec,
    pub client_connections_closed: IntCounterVec,
    pub upstream_servers: IntGaugeVec,
    pub dns_lookups: IntCounterVec,
}

const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let us = &["upstream", "server"];
        let usp = &["upstream", "server", "protocol"];
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "limpet_http_request_duration_seconds",
                "Time from receiving a request to the end of its response head.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("valid metric definition");
        r.register(Box::new(duration.clone()))
            .expect("metric registered once");
        Metrics {
            http_requests: counter(
                &r,
                "limpet_http_requests_total",
                "HTTP requests by upstream, server and status class (server=\"none\": answered by limpet without a server).",
                &["upstream", "server", "status"],
            ),
            http_request_duration: duration,
            server_up: gauge(
                &r,
                "limpet_upstream_server_up",
                "1 while a server can take traffic.",
                us,
            ),
            active_connections: gauge(
                &r,
                "limpet_upstream_active_connections",
                "Requests and tunnels in flight to a server.",
                us,
            ),
            tunnels_active: gauge(
                &r,
                "limpet_websocket_tunnels_active",
                "Open WebSocket tunnels, by the client's protocol (h1: Upgrade, h2: extended CONNECT).",
                usp,
            ),
            tunnels_total: counter(
                &r,
                "limpet_websocket_tunnels_total",
                "WebSocket tunnels opened, by the client's protocol (h1: Upgrade, h2: extended CONNECT).",
                usp,
            ),
            sticky_sessions: gauge(
                &r,
                "limpet_sticky_sessions",
                "Engine.IO sessions in the sticky table.",
                us,
            ),
            sticky_lookups: counter(
                &r,
                "limpet_sticky_lookups_total",
                "Sticky session lookups by result (hit, miss, dead).",
                &["upstream", "result"],
            ),
            sticky_learned: counter(
                &r,
                "limpet_sticky_learned_total",
                "Engine.IO sessions learned.",
                us,
            ),
            sticky_store_errors: counter(
                &r,
                "limpet_sticky_store_errors_total",
                "Shared session store operations that failed or timed out.",
                &["upstream"],
            ),
            sticky_store_dropped: counter(
                &r,
                "limpet_sticky_store_writes_dropped_total",
                "Session refreshes and writes not sent to the shared store because its queue was full.",
                &["upstream"],
            ),
            upstream_servers: gauge(
                &r,
                "limpet_upstream_servers",
                "Servers of an upstream, by where they come from (config, dns, api); servers draining out included.",
                &["upstream", "origin"],
            ),
            dns_lookups: counter(
                &r,
                "limpet_dns_lookups_total",
                "DNS lookups of resolve and service entries, by result (ok, error, empty).",
                &["upstream", "result"],
            ),
            upstream_connects: counter(
                &r,
                "limpet_upstream_connections_opened_total",
                "Connections opened to a server for requests (pooled ones reused are not counted).",
                us,
            ),
            access_log_dropped: counter(
                &r,
                "limpet_access_log_dropped_total",
                "Access log lines dropped because the writer was too far behind.",
                &[],
            )
            .with_label_values(&[]),
            health_checks: counter(
                &r,
                "limpet_health_checks_total",
                "Active health checks by result (ok, fail).",
                &["upstream", "server", "result"],
            ),
            config_reloads: counter(
                &r,
                "limpet_config_reloads_total",
                "Config reloads by result.",
                &["result"],
            ),
            client_connections: gauge(
                &r,
                "limpet_client_connections_active",
                "Client connections open, by listener.",
                &["server"],
            ),
            client_connections_closed: counter(
                &r,
                "limpet_client_connections_closed_total",
                "Client connections limpet closed to protect itself, by listener and reason (max_connections, \
                 max_connections_per_ip, idle_reused, proxy_protocol).",
                &["server", "reason"],
            ),
            registry: r,
        }
    }

    /// The prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// The request-duration histogram of one upstream.
    pub fn duration(&self, upstream: &str) -> Histogram {
        self.http_request_duration.with_label_values(&[upstream])
    }
}

/// The process-wide metrics, created on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The `server` label of requests limpet answered without reaching a server (none usable, session unknown, ...).
pub const NO_SERVER: &str = "none";

/// `limpet_http_requests_total` of one (upstream, server) by status class, resolved once.
#[derive(Clone)]
pub struct StatusCounters([IntCounter; 5]);

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl StatusCounters {
    /// Resolves (creating at zero) the five series.
    pub fn new(upstream: &str, server: &str) -> StatusCounters {
        let m = metrics();
        StatusCounters(
            STATUS_CLASSES.map(|c| m.http_requests.with_label_values(&[upstream, server, c])),
        )
    }

    /// Counts one response by its status class.
    pub fn record(&self, status: u16) {
        let i = usize::from((status / 100).clamp(1, 5) - 1);
        self.0[i].inc();
    }
}

/// How the client asked for a WebSocket tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelProtocol {
    /// An HTTP/1.1 `Upgrade: websocket`.
    H1 = 0,
    /// An HTTP/2 extended CONNECT (RFC 8441).
    H2 = 1,
}

impl TunnelProtocol {
    const ALL: [TunnelProtocol; 2] = [TunnelProtocol::H1, TunnelProtocol::H2];

    /// The `protocol` label's value.
    pub fn label(self) -> &'static str {
        match self {
            TunnelProtocol::H1 => "h1",
            TunnelProtocol::H2 => "h2",
        }
    }
}

/// Per-server handles, resolved once so the hot path records with atomics only.
#[derive(Clone)]
pub struct ServerMetrics {
    pub status: StatusCounters,
    pub up: IntGauge,
    pub active: IntGauge,
    /// By [`TunnelProtocol`].
    pub tunnels_active: [IntGauge; 2],
    /// By [`TunnelProtocol`].
    pub tunnels_total: [IntCounter; 2],
    pub sticky_sessions: IntGauge,
    pub sticky_learned: IntCounter,
    pub checks_ok: IntCounter,
    pub checks_fail: IntCounter,
    pub connects: IntCounter,
}

impl ServerMetrics {
    /// Resolves (creating at zero) the series of one server.
    pub fn new(upstream: &str, server: &str) -> ServerMetrics {
        let m = metrics();
        let l = &[upstream, server];
        ServerMetrics {
            status: StatusCounters::new(upstream, server),
            up: m.server_up.with_label_values(l),
            active: m.active_connections.with_label_values(l),
            tunnels_active: TunnelProtocol::ALL.map(|p| {
                m.tunnels_active
                    .with_label_values(&[upstream, server, p.label()])
            }),
            tunnels_total: TunnelProtocol::ALL.map(|p| {
                m.tunnels_total
                    .with_label_values(&[upstream, server, p.label()])
            }),
            sticky_sessions: m.sticky_sessions.with_label_values(l),
            sticky_learned: m.sticky_learned.with_label_values(l),
            checks_ok: m.health_checks.with_label_values(&[upstream, server, "ok"]),
            checks_fail: m
                .health_checks
                .with_label_values(&[upstream, server, "fail"]),
            connects: m.upstream_connects.with_label_values(l),
        }
    }

    /// Counts one response by its status class.
    pub fn record_status(&self, status: u16) {
        self.status.record(status);
    }

    /// Open tunnels of either protocol.
    pub fn tunnels_open(&self) -> i64 {
        self.tunnels_active.iter().map(IntGauge::get).sum()
    }

    /// Removes the series of a server that left the config.
    pub fn remove(upstream: &str, server: &str) {
        let m = metrics();
        let l = &[upstream, server];
        for c in STATUS_CLASSES {
            let _ = m.http_requests.remove_label_values(&[upstream, server, c]);
        }
        for g in [&m.server_up, &m.active_connections, &m.sticky_sessions] {
            let _ = g.remove_label_values(l);
        }
        for c in [&m.sticky_learned, &m.upstream_connects] {
            let _ = c.remove_label_values(l);
        }
        for p in TunnelProtocol::ALL {
            let _ = m
                .tunnels_active
                .remove_label_values(&[upstream, server, p.label()]);
            let _ = m
                .tunnels_total
                .remove_label_values(&[upstream, server, p.label()]);
        }
        for r in ["ok", "fail"] {
            let _ = m.health_checks.remove_label_values(&[upstream, server, r]);
        }
    }
}
