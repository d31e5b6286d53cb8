//! limpet run inside the test process, on its own runtime thread, with listen sockets the test bound: the
//! address is known before limpet starts and nothing is read from a log. For what a process does (signals,
//! exit codes, the command line) the tests start the binary instead ([`super::Limpet`]).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use limpet::Command;
use tokio::sync::mpsc;

/// A limpet running in this process; stopped (gracefully, waited on for 10 s at most) on drop.
pub struct InProcess {
    addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl InProcess {
    /// Starts limpet on `config`, whose server listener `listen = ["127.0.0.1:0"]` and, if any, admin
    /// `listen = "127.0.0.1:0"` are replaced by sockets bound here. Clients may connect at once: the kernel
    /// queues them until limpet is ready and accepts.
    pub fn start(config: &str) -> InProcess {
        let server = bind();
        let server_addr = server.local_addr().expect("local addr");
        let mut sockets = vec![(server_addr, server)];
        let mut text = replace_once(
            config,
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"{server_addr}\"]"),
        );
        let admin = text.contains("listen = \"127.0.0.1:0\"").then(|| {
            let socket = bind();
            let addr = socket.local_addr().expect("local addr");
            text = replace_once(
                &text,
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{addr}\""),
            );
            sockets.push((addr, socket));
            addr
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("limpet.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let (commands, rx) = mpsc::channel(8);
        let path = config_path.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(limpet::run(path, sockets, rx))
        });
        InProcess {
            addr: server_addr,
            admin,
            dir,
            config_path,
            commands,
            thread: Some(thread),
        }
    }

    /// The server listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Re-reads the config file, as SIGHUP does.
    pub async fn reload(&self) {
        self.commands
            .send(Command::Reload)
            .await
            .expect("limpet is running");
    }

    /// Shuts limpet down gracefully and waits (10 s at most) for it to finish; what `run` returned.
    pub fn stop(mut self) -> Result<(), String> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), String> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.commands.try_send(Command::Stop);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() {
            if Instant::now() > deadline {
                return Err("limpet did not stop within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        thread
            .join()
            .unwrap_or_else(|_| Err("limpet panicked".into()))
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            if !std::thread::panicking() {
                panic!("{e}");
            }
        }
    }
}

fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "config has no {from}");
    text.replacen(from, to, 1)
}
