//! The runtime server API on the admin listener: servers listed, added, changed and removed while limpet serves,
//! bad input refused with nothing changed, and an upstream's `state_file` kept across restarts and reloads.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::backend::{backends, HttpBackend};
use support::client::{request, Resp};
use support::metrics::metric;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "runtime-api-test-token-0123456789abcdef";
const CHECKS: &str =
    "[upstream.app.health_check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"1s\"\n";

/// A round-robin config over `servers` with quick checks, the admin token, and extra upstream keys.
fn config(dir: &Path, servers: &[SocketAddr], upstream_keys: &str) -> String {
    let token = dir.join("admin.token");
    std::fs::write(&token, TOKEN).expect("write token");
    simple_config("round_robin", servers, upstream_keys, CHECKS).replacen(
        "[admin]\n",
        &format!("[admin]\ntoken_file = \"{}\"\n", token.display()),
        1,
    )
}

/// An admin API call with the token and a JSON body (`Value::Null`: no body).
async fn api(limpet: &Limpet, method: &str, path: &str, body: &Value) -> Resp {
    call(limpet, method, path, body, Some(TOKEN)).await
}

async fn call(
    limpet: &Limpet,
    method: &str,
    path: &str,
    body: &Value,
    token: Option<&str>,
) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    request(limpet.admin.expect("admin"), method, path, &headers, body)
        .await
        .expect("admin request")
}

fn json_of(r: &Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// `GET /upstreams/app/servers`.
async fn listed(limpet: &Limpet) -> Value {
    let r = call(limpet, "GET", "/upstreams/app/servers", &Value::Null, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    json_of(&r)
}

/// One field of each listed server, by address.
async fn field(limpet: &Limpet, name: &str) -> BTreeMap<String, Value> {
    listed(limpet).await["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| {
            (
                s["addr"].as_str().unwrap_or("").to_string(),
                s[name].clone(),
            )
        })
        .collect()
}

/// Waits until the servers listed are exactly `addrs`, each in state `state`.
async fn wait_listed(limpet: &Limpet, addrs: &[SocketAddr], state: &str) {
    let want: BTreeMap<String, Value> = addrs
        .iter()
        .map(|a| (a.to_string(), json!(state)))
        .collect();
    eventually(WAIT, &format!("servers {want:?}"), || async {
        (field(limpet, "state").await == want).then_some(())
    })
    .await;
}

/// Which backend answered each of `n` requests.
async fn spread(limpet: &Limpet, n: usize) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for _ in 0..n {
        *count.entry(who(limpet.addr(), "/").await).or_insert(0) += 1;
    }
    count
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_added_changed_and_removed_while_limpet_serves() {
    let b = backends(&["a", "b", "c"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let limpet = Limpet::start(&config(dir.path(), &[b[0].addr, b[1].addr], ""));
    wait_listed(&limpet, &[b[0].addr, b[1].addr], "up").await;
    let doc = listed(&limpet).await;
    assert_eq!(doc["persisted"], "until the next reload (no state_file)");
    assert_eq!(doc["servers"][0]["origin"], "config");

    // Adding needs the token.
    let add = json!({"addr": b[2].addr.to_string(), "weight": 2});
    let r = call(&limpet, "POST", "/upstreams/app/servers", &add, None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = api(&limpet, "POST", "/upstreams/app/servers", &add).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        json_of(&r)["persisted"],
        "until the next reload (no state_file)"
    );
    wait_listed(&limpet, &[b[0].addr, b[1].addr, b[2].addr], "up").await;
    assert_eq!(
        field(&limpet, "origin").await[&b[2].addr.to_string()],
        "api"
    );
    assert_eq!(
        spread(&limpet, 40).await,
        counts(&[("a", 10), ("b", 10), ("c", 20)])
    );
    let m = limpet.metrics().await;
    for (origin, n) in [("config", 2.0), ("api", 1.0), ("dns", 0.0)] {
        let got = metric(
            &m,
            "limpet_upstream_servers",
            &[("upstream", "app"), ("origin", origin)],
        );
        assert_eq!(got, n, "{origin}");
    }

    // Changed: weight, then drain.
    let c = format!("/upstreams/app/servers/{}", b[2].addr);
    let a = format!("/upstreams/app/servers/{}", b[0].addr);
    let r = api(&limpet, "PATCH", &c, &json!({"weight": 1})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        spread(&limpet, 30).await,
        counts(&[("a", 10), ("b", 10), ("c", 10)])
    );
    let r = api(&limpet, "PATCH", &a, &json!({"drain": true})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let drained = spread(&limpet, 10).await;
    assert!(
        !drained.contains_key("a") && drained.values().sum::<usize>() == 10,
        "{drained:?}"
    );

    // Bad input: 400 (or 404/409) with the reason, and nothing changes.
    let before = listed(&limpet).await["servers"].clone();
    for (method, path, body, status, reason) in [
        (
            "PATCH",
            c.as_str(),
            json!({"weight": 0}),
            400,
            "weight: must be 1..=1000",
        ),
        (
            "PATCH",
            c.as_str(),
            json!({"weight": "heavy"}),
            400,
            "weight: must be 1..=1000",
        ),
        (
            "PATCH",
            c.as_str(),
            json!({"colour": "red"}),
            400,
            "colour: unknown key",
        ),
        ("PATCH", c.as_str(), json!({}), 400, "nothing to change"),
        (
            "PATCH",
            c.as_str(),
            json!([1, 2]),
            400,
            "must be a JSON object",
        ),
        (
            "PATCH",
            "/upstreams/app/servers/127.0.0.1:1",
            json!({"drain": true}),
            404,
            "no server 127.0.0.1:1",
        ),
        (
            "POST",
            "/upstreams/app/servers",
            json!({"addr": "nowhere"}),
            400,
            "server.addr: invalid address",
        ),
        (
            "POST",
            "/upstreams/app/servers",
            json!({"addr": b[2].addr.to_string()}),
            409,
            "already a server",
        ),
        (
            "POST",
            "/upstreams/app/servers",
            json!({"adr": "127.0.0.1:1"}),
            400,
            "unknown field",
        ),
        (
            "POST",
            "/upstreams/app/servers",
            json!({"addr": "127.0.0.1:1", "weight": 5000}),
            400,
            "server.weight: must be 1..=1000",
        ),
        (
            "POST",
            "/upstreams/nope/servers",
            json!({"addr": "127.0.0.1:1"}),
            404,
            "no upstream",
        ),
        (
            "DELETE",
            "/upstreams/app/servers/127.0.0.1:1",
            Value::Null,
            404,
            "no server",
        ),
        (
            "PUT",
            "/upstreams/app/servers",
            Value::Null,
            405,
            "use GET or POST",
        ),
    ] {
        let r = api(&limpet, method, path, &body).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{method} {path} {body}: {}",
            r.text()
        );
        let error = json_of(&r)["error"].as_str().unwrap_or("").to_string();
        assert!(
            error.contains(reason),
            "{method} {path} {body}: {error:?} lacks {reason:?}"
        );
    }
    let r = request(
        limpet.admin.unwrap(),
        "PATCH",
        &c,
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "weight=2",
    )
    .await
    .expect("request");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("not valid JSON"), "{}", r.text());
    assert_eq!(
        listed(&limpet).await["servers"],
        before,
        "bad input changed nothing"
    );

    // Removed while a request is in flight on it: it drains, the request ends well, then the server goes.
    let r = api(&limpet, "PATCH", &a, &json!({"drain": false})).await;
    assert_eq!(r.status, 200);
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let addr = limpet.addr();
            tokio::spawn(async move { support::client::get(addr, "/slow/4000").await })
        })
        .collect();
    eventually(WAIT, "b busy", || async {
        (b[1].hits() > 0 && field(&limpet, "active").await[&b[1].addr.to_string()] == 1)
            .then_some(())
    })
    .await;
    let r = api(
        &limpet,
        "DELETE",
        &format!("/upstreams/app/servers/{}", b[1].addr),
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let states = field(&limpet, "state").await;
    assert_eq!(states[&b[1].addr.to_string()], "draining", "{states:?}");
    assert_eq!(
        field(&limpet, "departing").await[&b[1].addr.to_string()],
        true
    );
    for s in slow {
        assert_eq!(s.await.expect("slow request").status, 200);
    }
    wait_listed(&limpet, &[b[0].addr, b[2].addr], "up").await;
    let hits_b = b[1].hits();
    spread(&limpet, 10).await;
    assert_eq!(b[1].hits(), hits_b, "a removed server takes nothing");

    // The last server cannot be removed.
    let r = api(&limpet, "DELETE", &c, &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_listed(&limpet, &[b[0].addr], "up").await;
    let r = api(&limpet, "DELETE", &a, &Value::Null).await;
    assert_eq!(r.status, 409, "{}", r.text());

    // Without a state_file, a reload brings back the config's list.
    limpet.signal("HUP");
    wait_listed(&limpet, &[b[0].addr, b[1].addr], "up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_keeps_the_servers_across_restarts_and_reloads() {
    let b = backends(&["a", "b"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("app.servers");
    let keys = format!("state_file = \"{}\"", state.display());
    let text = config(dir.path(), &[b[0].addr], &keys);
    let limpet = Limpet::start(&text);
    wait_listed(&limpet, &[b[0].addr], "up").await;
    let seeded = std::fs::read_to_string(&state).expect("state file seeded from the config");
    assert!(seeded.contains(&b[0].addr.to_string()), "{seeded}");
    assert!(listed(&limpet).await["persisted"]
        .as_str()
        .unwrap()
        .contains("app.servers"));

    let r = api(
        &limpet,
        "POST",
        "/upstreams/app/servers",
        &json!({"addr": b[1].addr.to_string(), "route": "bee"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = api(
        &limpet,
        "PATCH",
        &format!("/upstreams/app/servers/{}", b[0].addr),
        &json!({"weight": 3}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let kept = std::fs::read_to_string(&state).expect("state file");
    assert!(
        kept.contains(&b[1].addr.to_string())
            && kept.contains("weight = 3")
            && kept.contains("route = \"bee\""),
        "{kept}"
    );
    wait_listed(&limpet, &[b[0].addr, b[1].addr], "up").await;
    assert_eq!(spread(&limpet, 8).await, counts(&[("a", 6), ("b", 2)]));

    // A restart reads the file: the API's server is there, still counted as the API's.
    drop(limpet);
    let limpet = Limpet::start(&text);
    wait_listed(&limpet, &[b[0].addr, b[1].addr], "up").await;
    let origin = field(&limpet, "origin").await;
    assert_eq!(origin[&b[0].addr.to_string()], "config");
    assert_eq!(origin[&b[1].addr.to_string()], "api");
    assert_eq!(field(&limpet, "weight").await[&b[0].addr.to_string()], 3);

    // So does a reload.
    limpet.signal("HUP");
    limpet.wait_log("config reloaded", WAIT).await;
    wait_listed(&limpet, &[b[0].addr, b[1].addr], "up").await;

    // A broken file is named by --check, and a reload onto it keeps the running list.
    std::fs::write(&state, "[[server]]\naddr = \"127.0.0.1:1\"\nweight = 0\n")
        .expect("break the file");
    let (code, out) = check_file(&limpet.config_path);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("upstream.app.state_file") && out.contains("weight: must be 1..=1000"),
        "{out}"
    );
    limpet.signal("HUP");
    limpet.wait_log("reload failed", WAIT).await;
    wait_listed(&limpet, &[b[0].addr, b[1].addr], "up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_that_cannot_be_written_refuses_the_change() {
    let b: Vec<HttpBackend> = backends(&["a", "b"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).expect("mkdir");
    let keys = format!(
        "state_file = \"{}\"",
        state_dir.join("app.servers").display()
    );
    let limpet = Limpet::start(&config(dir.path(), &[b[0].addr], &keys));
    wait_listed(&limpet, &[b[0].addr], "up").await;
    // The directory goes, and a file takes its place: the state file can no longer be written.
    std::fs::remove_dir_all(&state_dir).expect("rm");
    std::fs::write(&state_dir, "a file where a directory should be").expect("write");
    let r = api(
        &limpet,
        "POST",
        "/upstreams/app/servers",
        &json!({"addr": b[1].addr.to_string()}),
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        json_of(&r)["error"]
            .as_str()
            .unwrap()
            .contains("cannot write"),
        "{}",
        r.text()
    );
    let r = api(
        &limpet,
        "PATCH",
        &format!("/upstreams/app/servers/{}", b[0].addr),
        &json!({"drain": true}),
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    wait_listed(&limpet, &[b[0].addr], "up").await;
    assert_eq!(spread(&limpet, 3).await, counts(&[("a", 3)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_dies_while_the_list_keeps_changing_is_marked_down() {
    let b = backends(&["a", "b"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Three failed checks in a row mark a server down.
    let limpet = Limpet::start(
        &config(dir.path(), &[b[0].addr, b[1].addr], "")
            .replace("interval = \"200ms\"", "interval = \"200ms\"\nfails = 3"),
    );
    wait_listed(&limpet, &[b[0].addr, b[1].addr], "up").await;
    b[1].stop();
    // Every change of the list restarts the checks: the count of failures goes on across the restarts.
    let path = format!("/upstreams/app/servers/{}", b[0].addr);
    let dead = b[1].addr.to_string();
    let mut changes = 0u32;
    eventually(WAIT, "b down while the list keeps changing", || {
        changes += 1;
        let weight = 2 + changes % 2;
        let limpet = &limpet;
        let (path, dead) = (&path, &dead);
        async move {
            let r = api(limpet, "PATCH", path, &json!({ "weight": weight })).await;
            assert_eq!(r.status, 200, "{}", r.text());
            (field(limpet, "state").await[dead] == "down").then_some(())
        }
    })
    .await;
    assert!(changes >= 3, "the list changed {changes} times");
    assert_eq!(who(limpet.addr(), "/").await, "a");
}
