//! nginx values (times, sizes, counts, addresses) in limpet's spelling.

/// A limpet name: letters, digits, `_` and `-`.
pub(super) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

/// A non-negative count that fits a TOML integer.
pub(super) fn count(s: &str) -> Option<i64> {
    s.parse::<u64>().ok().and_then(|n| i64::try_from(n).ok())
}

/// `host` or `[v6]` gets the default port; `host:port` and `[v6]:port` are kept.
pub(super) fn with_port(addr: &str, port: u16) -> String {
    let has_port = match addr.strip_prefix('[') {
        Some(rest) => rest.contains("]:"),
        None => addr.contains(':'),
    };
    match has_port {
        true => addr.to_owned(),
        false => format!("{addr}:{port}"),
    }
}

/// nginx time (`500ms`, `60s`, `1m30s`, `1h`, bare `60` = seconds) as limpet's `Ns` / `Nms`.
pub(super) fn duration(s: &str) -> Option<String> {
    let (mut total, mut rest) = (0u64, s.trim());
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_len = rest[digits..].find(|c: char| !c.is_ascii_alphabetic());
        let unit_end = unit_len.map_or(rest.len(), |i| i + digits);
        let n: u64 = rest[..digits].parse().ok()?;
        let ms = unit_ms(&rest[digits..unit_end])?;
        total = total.checked_add(n.checked_mul(ms)?)?;
        rest = rest[unit_end..].trim_start();
    }
    Some(match total % 1000 {
        0 => format!("{}s", total / 1000),
        _ => format!("{total}ms"),
    })
}

/// Milliseconds in one nginx time unit; no unit is seconds.
fn unit_ms(unit: &str) -> Option<u64> {
    Some(match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        "M" => 2_592_000_000,
        "y" => 31_536_000_000,
        _ => return None,
    })
}

/// nginx size (`1024`, `8k`, `1m`, `1g`) in lower case.
pub(super) fn size(s: &str) -> Option<String> {
    let digits = s.strip_suffix(['k', 'K', 'm', 'M', 'g', 'G']).unwrap_or(s);
    let ok = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.to_ascii_lowercase())
}
