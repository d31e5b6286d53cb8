//! `[global]`: worker threads, the connection cap, the shutdown deadline, the access log.

use std::path::PathBuf;
use std::time::Duration;

use super::Checker;
use crate::config::raw::RawGlobal;
use crate::config::{AccessLog, Global};

const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn global(c: &mut Checker, g: &RawGlobal) -> Global {
    let workers = c.int("global.workers", g.workers, 0, 0..=1024) as usize;
    let max_connections = c.int(
        "global.max_connections",
        g.max_connections,
        DEFAULT_MAX_CONNECTIONS as i64,
        1..=10_000_000,
    ) as usize;
    let shutdown_timeout = c.duration(
        "global.shutdown_timeout",
        &g.shutdown_timeout,
        DEFAULT_SHUTDOWN_TIMEOUT,
    );
    let access_log = match g.access_log.as_deref() {
        None | Some("off") => AccessLog::Off,
        Some("stderr") => AccessLog::Stderr,
        Some("") => {
            c.error(
                "global.access_log",
                "must be \"off\", \"stderr\" or a file path",
            );
            AccessLog::Off
        }
        Some(path) => AccessLog::File(PathBuf::from(path)),
    };
    Global {
        workers,
        max_connections,
        shutdown_timeout,
        access_log,
    }
}
