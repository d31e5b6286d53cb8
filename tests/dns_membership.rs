//! Servers that DNS names while limpet runs (`resolve = true`, `service`), against a real DNS server (dnsmasq on a
//! loopback port) whose records the tests change, with real Socket.IO fleets and clients behind the shipped config.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use support::dns::{port_free_on, Dnsmasq, Srv};
use support::metrics::metric;
use support::node::{assert_connected_cleanly, Node, SioClient};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// The shipped `config/limpet.toml` (health checks, default timeouts) on ephemeral ports, asking `dns`, with
/// `servers` (TOML tables) instead of its three servers.
fn shipped_with(dns: SocketAddr, servers: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/limpet.toml");
    let mut text = std::fs::read_to_string(path).expect("read config/limpet.toml");
    text = text
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9100", "127.0.0.1:0");
    let cut = text
        .find("[[upstream.io_nodes.server]]")
        .expect("shipped config has servers");
    text.truncate(cut);
    let global = "access_log = \"off\"";
    assert!(text.contains(global));
    text.replace(global, &format!("{global}\nresolver = [\"{dns}\"]")) + servers
}

/// The servers of upstream `name` in `/status`, by address.
async fn servers(limpet: &Limpet, name: &str) -> Vec<(String, String)> {
    limpet.status().await["upstreams"][name]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| {
            (
                s["addr"].as_str().unwrap_or("").to_string(),
                s["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits until upstream `name` has exactly these servers in these states (any order).
async fn wait_servers(limpet: &Limpet, name: &str, want: &[(String, &str)]) {
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(a, s)| (a.clone(), s.to_string()))
        .collect();
    want.sort();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut got = servers(limpet, name).await;
        got.sort();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "servers of {name}: want {want:?}, have {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records of fleet.test: one per address 127.0.0.N.
fn fleet(lasts: &[u8]) -> Vec<(&'static str, IpAddr)> {
    lasts.iter().map(|&n| ("fleet.test", ip(n))).collect()
}

/// Servers 127.0.0.N:port in these states.
fn states(port: u16, want: &[(u8, &'static str)]) -> Vec<(String, &'static str)> {
    want.iter()
        .map(|&(n, state)| (at(n, port), state))
        .collect()
}

fn at(last: u8, port: u16) -> String {
    SocketAddr::new(ip(last), port).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_that_changes_in_dns_keeps_every_live_session() {
    let port = port_free_on(&[ip(2), ip(3), ip(4), ip(5)]);
    let p = port.to_string();
    let node =
        |id: &str, last: u8| Node::start(id, &["--host", &ip(last).to_string(), "--port", &p]);
    let mut n1 = node("n1", 2);
    let mut n2 = node("n2", 3);
    let dns = Dnsmasq::start(&[("fleet.test", ip(2)), ("fleet.test", ip(3))], &[]);
    let config = shipped_with(
        dns.addr,
        &format!("[[upstream.io_nodes.server]]\naddr = \"fleet.test:{port}\"\nresolve = true\n"),
    );
    let limpet = Limpet::start(&config);
    // Ready means both named servers passed their first check: the first clients spread over both.
    wait_servers(&limpet, "io_nodes", &states(port, &[(2, "up"), (3, "up")])).await;
    let url = limpet.url();
    let live_polling = SioClient::spawn(
        &url,
        "--clients 20 --transports polling --emits 1 --hold 25000",
    );
    let live_ws = SioClient::spawn(
        &url,
        "--clients 20 --transports websocket --emits 1 --hold 25000",
    );
    eventually(WAIT, "40 live sessions", || async {
        (metric(&limpet.metrics().await, "limpet_sticky_sessions", &[]) >= 20.0
            && metric(
                &limpet.metrics().await,
                "limpet_websocket_tunnels_active",
                &[],
            ) >= 20.0)
            .then_some(())
    })
    .await;

    // Added: n3 takes new sessions once its first check passed.
    let _n3 = node("n3", 4);
    dns.set_hosts(&fleet(&[2, 3, 4]));
    wait_servers(
        &limpet,
        "io_nodes",
        &states(port, &[(2, "up"), (3, "up"), (4, "up")]),
    )
    .await;
    let fresh = SioClient::run_to_end(&url, "--clients 6 --emits 1").await;
    assert_connected_cleanly(&fresh, 6);
    assert!(
        fresh["nodes"]["n3"].as_u64().unwrap_or(0) >= 1,
        "new sessions reach the new node: {fresh}"
    );

    // Changed: n2's name now points at another node; n2 still answers its own sessions while it drains.
    let _n2b = node("n2b", 5);
    dns.set_hosts(&fleet(&[2, 4, 5]));
    wait_servers(
        &limpet,
        "io_nodes",
        &states(port, &[(2, "up"), (3, "draining"), (4, "up"), (5, "up")]),
    )
    .await;

    // Removed: n1 leaves DNS and drains too; new sessions go only to the named nodes.
    dns.set_hosts(&fleet(&[4, 5]));
    wait_servers(
        &limpet,
        "io_nodes",
        &states(
            port,
            &[(2, "draining"), (3, "draining"), (4, "up"), (5, "up")],
        ),
    )
    .await;
    let fresh = SioClient::run_to_end(&url, "--clients 6 --emits 1").await;
    assert_connected_cleanly(&fresh, 6);
    let nodes = fresh["nodes"].as_object().expect("nodes");
    assert!(
        nodes.keys().all(|n| n == "n3" || n == "n2b"),
        "no new session on a departing node: {fresh}"
    );

    // Every session that was live through the three changes kept its node: no "Session ID unknown", no drop.
    for (run, what) in [(live_polling, "polling"), (live_ws, "websocket")] {
        let r = run.await.expect("client.js");
        assert_connected_cleanly(&r, 20);
        assert_eq!(r["hold_emit_errors"], 0, "{what}: {r}");
        assert!(r["hold_emits_ok"].as_u64().unwrap_or(0) > 0, "{what}: {r}");
    }
    let m = limpet.metrics().await;
    assert_eq!(
        metric(&m, "limpet_sticky_lookups_total", &[("result", "dead")]),
        0.0
    );

    // A departing server goes once its address stops answering (its sessions are gone with it).
    n1.kill();
    n2.kill();
    wait_servers(&limpet, "io_nodes", &states(port, &[(4, "up"), (5, "up")])).await;
    let m = limpet.metrics().await;
    assert_eq!(
        metric(
            &m,
            "limpet_upstream_servers",
            &[("upstream", "io_nodes"), ("origin", "dns")]
        ),
        2.0
    );
    assert!(metric(&m, "limpet_dns_lookups_total", &[("result", "ok")]) >= 4.0);
    assert_eq!(
        metric(&m, "limpet_dns_lookups_total", &[("result", "error")]),
        0.0
    );
}

/// A config over one `resolve` (or `service`) entry with quick checks.
fn dns_config(dns: SocketAddr, balance: &str, entry: &str) -> String {
    format!(
        "[global]\nresolver = [\"{dns}\"]\n\n{}",
        simple_config(
            balance,
            &[],
            "",
            &format!(
                "[[upstream.app.server]]\n{entry}\n\n[upstream.app.health_check]\npath = \"/health\"\ninterval = \"300ms\"\ntimeout = \"1s\"\n"
            ),
        )
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_outage_or_an_empty_answer_changes_nothing() {
    let port = port_free_on(&[ip(2), ip(3)]);
    let a = backend::HttpBackend::start_on("a", SocketAddr::new(ip(2), port)).await;
    let b = backend::HttpBackend::start_on("b", SocketAddr::new(ip(3), port)).await;
    let dns = Dnsmasq::start(&[("fleet.test", ip(2)), ("fleet.test", ip(3))], &[]);
    let limpet = Limpet::start(&dns_config(
        dns.addr,
        "round_robin",
        &format!("addr = \"fleet.test:{port}\"\nresolve = true"),
    ));
    let both = [(at(2, port), "up"), (at(3, port), "up")];
    wait_servers(&limpet, "app", &both).await;
    let served = |expect: usize| {
        let addr = limpet.addr();
        async move {
            let mut names = std::collections::BTreeSet::new();
            for _ in 0..10 {
                names.insert(who(addr, "/").await);
            }
            assert_eq!(names.len(), expect, "{names:?}");
        }
    };

    // Outage: the DNS server stops answering.
    dns.pause();
    eventually(WAIT, "a failed lookup counted", || async {
        let m = limpet.metrics().await;
        (metric(&m, "limpet_dns_lookups_total", &[("result", "error")]) >= 1.0).then_some(())
    })
    .await;
    wait_servers(&limpet, "app", &both).await;
    served(2).await;
    dns.resume();
    limpet.wait_log("DNS lookup works again", WAIT).await;

    // No record at all: the last good set stays.
    dns.set_hosts(&[]);
    eventually(WAIT, "an empty lookup counted", || async {
        let m = limpet.metrics().await;
        (metric(&m, "limpet_dns_lookups_total", &[("result", "empty")]) >= 1.0).then_some(())
    })
    .await;
    wait_servers(&limpet, "app", &both).await;
    served(2).await;
    assert!(limpet
        .logs()
        .iter()
        .any(|l| l.contains("DNS lookup failed")));

    // A record back, one gone: the server that lost its record holds nothing, so it drains and goes at once.
    dns.set_hosts(&fleet(&[3]));
    wait_servers(&limpet, "app", &[(at(3, port), "up")]).await;
    served(1).await;
    assert!(b.hits() > 0 && a.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_server_that_refuses_at_start_delays_readiness_not_routing() {
    let port = port_free_on(&[ip(2), ip(3)]);
    let _a = backend::HttpBackend::start_on("a", SocketAddr::new(ip(2), port)).await;
    let _b = backend::HttpBackend::start_on("b", SocketAddr::new(ip(3), port)).await;
    // The DNS server refuses the name at first (REFUSED: no record, not a name of its own): the first lookup
    // fails, which is an error, not an empty answer, and limpet asks again.
    let dns = Dnsmasq::start(&[], &[]);
    let mut limpet = Limpet::start_unready(&dns_config(
        dns.addr,
        "round_robin",
        &format!("addr = \"fleet.late:{port}\"\nresolve = true"),
    ));
    limpet.wait_log("DNS lookup failed", WAIT).await;
    assert!(!limpet.logs().iter().any(|l| l.contains("ready:")));
    dns.set_hosts(&[("fleet.late", ip(2)), ("fleet.late", ip(3))]);
    limpet.wait_log("ready:", WAIT).await;
    limpet.wait_listening(1);
    // Ready means the servers of the first answer passed their first check: no wait, no 502.
    let mut have = servers(&limpet, "app").await;
    have.sort();
    let want: Vec<(String, String)> = states(port, &[(2, "up"), (3, "up")])
        .into_iter()
        .map(|(a, s)| (a, s.to_string()))
        .collect();
    assert_eq!(have, want);
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..4 {
        names.insert(who(limpet.addr(), "/").await);
    }
    assert_eq!(names.len(), 2, "{names:?}");
    let m = limpet.metrics().await;
    assert!(metric(&m, "limpet_dns_lookups_total", &[("result", "error")]) >= 1.0);
    assert_eq!(
        metric(&m, "limpet_dns_lookups_total", &[("result", "empty")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_entry_added_through_the_api_is_followed() {
    let port = port_free_on(&[ip(2), ip(3), ip(4)]);
    let a = backend::HttpBackend::start_on("a", SocketAddr::new(ip(2), port)).await;
    let _b = backend::HttpBackend::start_on("b", SocketAddr::new(ip(3), port)).await;
    let dns = Dnsmasq::start(&[("fleet.test", ip(3))], &[]);
    let limpet = Limpet::start(&dns_config(
        dns.addr,
        "round_robin",
        &format!("addr = \"{}\"", a.addr),
    ));
    wait_servers(&limpet, "app", &states(port, &[(2, "up")])).await;
    let body = format!(r#"{{"addr": "fleet.test:{port}", "resolve": true}}"#);
    let r = client::request(
        limpet.admin.expect("admin"),
        "POST",
        "/upstreams/app/servers",
        &[("content-type", "application/json")],
        body,
    )
    .await
    .expect("POST");
    assert_eq!(r.status, 201, "{}", r.text());
    wait_servers(&limpet, "app", &states(port, &[(2, "up"), (3, "up")])).await;
    // The entry is followed: its records change, its servers do.
    dns.set_hosts(&[("fleet.test", ip(3)), ("fleet.test", ip(4))]);
    let _c = backend::HttpBackend::start_on("c", SocketAddr::new(ip(4), port)).await;
    wait_servers(
        &limpet,
        "app",
        &states(port, &[(2, "up"), (3, "up"), (4, "up")]),
    )
    .await;
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..6 {
        names.insert(who(limpet.addr(), "/").await);
    }
    assert_eq!(names.len(), 3, "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_weights_and_backups() {
    let backends = backend::backends(&["a", "b", "c"]).await;
    let dns = Dnsmasq::start(
        &[
            ("a.fleet.test", ip(1)),
            ("b.fleet.test", ip(1)),
            ("c.fleet.test", ip(1)),
        ],
        &[
            Srv {
                name: "_web._tcp.fleet.test",
                target: "a.fleet.test",
                port: backends[0].addr.port(),
                priority: 10,
                weight: 1,
            },
            Srv {
                name: "_web._tcp.fleet.test",
                target: "b.fleet.test",
                port: backends[1].addr.port(),
                priority: 10,
                weight: 3,
            },
            Srv {
                name: "_web._tcp.fleet.test",
                target: "c.fleet.test",
                port: backends[2].addr.port(),
                priority: 20,
                weight: 5,
            },
        ],
    );
    let limpet = Limpet::start(&dns_config(
        dns.addr,
        "round_robin",
        "service = \"_web._tcp.fleet.test\"",
    ));
    let want: Vec<(String, &str)> = backends
        .iter()
        .map(|b| (b.addr.to_string(), "up"))
        .collect();
    wait_servers(&limpet, "app", &want).await;
    let status = limpet.status().await;
    let entry = |addr: SocketAddr| server_entry(&status, addr);
    assert_eq!(entry(backends[1].addr)["weight"], 3);
    assert_eq!(
        entry(backends[2].addr)["backup"],
        true,
        "a lower SRV priority is a backup"
    );
    let mut count = std::collections::BTreeMap::new();
    for _ in 0..40 {
        *count.entry(who(limpet.addr(), "/").await).or_insert(0) += 1;
    }
    assert_eq!(count.get("a"), Some(&10), "{count:?}");
    assert_eq!(count.get("b"), Some(&30), "{count:?}");
    assert_eq!(count.get("c"), None, "the backup waits: {count:?}");
}

#[test]
fn dns_settings_are_checked_with_their_keys() {
    let base = |global: &str, entry: &str| {
        format!(
            "[global]\n{global}\n\n{}",
            simple_config(
                "round_robin",
                &[],
                "",
                &format!("[[upstream.app.server]]\n{entry}\n")
            )
        )
    };
    for (global, entry, needle) in [
        (
            "",
            "addr = \"bad name!:3000\"\nresolve = true",
            "upstream.app.server[0].addr: invalid address",
        ),
        (
            "",
            "addr = \"fleet.test\"\nresolve = true",
            "upstream.app.server[0].addr: invalid address",
        ),
        (
            "",
            "addr = \"fleet.test:1\"\nservice = \"_a._tcp.fleet.test\"",
            "upstream.app.server[0].service: give either addr or service",
        ),
        (
            "",
            "service = \"fleet.test\"",
            "upstream.app.server[0].service: invalid SRV name",
        ),
        ("", "weight = 2", "upstream.app.server[0].addr: missing"),
        (
            "resolver = [\"nowhere\"]",
            "addr = \"127.0.0.1:1\"",
            "global.resolver[0]: invalid address",
        ),
        (
            "resolve_min = \"10s\"\nresolve_max = \"5s\"",
            "addr = \"127.0.0.1:1\"",
            "global.resolve_max: 5s is shorter than resolve_min",
        ),
        (
            "resolve_min = \"0s\"",
            "addr = \"127.0.0.1:1\"",
            "global.resolve_min: must be greater than zero",
        ),
        (
            "",
            "addr = \"127.0.0.1:1\"\nslow_start = \"soon\"",
            "upstream.app.server[0].slow_start: invalid duration",
        ),
    ] {
        let (code, out) = check_config(&base(global, entry));
        assert_eq!(code, 1, "{global} {entry}: {out}");
        assert!(out.contains(needle), "{needle:?} not in {out}");
    }
    // A name that follows DNS is not looked up by --check: the config can be checked away from its network.
    let (code, out) = check_config(&base(
        "resolver = [\"127.0.0.1:53\"]",
        "addr = \"chat.limpet.svc.cluster.local:3000\"\nresolve = true\nslow_start = \"30s\"",
    ));
    assert_eq!(code, 0, "{out}");
    let sid = simple_config(
        "sid",
        &[],
        "",
        "[upstream.app.sticky]\nsid_prefix = true\n\n[[upstream.app.server]]\naddr = \"fleet.test:1\"\nresolve = true\nroute = \"a\"\n",
    );
    let (code, out) = check_config(&sid);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("sticky.sid_prefix needs one route per server"),
        "{out}"
    );
}
