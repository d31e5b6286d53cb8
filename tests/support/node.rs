//! Node Socket.IO fleets and clients from `tests/socketio` (npm packages installed by `npm ci` there).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on one client.js / session.js run, in ms.
pub const RUN_TIMEOUT: &str = "60000";

/// The fixture directory.
pub fn fixture_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules").is_dir(),
        "tests/socketio/node_modules is missing: run `npm ci` in tests/socketio (the test command in README does)"
    );
    dir
}

/// One Socket.IO node process.
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Node {
    /// Starts `node node.js --id ID` with extra args and waits (10 s) for its port.
    pub fn start(id: &str, args: &[&str]) -> Node {
        let mut child = Command::new("node")
            .current_dir(fixture_dir())
            .arg("node.js")
            .args(["--id", id])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("node did not report its port");
        let port: u16 = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected node output {line:?}"));
        Node {
            id: id.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: Some(child),
        }
    }

    /// Kills the node (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Several nodes n1..nN.
pub struct NodeFleet {
    pub nodes: Vec<Node>,
}

impl NodeFleet {
    /// Starts `n` nodes with the same extra args (e.g. `["--version", "2"]`).
    pub fn start(n: usize, args: &[&str]) -> NodeFleet {
        NodeFleet {
            nodes: (1..=n)
                .map(|i| Node::start(&format!("n{i}"), args))
                .collect(),
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// The id of the node at `addr`.
    pub fn id_of(&self, addr: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.addr.to_string() == addr)
            .map(|n| n.id.as_str())
    }
}

/// Runs a fixture script (`client.js` or `session.js`) and parses its one JSON line.
pub struct SioClient;

impl SioClient {
    /// `node client.js --url URL ARGS...` → its JSON summary.
    pub fn run(url: &str, args: &[&str]) -> serde_json::Value {
        SioClient::script("client.js", url, args)
    }

    /// `node session.js --url URL ARGS...` → its JSON summary.
    pub fn session(url: &str, args: &[&str]) -> serde_json::Value {
        SioClient::script("session.js", url, args)
    }

    /// Starts client.js against `url` on a blocking thread, with `args` (split at spaces) and `RUN_TIMEOUT`.
    pub fn spawn(url: &str, args: &str) -> tokio::task::JoinHandle<serde_json::Value> {
        let url = url.to_string();
        let args = format!("{args} --timeout {RUN_TIMEOUT}");
        tokio::task::spawn_blocking(move || {
            SioClient::run(&url, &args.split_whitespace().collect::<Vec<_>>())
        })
    }

    /// Runs client.js against `url` to its end (see `spawn`).
    pub async fn run_to_end(url: &str, args: &str) -> serde_json::Value {
        SioClient::spawn(url, args).await.expect("client.js")
    }

    fn script(script: &str, url: &str, args: &[&str]) -> serde_json::Value {
        let started = Instant::now();
        let out = Command::new("node")
            .current_dir(fixture_dir())
            .arg(script)
            .args(["--url", url])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run node script");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| {
                panic!(
                    "{script} printed no JSON after {:?}: stdout={stdout:?} stderr={:?}",
                    started.elapsed(),
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON from {script}: {e}: {line}"))
    }
}

/// Every client connected, every emit acknowledged, no error, no client answered by two nodes.
pub fn assert_clean(r: &serde_json::Value, clients: u64, emits: u64) {
    assert_connected_cleanly(r, clients);
    assert_eq!(r["emits_ok"], clients * emits, "{r}");
}

/// Every client connected and kept its session and node to the end, with no error (emits not counted).
pub fn assert_connected_cleanly(r: &serde_json::Value, clients: u64) {
    assert_eq!(r["connected"], clients, "{r}");
    for zero in [
        "connect_errors",
        "emit_errors",
        "disconnects",
        "node_changes",
        "sid_changes",
        "unfinished",
    ] {
        assert_eq!(r[zero], 0, "{zero}: {r}");
    }
    assert_eq!(r["timed_out"], false, "{r}");
    assert_eq!(r["errors"].as_array().map(Vec::len), Some(0), "{r}");
}
