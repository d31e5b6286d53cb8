//! The access log: off by default; one line per request (written once its body was sent) and per tunnel
//! (written when it ends), to stderr or a file, without ever holding up a request.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

/// One access log line, parsed.
#[derive(Debug)]
struct Line {
    client: String,
    method: String,
    path: String,
    status: u16,
    fields: HashMap<String, String>,
}

impl Line {
    fn parse(s: &str) -> Option<Line> {
        let (client, rest) = s.split_once(" \"")?;
        let (request, rest) = rest.split_once("\" ")?;
        let (method, path) = request.split_once(' ')?;
        let mut words = rest.split(' ');
        let status = words.next()?.parse().ok()?;
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Line {
            client: client.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            status,
            fields,
        })
    }

    fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
    }
}

/// Two locations: `/socket.io/` and `/ws` to their own upstreams, the rest to `web`.
fn config(
    access_log: &str,
    web: SocketAddr,
    io: Option<SocketAddr>,
    ws: Option<SocketAddr>,
) -> String {
    let mut c = format!(
        "[global]\naccess_log = \"{access_log}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n\n[[server.location]]\npath = \"/\"\nproxy_pass = \"web\"\n"
    );
    if io.is_some() {
        c.push_str("\n[[server.location]]\npath = \"/socket.io/\"\nproxy_pass = \"io\"\n");
    }
    if ws.is_some() {
        c.push_str("\n[[server.location]]\npath = \"/ws\"\nproxy_pass = \"ws\"\n");
    }
    c.push_str(&format!(
        "\n[upstream.web]\n\n[[upstream.web.server]]\naddr = \"{web}\"\n"
    ));
    if let Some(io) = io {
        c.push_str(&format!(
            "\n[upstream.io]\nbalance = \"sid\"\n\n[[upstream.io.server]]\naddr = \"{io}\"\n"
        ));
    }
    if let Some(ws) = ws {
        c.push_str(&format!(
            "\n[upstream.ws]\n\n[[upstream.ws.server]]\naddr = \"{ws}\"\n"
        ));
    }
    c
}

fn lines_in(path: &Path) -> Vec<Line> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| Line::parse(l).unwrap_or_else(|| panic!("bad access log line {l:?}")))
        .collect()
}

/// Waits until the file holds a line for `method path`.
async fn wait_line(file: &Path, method: &str, path: &str) -> Line {
    eventually(
        WAIT,
        &format!("access log line for {method} {path}"),
        || async {
            lines_in(file)
                .into_iter()
                .find(|l| l.method == method && l.path == path)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_gets_one_line_per_request_with_every_field() {
    let web = HttpBackend::start("web").await;
    let fleet = NodeFleet::start(1, &[]);
    let node = fleet.nodes[0].addr;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let limpet = Limpet::start(&config(
        &file.display().to_string(),
        web.addr,
        Some(node),
        None,
    ));

    assert_eq!(get(limpet.addr(), "/big/1234?q=1").await.body.len(), 1234);
    let l = wait_line(&file, "GET", "/big/1234").await;
    assert_eq!(l.client, "127.0.0.1");
    assert_eq!(l.status, 200);
    assert_eq!(l.get("bytes"), "1234");
    assert_eq!(l.get("upstream"), "web");
    assert_eq!(l.get("server"), web.addr.to_string());
    assert_eq!(l.get("sticky"), "-");
    assert!(l.get("duration_ms").parse::<f64>().unwrap() >= 0.0);

    // Sticky sessions: a handshake, a request of the session (hit), a sid the table never saw (miss).
    let open = get(limpet.addr(), "/socket.io/?EIO=4&transport=polling").await;
    let v: Value = serde_json::from_str(open.text().trim_start_matches('0')).unwrap();
    let sid = v["sid"].as_str().unwrap();
    let ct = [("content-type", "text/plain;charset=UTF-8")];
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(
        request(limpet.addr(), "POST", &path, &ct, "40")
            .await
            .unwrap()
            .status,
        200
    );
    let unknown = "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA";
    let miss = request(limpet.addr(), "POST", unknown, &ct, "40")
        .await
        .unwrap();
    assert_eq!(miss.status, 400);
    let lines = eventually(WAIT, "four lines", || async {
        let lines = lines_in(&file);
        (lines.len() >= 4).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 4, "{lines:?}");
    let (handshake, hit, missed) = (&lines[1], &lines[2], &lines[3]);
    assert_eq!((handshake.method.as_str(), handshake.status), ("GET", 200));
    assert_eq!(handshake.get("sticky"), "new");
    assert_eq!(handshake.get("bytes"), open.body.len().to_string());
    assert_eq!(handshake.get("server"), node.to_string());
    assert_eq!(
        (hit.method.as_str(), hit.path.as_str()),
        ("POST", "/socket.io/")
    );
    assert_eq!((hit.status, hit.get("sticky")), (200, "hit"));
    assert_eq!(hit.get("bytes"), "2");
    assert_eq!((missed.status, missed.get("sticky")), (400, "miss"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_gets_its_line_when_it_ends() {
    let web = HttpBackend::start("web").await;
    let ws_backend = WsBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let limpet = Limpet::start(&config(
        &file.display().to_string(),
        web.addr,
        None,
        Some(ws_backend.addr),
    ));
    let mut ws = ws_connect(limpet.addr(), "/ws/chat").await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::Text("hello".into()));

    // A later request's line is written while the tunnel is open: the tunnel has none yet.
    get(limpet.addr(), "/sync").await;
    wait_line(&file, "GET", "/sync").await;
    assert!(lines_in(&file).iter().all(|l| l.path != "/ws/chat"));

    ws.close(None).await.unwrap();
    drop(ws);
    let l = wait_line(&file, "GET", "/ws/chat").await;
    assert_eq!(l.status, 101);
    assert_eq!(l.get("upstream"), "ws");
    assert_eq!(l.get("server"), ws_backend.addr.to_string());
    // "hello" each way: 7 bytes framed from the server, 11 masked from the client, and the close frames.
    let (out, into) = (
        l.get("bytes").parse::<u64>().unwrap(),
        l.get("bytes_in").parse::<u64>().unwrap(),
    );
    assert!(out >= 7 + 2, "bytes={out}");
    assert!(into >= 11 + 6, "bytes_in={into}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_and_on_stderr_when_configured() {
    let web = HttpBackend::start("web").await;
    let off = config("off", web.addr, None, None).replace("access_log = \"off\"\n", "");
    assert!(!off.contains("access_log"));
    let limpet = Limpet::start(&off);
    assert_eq!(get(limpet.addr(), "/before").await.status, 200);

    limpet.write_config(&config("stderr", web.addr, None, None));
    let r = request(limpet.admin.unwrap(), "POST", "/reload", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(limpet.addr(), "/after").await.status, 200);
    let line = limpet.wait_log("\"GET /after\"", WAIT).await;
    let l = Line::parse(&line).unwrap();
    assert_eq!(
        (l.status, l.get("bytes"), l.get("upstream")),
        (200, "3", "web")
    );
    assert!(
        limpet.logs().iter().all(|l| !l.contains("/before")),
        "a request was logged while the access log was off"
    );
}

/// A process that opens a FIFO for reading and never reads it.
struct StuckReader(Child);

impl Drop for StuckReader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_log_destination_never_holds_up_requests() {
    let web = HttpBackend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let _reader = StuckReader(
        Command::new("sh")
            .args(["-c", "exec 3<\"$0\"; exec sleep 600"])
            .arg(&fifo)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let limpet = Limpet::start(&config(&fifo.display().to_string(), web.addr, None, None));
    // 200 lines of ~4 KiB: far more than the pipe holds, so the writer is stuck after a few.
    let long = "x".repeat(4000);
    for i in 0..200 {
        let r = get(limpet.addr(), &format!("/{long}/{i}")).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(web.hits(), 200);
}
