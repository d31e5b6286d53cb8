//! The `limpet` command: parse arguments, load the config, run (or check it, or convert an nginx config).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::app::App;
use crate::config;

/// A sticky-session HTTP/1.1 and WebSocket reverse proxy for Socket.IO fleets.
#[derive(Parser)]
#[command(name = "limpet", version, about)]
struct Cli {
    /// Config file.
    #[arg(short, long, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Validate the config (and its certificate files), print every problem, and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the limpet TOML for the upstream/server/location parts of an nginx config.
    ConvertNginx {
        /// The nginx config file.
        file: PathBuf,
    },
    /// Hand the running limpet's sockets and sessions to a new process of the binary at its path (through the
    /// admin listener of the config; the same as SIGUSR2 to it). Waits until the new process serves.
    Upgrade,
}

/// A process started by an upgrade: the channel to the old one and the sockets it passed.
struct Handover {
    channel: crate::upgrade::Channel,
    sockets: Vec<(std::net::SocketAddr, std::net::TcpListener)>,
    admin: Option<std::net::TcpListener>,
    old_pid: u32,
    generation: u64,
}

impl Handover {
    /// Connects to the old process named by the environment and takes its sockets; None when this process was
    /// not started by an upgrade.
    fn from_env() -> Option<Result<Handover, String>> {
        let channel = crate::upgrade::connect_from_env()?;
        Some((|| {
            let mut channel = channel.map_err(|e| format!("cannot reach the old process: {e}"))?;
            let (message, fds) = channel
                .recv_with_fds()
                .map_err(|e| format!("no sockets from the old process: {e}"))?;
            let crate::upgrade::Message::Sockets {
                addrs,
                admin,
                old_pid,
                generation,
            } = message
            else {
                return Err(format!("unexpected first message {message:?}"));
            };
            let mut fds = fds.into_iter();
            let sockets = addrs
                .into_iter()
                .zip(fds.by_ref())
                .map(|(a, fd)| (a, std::net::TcpListener::from(fd)))
                .collect();
            let admin = if admin {
                fds.next().map(std::net::TcpListener::from)
            } else {
                None
            };
            Ok(Handover {
                channel,
                sockets,
                admin,
                old_pid,
                generation,
            })
        })())
    }

    /// Tells the old process why this one cannot take over (it serves on); this one then exits.
    fn fail(mut self, why: &str) {
        let _ = self.channel.send(&crate::upgrade::Message::Failed {
            error: why.replace("\n  ", "; ").replace('\n', "; "),
        });
    }
}

/// Runs the `limpet` command with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Some(Command::ConvertNginx { file }) => return convert_nginx(&file),
        Some(Command::Upgrade) => return upgrade(&cli.config),
        None => {}
    }
    let handover = match Handover::from_env() {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            eprintln!("upgrade: {e}");
            return ExitCode::from(1);
        }
    };
    let loaded = match config::load(&cli.config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            if let Some(h) = handover {
                h.fail(&e.to_string());
            }
            return ExitCode::from(1);
        }
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    if cli.check {
        return check(&cli.config, &loaded);
    }
    run(cli.config, loaded, handover)
}

fn check(path: &std::path::Path, loaded: &config::Loaded) -> ExitCode {
    if let Err(problems) = crate::runtime::tls_configs(&loaded.config) {
        eprintln!(
            "{}",
            config::ConfigError {
                file: path.display().to_string(),
                problems
            }
        );
        return ExitCode::from(1);
    }
    println!("{}: ok", path.display());
    ExitCode::SUCCESS
}

fn run(path: PathBuf, loaded: config::Loaded, handover: Option<Handover>) -> ExitCode {
    // Each tunnel holds two sockets: take every file descriptor the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let workers = match loaded.config.global.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One worker: everything on this thread, without the work-stealing scheduler's bookkeeping.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let (given, handover) = match handover {
            Some(mut h) => {
                let listeners = given_sockets(std::mem::take(&mut h.sockets));
                let admin = h.admin.take().and_then(|a| {
                    a.set_nonblocking(true).ok()?;
                    tokio::net::TcpListener::from_std(a).ok()
                });
                ((listeners, admin), Some(h))
            }
            None => ((Vec::new(), None), None),
        };
        let (app, admin) = match App::start(path, loaded, given).await {
            Ok(started) => started,
            Err(e) => {
                eprintln!("{e}");
                if let Some(h) = handover {
                    h.fail(&e.to_string());
                }
                return ExitCode::from(1);
            }
        };
        if let Some(h) = handover {
            app.process()
                .taking_over(h.channel, h.old_pid, h.generation);
        }
        if let Some(admin) = admin {
            tokio::spawn(crate::admin::serve(app.clone(), admin));
        }
        match app.run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        }
    })
}

/// Sockets passed by the old process, ready for the runtime (which must be running).
fn given_sockets(
    sockets: Vec<(std::net::SocketAddr, std::net::TcpListener)>,
) -> Vec<(std::net::SocketAddr, tokio::net::TcpListener)> {
    sockets
        .into_iter()
        .filter_map(|(addr, socket)| {
            socket.set_nonblocking(true).ok()?;
            Some((addr, tokio::net::TcpListener::from_std(socket).ok()?))
        })
        .collect()
}

/// `limpet upgrade`: asks the running limpet (the admin listener of the config) to upgrade, and waits.
fn upgrade(path: &std::path::Path) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let Some(admin) = loaded.config.admin else {
        eprintln!(
            "{}: no [admin] listener to ask (send SIGUSR2 to limpet instead)",
            path.display()
        );
        return ExitCode::from(1);
    };
    let token = admin.token.map(|t| t.0);
    match crate::upgrade::request(admin.listen, token.as_deref()) {
        Ok((200, body)) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("upgrade refused ({status}): {body}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!(
                "cannot reach limpet's admin listener at {}: {e}",
                admin.listen
            );
            ExitCode::from(1)
        }
    }
}

fn convert_nginx(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    match crate::convert_nginx::convert(&text) {
        Ok(c) => {
            print!("{}", c.toml);
            for u in &c.unmapped {
                eprintln!("not mapped: {u}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}
