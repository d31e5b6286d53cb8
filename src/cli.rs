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
    #[arg(short, long, default_value = config::DEFAULT_PATH)]
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
    if let Some(Command::ConvertNginx { file }) = cli.command {
        return convert_nginx(&file);
    }
    let loaded = match config::load(&cli.config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    if cli.check {
        return check(&cli.config, &loaded);
    }
    run(cli.config, loaded)
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

fn run(path: PathBuf, loaded: config::Loaded) -> ExitCode {
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
        let (app, admin) = match App::start(path, loaded, Vec::new()).await {
            Ok(started) => started,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
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
