//! `[global]`: worker threads, the connection cap, the shutdown deadline, the access log.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::Checker;
use crate::config::raw::RawGlobal;
use crate::config::{AccessLog, Global};

const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RESOLVE_MIN: Duration = Duration::from_secs(1);
const DEFAULT_RESOLVE_MAX: Duration = Duration::from_secs(30);
const DEFAULT_UPGRADE_LINGER: Duration = Duration::from_secs(3600);
const DEFAULT_CLOSE_SPREAD: Duration = Duration::from_secs(10);

/// `resolver`: DNS servers as `IP:port` (a bare IP means port 53).
fn resolver(c: &mut Checker, list: &[String]) -> Vec<SocketAddr> {
    list.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let parsed = text
                .parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            parsed
                .map_err(|_| {
                    c.error(
                        format!("global.resolver[{i}]"),
                        format!("invalid address {text:?} (write IP:port, e.g. \"10.96.0.10:53\")"),
                    )
                })
                .ok()
        })
        .collect()
}

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
    let resolver = resolver(c, g.resolver.as_deref().unwrap_or_default());
    let resolve_min =
        c.positive_duration("global.resolve_min", &g.resolve_min, DEFAULT_RESOLVE_MIN);
    let resolve_max =
        c.positive_duration("global.resolve_max", &g.resolve_max, DEFAULT_RESOLVE_MAX);
    if resolve_max < resolve_min {
        c.error(
            "global.resolve_max",
            format!(
                "{} is shorter than resolve_min ({})",
                humantime::format_duration(resolve_max),
                humantime::format_duration(resolve_min)
            ),
        );
    }
    let upgrade_linger = c.duration(
        "global.upgrade_linger",
        &g.upgrade_linger,
        DEFAULT_UPGRADE_LINGER,
    );
    let close_spread = c.duration("global.close_spread", &g.close_spread, DEFAULT_CLOSE_SPREAD);
    Global {
        workers,
        upgrade_linger,
        close_spread,
        resolver,
        resolve_min,
        resolve_max,
        max_connections,
        shutdown_timeout,
        access_log,
    }
}
