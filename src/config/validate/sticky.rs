//! `[upstream.NAME.sticky]`: how `balance = "sid"` finds, keeps and shares Engine.IO sessions.

use std::time::Duration;

use super::upstream::balance;
use super::Checker;
use crate::config::raw::RawSticky;
use crate::config::{Balance, Sticky, Store};

const DEFAULT_STICKY_PATH: &str = "/socket.io/";
const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(90);
const DEFAULT_MAX_SESSIONS: i64 = 1_000_000;
const DEFAULT_KEY_PREFIX: &str = "limpet:sid:";

pub(super) fn sticky(c: &mut Checker, path: &str, s: Option<&RawSticky>) -> Sticky {
    let empty = RawSticky::default();
    let s = s.unwrap_or(&empty);
    let sticky_path = s
        .path
        .clone()
        .unwrap_or_else(|| DEFAULT_STICKY_PATH.to_string());
    c.url_path(&format!("{path}.path"), &sticky_path);
    let fallback_path = format!("{path}.fallback");
    let fallback = balance(c, &fallback_path, s.fallback.as_deref(), Balance::LeastConn);
    if fallback == Balance::Sid {
        c.error(&fallback_path, "the fallback of sid must be another method");
    }
    let session_ttl =
        c.at(path)
            .positive_duration("session_ttl", &s.session_ttl, DEFAULT_SESSION_TTL);
    let max_sessions = c.at(path).int(
        "max_sessions",
        s.max_sessions,
        DEFAULT_MAX_SESSIONS,
        1..=100_000_000,
    ) as usize;
    let store = match s.store.as_deref() {
        None | Some("local") => Store::Local,
        Some(url) if url.starts_with("redis://") => {
            if let Err(e) = redis::Client::open(url) {
                c.error(
                    format!("{path}.store"),
                    format!("invalid Redis URL {url:?}: {e} (write \"redis://host:port/db\")"),
                );
            }
            Store::Redis(url.to_string())
        }
        Some(other) => {
            c.error(
                format!("{path}.store"),
                format!("must be \"local\" or \"redis://host:port/db\", got {other:?}"),
            );
            Store::Local
        }
    };
    Sticky {
        path: sticky_path,
        fallback,
        session_ttl,
        max_sessions,
        store,
        key_prefix: s
            .key_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string()),
        sid_prefix: s.sid_prefix.unwrap_or(false),
    }
}
