//! The metrics limpet exports: every metric of the design, exact gauges, `promtool check metrics`, a real
//! Prometheus scraping the admin listener, `/healthz` during shutdown, and the Grafana dashboard's queries.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::Value;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

/// Every metric of the design, with its type.
const DESIGN: [(&str, &str); 12] = [
    ("limpet_http_requests_total", "counter"),
    ("limpet_http_request_duration_seconds", "histogram"),
    ("limpet_upstream_server_up", "gauge"),
    ("limpet_upstream_active_connections", "gauge"),
    ("limpet_websocket_tunnels_active", "gauge"),
    ("limpet_websocket_tunnels_total", "counter"),
    ("limpet_sticky_sessions", "gauge"),
    ("limpet_sticky_lookups_total", "counter"),
    ("limpet_sticky_learned_total", "counter"),
    ("limpet_health_checks_total", "counter"),
    ("limpet_config_reloads_total", "counter"),
    ("limpet_client_connections_active", "gauge"),
];

async fn scrape(l: &Limpet) -> String {
    let r = get(l.admin.unwrap(), "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    r.text()
}

/// The value of the series `name{labels}` (labels as exposed, e.g. `server="a",upstream="app"`), if present.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits until `name{labels}` reads `want`.
async fn wait_sample(l: &Limpet, name: &str, labels: &[(&str, &str)], want: f64) {
    eventually(WAIT, &format!("{name}{labels:?} == {want}"), || async {
        (sample(&scrape(l).await, name, labels) == Some(want)).then_some(())
    })
    .await;
}

fn sid_config(node: SocketAddr, checks: bool) -> String {
    let mut c = simple_config("sid", &[node], "", "");
    if checks {
        c.push_str("[upstream.app.health_check]\ninterval = \"200ms\"\ntimeout = \"1s\"\n");
    }
    c
}

async fn handshake(addr: SocketAddr) -> String {
    let r = get(addr, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_str(r.text().trim_start_matches('0')).unwrap();
    v["sid"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_design_metric_is_exported_and_promtool_finds_nothing_to_say() {
    let fleet = NodeFleet::start(1, &[]);
    let node = fleet.nodes[0].addr;
    let limpet = Limpet::start(&sid_config(node, true));
    let n = node.to_string();
    let s = [("upstream", "app"), ("server", n.as_str())];
    wait_sample(&limpet, "limpet_upstream_server_up", &s, 1.0).await;
    // Traffic that touches every family: a session, a lookup, a tunnel, a reload.
    let sid = handshake(limpet.addr()).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let ct = [("content-type", "text/plain;charset=UTF-8")];
    let hit = request(limpet.addr(), "POST", &path, &ct, "40")
        .await
        .unwrap();
    assert_eq!(hit.status, 200, "{}", hit.text());
    let mut ws = ws_connect(limpet.addr(), "/socket.io/?EIO=4&transport=websocket").await;
    let reload = request(limpet.admin.unwrap(), "POST", "/reload", &[], "")
        .await
        .unwrap();
    assert_eq!(reload.status, 200, "{}", reload.text());

    let text = scrape(&limpet).await;
    for (name, kind) in DESIGN {
        assert!(
            text.contains(&format!("\n# TYPE {name} {kind}\n")),
            "no {kind} {name} in:\n{text}"
        );
    }
    // Beyond the design's list: what operators watch in an outage.
    for name in [
        "limpet_upstream_connections_opened_total",
        "limpet_access_log_dropped_total",
    ] {
        assert!(
            text.contains(&format!("\n# TYPE {name} counter\n")),
            "no counter {name} in:\n{text}"
        );
    }
    assert!(sample(&text, "limpet_upstream_connections_opened_total", &s).unwrap_or(0.0) >= 1.0);
    assert!(
        text.lines()
            .any(|l| l == "limpet_access_log_dropped_total 0"),
        "{text}"
    );
    assert_eq!(sample(&text, "limpet_sticky_learned_total", &s), Some(1.0));
    let hits = [("upstream", "app"), ("result", "hit")];
    assert_eq!(
        sample(&text, "limpet_sticky_lookups_total", &hits),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "limpet_websocket_tunnels_active", &s),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "limpet_config_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );
    assert!(sample(&text, "limpet_health_checks_total", &[("result", "ok")]).unwrap() >= 1.0);

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.is_empty(),
        "promtool: {said}\n{text}"
    );
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_match_what_is_open() {
    let mut fleet = NodeFleet::start(1, &[]);
    let node = fleet.nodes[0].addr;
    let limpet = Limpet::start(&sid_config(node, true));
    let n = node.to_string();
    let s = [("upstream", "app"), ("server", n.as_str())];
    wait_sample(&limpet, "limpet_upstream_server_up", &s, 1.0).await;

    let mut tunnels = Vec::new();
    for _ in 0..3 {
        tunnels.push(ws_connect(limpet.addr(), "/socket.io/?EIO=4&transport=websocket").await);
    }
    let idle = TcpStream::connect(limpet.addr()).await.unwrap();
    for _ in 0..2 {
        handshake(limpet.addr()).await;
    }
    let listener = [("server", "127.0.0.1:0")];
    wait_sample(&limpet, "limpet_websocket_tunnels_active", &s, 3.0).await;
    wait_sample(&limpet, "limpet_upstream_active_connections", &s, 3.0).await;
    wait_sample(&limpet, "limpet_client_connections_active", &listener, 4.0).await;
    wait_sample(&limpet, "limpet_sticky_sessions", &s, 2.0).await;
    let st: Value =
        serde_json::from_slice(&get(limpet.admin.unwrap(), "/status").await.body).unwrap();
    assert_eq!(st["upstreams"]["app"]["sessions"], 2, "{st}");

    let mut first = tunnels.remove(0);
    first.send(Message::Close(None)).await.unwrap();
    drop(first);
    drop(idle);
    wait_sample(&limpet, "limpet_websocket_tunnels_active", &s, 2.0).await;
    wait_sample(&limpet, "limpet_upstream_active_connections", &s, 2.0).await;
    wait_sample(&limpet, "limpet_client_connections_active", &listener, 2.0).await;
    assert_eq!(
        sample(&scrape(&limpet).await, "limpet_websocket_tunnels_total", &s),
        Some(3.0)
    );

    tunnels.clear();
    wait_sample(&limpet, "limpet_websocket_tunnels_active", &s, 0.0).await;
    wait_sample(&limpet, "limpet_upstream_active_connections", &s, 0.0).await;
    wait_sample(&limpet, "limpet_client_connections_active", &listener, 0.0).await;

    // The node goes away: the checks mark it down and its sessions leave the table.
    fleet.nodes[0].kill();
    wait_sample(&limpet, "limpet_upstream_server_up", &s, 0.0).await;
    wait_sample(&limpet, "limpet_sticky_sessions", &s, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_a_server_are_counted_under_server_none() {
    let gone = HttpBackend::start("gone").await;
    let addr = gone.addr;
    drop(gone);
    let limpet = Limpet::start(&simple_config("round_robin", &[addr], "retries = 0", ""));
    // The first request fails to connect (counted for the server); the server is then marked down, and the
    // second is answered by limpet alone.
    assert_eq!(get(limpet.addr(), "/x").await.status, 502);
    assert_eq!(get(limpet.addr(), "/x").await.status, 502);
    let text = scrape(&limpet).await;
    let a = addr.to_string();
    let total = "limpet_http_requests_total";
    let labels = |server| [("upstream", "app"), ("server", server), ("status", "5xx")];
    assert_eq!(
        sample(&text, total, &labels(a.as_str())),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, total, &labels("none")), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "limpet_http_request_duration_seconds_count",
            &[("upstream", "app")]
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_shutting_down() {
    let ws_backend = WsBackend::start().await;
    let config = simple_config("round_robin", &[ws_backend.addr], "", "")
        .replace("[admin]", "[global]\nshutdown_timeout = \"30s\"\n\n[admin]");
    let mut limpet = Limpet::start(&config);
    assert_eq!(get(limpet.admin.unwrap(), "/healthz").await.status, 200);
    // An open tunnel keeps limpet in its shutdown drain.
    let mut ws = ws_connect(limpet.addr(), "/ws").await;
    limpet.signal("TERM");
    eventually(WAIT, "/healthz 503", || async {
        let r = request(limpet.admin.unwrap(), "GET", "/healthz", &[], "").await;
        r.ok().filter(|r| r.status == 503).map(|_| ())
    })
    .await;
    ws.send(Message::Text("still open".into())).await.unwrap();
    ws.close(None).await.unwrap();
    drop(ws);
    assert_eq!(limpet.wait_exit(WAIT).await, Some(0));
}

// ---------------------------------------------------------------------------------------------------------------
// Grafana dashboard and a real Prometheus.

fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON")
}

/// Every PromQL expression of the dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<String> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            out.push(
                expr.replace("$__rate_interval", "1m")
                    .replace("$__range", "5m")
                    .replace("$upstream", ".*"),
            );
        }
    }
    out
}

/// The `limpet_*` names a query mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("limpet_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_grafana_dashboard_shows_the_required_panels_over_limpet_metrics() {
    let d = dashboard();
    assert!(d["title"].is_string() && d["panels"].is_array() && d["schemaVersion"].is_number());
    let exported: BTreeSet<String> = DESIGN
        .iter()
        .flat_map(|(n, kind)| {
            if *kind == "histogram" {
                vec![
                    format!("{n}_bucket"),
                    format!("{n}_sum"),
                    format!("{n}_count"),
                ]
            } else {
                vec![n.to_string()]
            }
        })
        .collect();
    let used: BTreeSet<String> = dashboard_queries()
        .iter()
        .flat_map(|q| metric_names(q))
        .collect();
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries unknown metrics {unknown:?}"
    );
    let titles: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect();
    for want in [
        "requests/s by server",
        "error rate",
        "p99 latency",
        "tunnels by server",
        "sticky sessions",
        "server up/down",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel for {want}: {titles:?}"
        );
    }
    for want in [
        "limpet_http_requests_total",
        "limpet_http_request_duration_seconds_bucket",
        "limpet_websocket_tunnels_active",
        "limpet_sticky_sessions",
        "limpet_upstream_server_up",
    ] {
        assert!(used.contains(want), "the dashboard never shows {want}");
    }
}

/// A Prometheus server (Debian's `prometheus`) on a free loopback port, scraping one target every second.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Prometheus {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let config = format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: limpet\n    static_configs:\n      - targets: ['{target}']\n"
            );
            let config_path = dir.path().join("prometheus.yml");
            std::fs::write(&config_path, config).unwrap();
            // Prometheus cannot report a port it chose: take a free one and hand it over.
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("prometheus (Debian package prometheus) is installed");
            let mut p = Prometheus { child, addr, dir };
            if p.ready().await {
                return p;
            }
        }
        panic!("prometheus did not start on any of 5 ports");
    }

    /// Waits until it answers /-/ready; false when it exits first (the port was taken meanwhile).
    async fn ready(&mut self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if let Ok(r) = request(self.addr, "GET", "/-/ready", &[], "").await {
                if r.status == 200 {
                    return true;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query`: the `data` of a successful answer.
    async fn query(&self, promql: &str) -> Result<Value, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let r = request(self.addr, "GET", &path, &[], "").await?;
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        if v["status"] != "success" {
            return Err(format!("{promql}: {v}"));
        }
        Ok(v["data"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_limpet_and_runs_the_dashboard_queries() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&simple_config("round_robin", &[backend.addr], "", ""));
    for _ in 0..3 {
        assert_eq!(get(limpet.addr(), "/x").await.status, 200);
    }
    let prom = Prometheus::start(limpet.admin.unwrap()).await;
    let server = backend.addr.to_string();
    eventually(
        Duration::from_secs(30),
        "limpet_upstream_server_up through Prometheus",
        || async {
            let data = prom.query("limpet_upstream_server_up").await.ok()?;
            let found = data["result"].as_array()?.iter().any(|r| {
                r["metric"]["server"] == server.as_str()
                    && r["metric"]["upstream"] == "app"
                    && r["value"][1] == "1"
            });
            found.then_some(())
        },
    )
    .await;
    let data = prom
        .query("sum(limpet_http_requests_total{upstream=\"app\",status=\"2xx\"})")
        .await
        .unwrap();
    assert_eq!(data["result"][0]["value"][1], "3", "{data}");
    // Every query of the Grafana dashboard is valid PromQL for this Prometheus.
    for q in dashboard_queries() {
        prom.query(&q)
            .await
            .unwrap_or_else(|e| panic!("dashboard query failed: {e}"));
    }
}
