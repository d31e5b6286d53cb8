//! Slow start: a server that comes up takes new requests and sessions at a weight rising from near zero to its full
//! weight over `slow_start`, measured with real backends and, for the reconnect storm after a node restart, a real
//! Socket.IO fleet behind the shipped config.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::backend::backends;
use support::client::request;
use support::node::{Node, NodeFleet, SioClient};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const CHECKS: &str =
    "[upstream.app.health_check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"1s\"\n";

async fn admin(limpet: &Limpet, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let r = request(limpet.admin.expect("admin"), method, path, &[], body)
        .await
        .expect("admin request");
    (
        r.status.as_u16(),
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// The `ramp` of server `addr` (null once it takes its full weight).
async fn ramp(limpet: &Limpet, addr: &str) -> Option<f64> {
    let (_, doc) = admin(limpet, "GET", "/upstreams/app/servers", &Value::Null).await;
    doc["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .find(|s| s["addr"] == addr)
        .expect("server listed")["ramp"]
        .as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_server_takes_a_rising_share_of_new_requests() {
    let b = backends(&["a", "b", "c"]).await;
    let servers: Vec<_> = b.iter().map(|x| (x.addr, "slow_start = \"8s\"")).collect();
    let limpet = Limpet::start(&(servers_config("round_robin", "", &servers) + CHECKS));
    let c = b[2].addr.to_string();
    eventually(WAIT, "all up", || async {
        (limpet
            .server_fields("app", "state")
            .await
            .iter()
            .all(|s| s == "up"))
        .then_some(())
    })
    .await;
    assert_eq!(
        ramp(&limpet, &c).await,
        None,
        "servers of the first config do not ramp"
    );

    // c goes down and comes back: its ramp starts.
    let path = format!("/upstreams/app/servers/{c}");
    assert_eq!(
        admin(&limpet, "PATCH", &path, &json!({"down": true}))
            .await
            .0,
        200
    );
    assert_eq!(
        admin(&limpet, "PATCH", &path, &json!({"down": false}))
            .await
            .0,
        200
    );
    let started = Instant::now();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    while let Some(share_of_weight) = ramp(&limpet, &c).await {
        assert!(started.elapsed() < WAIT, "the ramp never ends");
        let mut to_c = 0;
        for _ in 0..30 {
            if who(limpet.addr(), "/").await == "c" {
                to_c += 1;
            }
        }
        samples.push((share_of_weight, f64::from(to_c) / 30.0));
    }
    let mut full = BTreeMap::new();
    for _ in 0..60 {
        *full.entry(who(limpet.addr(), "/").await).or_insert(0) += 1;
    }
    let bins: Vec<String> = (0..5)
        .map(|i| {
            let (lo, hi) = (f64::from(i) / 5.0, f64::from(i + 1) / 5.0);
            let part: Vec<f64> = samples
                .iter()
                .filter(|s| s.0 >= lo && s.0 < hi)
                .map(|s| s.1)
                .collect();
            let share = part.iter().sum::<f64>() / part.len().max(1) as f64;
            format!(
                "ramp {lo:.1}-{hi:.1}: {:.0}% of {} requests",
                share * 100.0,
                part.len() * 30
            )
        })
        .collect();
    eprintln!("slow_start = \"8s\", round robin over 3 equal servers, share of new requests to the returning one: {}; after the ramp: {full:?}", bins.join(", "));
    assert!(samples.len() >= 4, "{samples:?}");
    let mean =
        |part: &[(f64, f64)]| part.iter().map(|s| s.1).sum::<f64>() / part.len().max(1) as f64;
    let early: Vec<_> = samples.iter().copied().filter(|s| s.0 < 0.4).collect();
    let late: Vec<_> = samples.iter().copied().filter(|s| s.0 >= 0.6).collect();
    assert!(!early.is_empty() && !late.is_empty(), "{samples:?}");
    // A full weight would take a third; early in the ramp c takes well under it, late nearly all of it.
    assert!(
        mean(&early) < 0.2,
        "early share {:.2}: {samples:?}",
        mean(&early)
    );
    assert!(mean(&early) < mean(&late), "{samples:?}");
    assert_eq!(
        full.get("c"),
        Some(&20),
        "full weight after the ramp: {full:?}"
    );
}

/// Runs the reconnect storm after n3 restarts, with `slow_start` on every server; returns how many of 30 new
/// sessions n3 took, and the nodes of all of them.
async fn storm_after_restart(slow_start: &str) -> (u64, Value) {
    let mut fleet = NodeFleet::start(3, &[]);
    let addrs = fleet.addrs();
    let server = "[[upstream.io_nodes.server]]\n";
    let config = shipped_config(
        &addrs,
        &[(server, &format!("{server}slow_start = \"{slow_start}\"\n"))],
    );
    let limpet = Limpet::start(&config);
    let url = limpet.url();
    // A fleet in use: 30 sessions held over WebSocket (each one a tunnel: least_conn's load).
    let held = SioClient::spawn(
        &url,
        "--clients 30 --transports websocket --emits 1 --hold 40000",
    );
    eventually(WAIT, "30 tunnels", || async {
        (support::metrics::gauge(&limpet, "limpet_websocket_tunnels_active").await >= 30)
            .then_some(())
    })
    .await;

    // n3 restarts (a deploy): the checks see it go and come back.
    let port = addrs[2].port().to_string();
    fleet.nodes[2].kill();
    let state_of_n3 = |want: &'static str| {
        let limpet = &limpet;
        async move {
            eventually(WAIT, &format!("n3 {want}"), || async {
                (limpet.server_fields("io_nodes", "state").await[2] == want).then_some(())
            })
            .await
        }
    };
    state_of_n3("down").await;
    fleet.nodes[2] = Node::start("n3", &["--port", &port]);
    state_of_n3("up").await;

    // The storm: 30 new sessions at once, as clients of the lost node reconnect.
    let storm = SioClient::run_to_end(&url, "--clients 30 --emits 1").await;
    assert_eq!(storm["connected"], 30, "{storm}");
    let to_n3 = storm["nodes"]["n3"].as_u64().unwrap_or(0);
    drop(held);
    (to_n3, storm["nodes"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_spreads_the_reconnect_storm_after_a_node_restarts() {
    let (without, nodes_without) = storm_after_restart("0s").await;
    let (with, nodes_with) = storm_after_restart("120s").await;
    eprintln!("30 new sessions right after n3 came back (least_conn): without slow_start {nodes_without}, with slow_start = \"120s\" {nodes_with}");
    assert!(
        without >= 10,
        "least_conn alone sends the storm to the empty node: {nodes_without}"
    );
    assert!(with <= 5, "slow start keeps most of it away: {nodes_with}");
}
