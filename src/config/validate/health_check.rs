//! `[upstream.NAME.health_check]`: the active health check's request, timing and expected status.

use std::time::Duration;

use super::Checker;
use crate::config::raw::RawHealthCheck;
use crate::config::HealthCheck;

const DEFAULT_HEALTH_PATH: &str = "/socket.io/?EIO=4&transport=polling";
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) fn health_check(c: &mut Checker, path: &str, h: &RawHealthCheck) -> HealthCheck {
    let check_path = h
        .path
        .clone()
        .unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_string());
    c.url_path(&format!("{path}.path"), &check_path);
    let interval = c
        .at(path)
        .positive_duration("interval", &h.interval, DEFAULT_HEALTH_INTERVAL);
    let timeout = c
        .at(path)
        .positive_duration("timeout", &h.timeout, DEFAULT_HEALTH_TIMEOUT);
    let fails = c.at(path).int("fails", h.fails, 2, 1..=100) as u32;
    let passes = c.at(path).int("passes", h.passes, 2, 1..=100) as u32;
    let expect_status = status_range(
        c,
        &format!("{path}.expect_status"),
        h.expect_status.as_deref(),
    );
    HealthCheck {
        path: check_path,
        host: h.host.clone(),
        interval,
        timeout,
        fails,
        passes,
        expect_status,
    }
}

fn status_range(c: &mut Checker, path: &str, value: Option<&str>) -> (u16, u16) {
    let value = value.unwrap_or("200-399");
    let parse = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|v| (100..=599).contains(v))
    };
    let range = match value.split_once('-') {
        Some((a, b)) => parse(a).zip(parse(b)),
        None => parse(value).map(|v| (v, v)),
    };
    match range {
        Some((lo, hi)) if lo <= hi => (lo, hi),
        _ => {
            c.error(
                path,
                format!("invalid status range {value:?} (write e.g. \"200-399\" or \"200\")"),
            );
            (200, 399)
        }
    }
}
