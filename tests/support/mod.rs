//! Test support: limpet as a real process or in this one, real backends on port 0, Node Socket.IO fleets, and small
//! clients. Every wait has a deadline; nothing listens on a fixed port.
#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod client;
pub mod dns;
pub mod eio;
mod encode;
pub mod h2;
pub mod in_process;
pub mod metrics;
pub mod node;
pub mod polling;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use backend::{backends, HttpBackend, RawBackend, RawReply, WsBackend};
pub use client::*;
pub use encode::percent_encode;
pub use in_process::InProcess;
pub use node::{assert_clean, assert_connected_cleanly, NodeFleet, SioClient};

/// Waits until `f` returns Some, polling every 20 ms, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running limpet process with its config file; killed on drop.
pub struct Limpet {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// Bound address of each configured listen address, in the order they were reported.
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: Option<SocketAddr>,
}

impl Limpet {
    /// Writes `config` and starts limpet on it, waiting (10 s at most) until `listeners` listeners (and the admin
    /// listener, when the config has `[admin]`) report their address.
    pub fn start_expect(config: &str, listeners: usize) -> Limpet {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("limpet.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut l = Limpet::spawn(dir, config_path);
        l.wait_ready(listeners, config.contains("[admin]"));
        l
    }

    /// Starts limpet on `config` with one listener.
    pub fn start(config: &str) -> Limpet {
        Limpet::start_expect(config, 1)
    }

    /// Starts limpet on `config` (which has `[admin]`) and returns as soon as the admin listener is up, before
    /// limpet is ready; `wait_listening` waits for the rest.
    pub fn start_unready(config: &str) -> Limpet {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("limpet.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut l = Limpet::spawn(dir, config_path);
        l.wait_ready(0, true);
        l
    }

    /// Waits (10 s at most) until `listeners` listeners report their address.
    pub fn wait_listening(&mut self, listeners: usize) {
        self.wait_ready(listeners, self.admin.is_some());
    }

    /// Starts `binary` (a copy of limpet, e.g. for an upgrade) on `config`, as [`Limpet::start`] does.
    pub fn start_binary(binary: &std::path::Path, config: &str) -> Limpet {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("limpet.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut l = Limpet::spawn_binary(binary, dir, config_path);
        l.wait_ready(1, config.contains("[admin]"));
        l
    }

    fn spawn(dir: tempfile::TempDir, config_path: PathBuf) -> Limpet {
        Limpet::spawn_binary(
            std::path::Path::new(env!("CARGO_BIN_EXE_limpet")),
            dir,
            config_path,
        )
    }

    fn spawn_binary(
        binary: &std::path::Path,
        dir: tempfile::TempDir,
        config_path: PathBuf,
    ) -> Limpet {
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("LIMPET_TEST_LOG").unwrap_or_else(|_| "info,limpet=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn limpet");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("LIMPET_TEST_ECHO").is_some() {
                    eprintln!("[limpet] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Limpet {
            child: Some(child),
            dir,
            config_path,
            logs,
            listeners: Vec::new(),
            admin: None,
        }
    }

    fn wait_ready(&mut self, listeners: usize, admin: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.listeners = self
                .logs()
                .iter()
                .filter(|l| l.contains(" listening ") && !l.contains("admin listening"))
                .filter_map(|l| Some((field(l, "listen=")?, field(l, "local=")?.parse().ok()?)))
                .collect();
            self.admin = self
                .logs()
                .iter()
                .find(|l| l.contains("admin listening"))
                .and_then(|l| field(l, "local=")?.parse().ok());
            if self.listeners.len() >= listeners && (!admin || self.admin.is_some()) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "limpet exited early ({status}):\n{}",
                    self.logs().join("\n")
                );
            }
            if Instant::now() > deadline {
                panic!("limpet did not start in time:\n{}", self.logs().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first listener's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    /// `http://` + the first listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `http://` + the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin.expect("config has no [admin]"))
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        get(self.admin.expect("config has no [admin]"), "/metrics")
            .await
            .text()
    }

    /// The admin listener's `/status` document.
    pub async fn status(&self) -> serde_json::Value {
        let r = get(self.admin.expect("config has no [admin]"), "/status").await;
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).expect("/status is JSON")
    }

    /// One field of every server of upstream `name` in `/status`, in config order.
    pub async fn server_fields(&self, name: &str, field: &str) -> Vec<serde_json::Value> {
        self.status().await["upstreams"][name]["servers"]
            .as_array()
            .unwrap_or_else(|| panic!("no upstream {name} in /status"))
            .iter()
            .map(|s| s[field].clone())
            .collect()
    }

    /// Every line limpet wrote to stderr so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let logs = self.logs.clone();
        let needle2 = needle.to_string();
        eventually(timeout, &format!("log line containing {needle:?}"), || {
            let found = logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(&needle2))
                .cloned();
            async move { found }
        })
        .await
    }

    /// Replaces the config file (for a reload).
    pub fn write_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).expect("write config");
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, `"INT"`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("limpet did not exit within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Limpet {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value after `key` in a log line, up to the next space.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    Some(line[start..].split_whitespace().next()?.to_string())
}

/// Runs `limpet --check -c <file with config>`: (exit code, stdout + stderr).
pub fn check_config(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("limpet.toml");
    std::fs::write(&path, config).expect("write config");
    check_file(&path)
}

/// Runs `limpet --check -c path`.
pub fn check_file(path: &std::path::Path) -> (i32, String) {
    let limpet = std::path::Path::new(env!("CARGO_BIN_EXE_limpet"));
    run_command(
        limpet,
        &["--check".as_ref(), "-c".as_ref(), path.as_os_str()],
    )
}

/// Runs `binary` with `args` to its end: (exit code, stdout + stderr).
pub fn run_command(binary: &std::path::Path, args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A config with one listener on 127.0.0.1:0, an admin listener, location "/" → upstream "app" with
/// `balance` over `servers`, plus `extra` TOML appended to the upstream table (keys) and the file (tables).
pub fn simple_config(
    balance: &str,
    servers: &[SocketAddr],
    upstream_keys: &str,
    tables: &str,
) -> String {
    let mut s = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n\n[[server.location]]\npath = \"/\"\nproxy_pass = \"app\"\nconnect_timeout = \"1s\"\n\n[upstream.app]\nbalance = \"{balance}\"\n{upstream_keys}\n"
    );
    for a in servers {
        s.push_str(&format!("\n[[upstream.app.server]]\naddr = \"{a}\"\n"));
    }
    s.push('\n');
    s.push_str(tables);
    s
}

/// The shipped `config/limpet.toml` (health checks on, default timeouts) on ephemeral ports, in front of
/// `servers` instead of 127.0.0.1:3001-3003 (three of them), with each `(from, to)` of `edits` replaced after.
pub fn shipped_config(servers: &[SocketAddr], edits: &[(&str, &str)]) -> String {
    assert_eq!(servers.len(), 3, "the shipped config fronts three servers");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/limpet.toml");
    let mut text = std::fs::read_to_string(path).expect("read config/limpet.toml");
    for (from, to) in [
        ("127.0.0.1:8080", "127.0.0.1:0"),
        ("127.0.0.1:9100", "127.0.0.1:0"),
    ] {
        assert!(text.contains(from), "config/limpet.toml has no {from}");
        text = text.replace(from, to);
    }
    for (i, addr) in servers.iter().enumerate() {
        let from = format!("\"127.0.0.1:{}\"", 3001 + i);
        assert!(text.contains(&from), "config/limpet.toml has no {from}");
        text = text.replace(&from, &format!("\"{addr}\""));
    }
    for (from, to) in edits {
        assert!(text.contains(from), "config/limpet.toml has no {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// One `[[upstream.app.server]]` table with extra keys (e.g. "weight = 5").
pub fn server_table(addr: SocketAddr, keys: &str) -> String {
    format!("\n[[upstream.app.server]]\naddr = \"{addr}\"\n{keys}\n")
}

/// `simple_config` with no tables, over `servers` each with its extra keys.
pub fn servers_config(
    balance: &str,
    upstream_keys: &str,
    servers: &[(SocketAddr, &str)],
) -> String {
    let mut s = simple_config(balance, &[], upstream_keys, "");
    for (addr, keys) in servers {
        s.push_str(&server_table(*addr, keys));
    }
    s
}

/// `GET path` that must answer 200: the body, which is the answering backend's name.
pub async fn who(addr: SocketAddr, path: &str) -> String {
    let resp = get(addr, path).await;
    assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    resp.text()
}

/// The entry of server `addr` of upstream "app" in a `/status` document; panics when it is not there.
pub fn server_entry(status: &serde_json::Value, addr: SocketAddr) -> serde_json::Value {
    status["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in /status: {status}"))
}
