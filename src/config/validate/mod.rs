//! Raw TOML types → the validated model, collecting every problem with its key path.
//!
//! One file per config section; this one holds the [`Checker`] they all report to and the walk over the sections.

mod admin;
mod global;
mod health_check;
mod listen;
mod server;
mod sticky;
mod upstream;

pub(super) use self::upstream::{api_entry, server_list_text};

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use self::admin::admin;
use self::global::global;
use self::listen::check_listen_conflicts;
use self::server::server_blocks;
use self::upstream::upstreams;
use super::raw::RawConfig;
use super::units::{parse_duration, Cidr};
use super::{Config, Loaded, Problem};

/// The longest duration any key takes (HAProxy caps its timeouts near 24.8 days, nginx near 24.8 days too).
const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// Collects problems and warnings while walking the raw config.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Checker {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// A duration, at most [`MAX_DURATION`] (so deadlines computed from it never overflow).
    fn duration(&mut self, path: &str, value: &Option<String>, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(text) {
            Ok(d) if d <= MAX_DURATION => d,
            Ok(_) => {
                self.error(
                    path,
                    format!(
                        "{text:?} is too long: at most \"{}d\"",
                        MAX_DURATION.as_secs() / 86_400
                    ),
                );
                default
            }
            Err(e) => {
                self.error(path, e);
                default
            }
        }
    }

    /// A URL path: it must start with '/'.
    fn url_path(&mut self, path: &str, value: &str) {
        if !value.starts_with('/') {
            self.error(path, format!("must start with '/', got {value:?}"));
        }
    }

    /// A file the config names (a certificate, a key, a CA bundle): it must be there to be read when the
    /// config is loaded.
    fn readable(&mut self, path: &str, file: &Path) {
        if let Err(e) = std::fs::metadata(file) {
            self.error(path, format!("cannot read {}: {e}", file.display()));
        }
    }

    /// A list of CIDRs (`10.0.0.0/8`, `::1`).
    fn cidrs(&mut self, path: &str, value: &Option<Vec<String>>) -> Vec<Cidr> {
        value
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, t)| {
                t.parse::<Cidr>()
                    .map_err(|e| self.error(format!("{path}[{i}]"), e))
                    .ok()
            })
            .collect()
    }

    fn positive_duration(
        &mut self,
        path: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path, value, default);
        if d.is_zero() {
            self.error(path, "must be greater than zero");
        }
        d
    }

    fn int(
        &mut self,
        path: &str,
        value: Option<i64>,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> i64 {
        let v = value.unwrap_or(default);
        if !range.contains(&v) {
            self.error(
                path,
                format!("must be {}..={}, got {v}", range.start(), range.end()),
            );
            return default;
        }
        v
    }

    /// The keys of the table at `table`, checked by name.
    fn at<'a>(&'a mut self, table: &'a str) -> Keys<'a> {
        Keys {
            checker: self,
            table,
        }
    }

    fn listen_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Some(addr);
        }
        match text.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Some(addr),
            _ => {
                self.error(
                    path,
                    format!("invalid address {text:?} (write host:port, e.g. \"127.0.0.1:8080\")"),
                );
                None
            }
        }
    }
}

/// A table's keys, checked with their full path (`upstream.app.keepalive`) in every message.
struct Keys<'a> {
    checker: &'a mut Checker,
    table: &'a str,
}

impl Keys<'_> {
    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.table)
    }

    fn duration(&mut self, key: &str, value: &Option<String>, default: Duration) -> Duration {
        let path = self.path(key);
        self.checker.duration(&path, value, default)
    }

    fn positive_duration(
        &mut self,
        key: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        let path = self.path(key);
        self.checker.positive_duration(&path, value, default)
    }

    fn int(
        &mut self,
        key: &str,
        value: Option<i64>,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> i64 {
        let path = self.path(key);
        self.checker.int(&path, value, default, range)
    }

    fn cidrs(&mut self, key: &str, value: &Option<Vec<String>>) -> Vec<Cidr> {
        let path = self.path(key);
        self.checker.cidrs(&path, value)
    }
}

/// Validates a raw config into the typed model, or returns every problem found.
pub(super) fn validate(raw: RawConfig) -> Result<Loaded, Vec<Problem>> {
    let mut c = Checker::default();
    let global = global(&mut c, &raw.global);
    let admin = raw.admin.as_ref().and_then(|a| admin(&mut c, a));
    let upstreams = upstreams(&mut c, &raw.upstream);
    let servers = server_blocks(&mut c, &raw.server, &upstreams);
    check_listen_conflicts(&mut c, &servers, admin.as_ref());
    if c.problems.is_empty() {
        Ok(Loaded {
            config: Config {
                global,
                admin,
                servers,
                upstreams,
            },
            warnings: c.warnings,
        })
    } else {
        Err(c.problems)
    }
}
