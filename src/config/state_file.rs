//! An upstream's `state_file`: its server list in the config's `[[server]]` form, read when the config loads
//! (see `validate::upstream`) and written whole, atomically, after every runtime API change.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use super::{DnsEntry, Lookup, ServerSpec, Upstream};

/// Reads a server list written by [`render`].
pub fn parse(text: &str) -> Result<(Vec<ServerSpec>, Vec<DnsEntry>), Vec<super::Problem>> {
    super::validate::server_list_text(text)
}

/// Writes the server list of `up` to `path`: a temporary file beside it, synced, then renamed over it, so a
/// reader sees the old list or the new one, never half of one.
pub fn write(path: &Path, up: &Upstream) -> std::io::Result<()> {
    let text = render(up);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The file's text: a comment, then one `[[server]]` per entry, fixed addresses first.
pub fn render(up: &Upstream) -> String {
    let servers: Vec<Value> = up
        .servers
        .iter()
        .map(|s| Value::Table(fixed(s)))
        .chain(up.dns.iter().map(|d| Value::Table(dns(d))))
        .collect();
    let mut doc = Table::new();
    doc.insert("server".into(), Value::Array(servers));
    format!(
        "# The servers of upstream {:?}, kept by limpet's runtime API (POST/PATCH/DELETE /upstreams/{}/servers).\n\
         # limpet rewrites this file on every change; edit it while limpet is stopped, or send SIGHUP after.\n\n{}",
        up.name,
        up.name,
        toml::to_string(&doc).unwrap_or_default()
    )
}

fn fixed(s: &ServerSpec) -> Table {
    let mut t = Table::new();
    t.insert("addr".into(), Value::String(s.name.clone()));
    settings(&mut t, s);
    t
}

fn dns(d: &DnsEntry) -> Table {
    let mut t = Table::new();
    match &d.lookup {
        Lookup::Host { .. } => {
            t.insert("addr".into(), Value::String(d.template.name.clone()));
            t.insert("resolve".into(), Value::Boolean(true));
        }
        Lookup::Service(name) => {
            t.insert("service".into(), Value::String(name.clone()));
        }
    }
    settings(&mut t, &d.template);
    t
}

/// Every setting that is not its default.
fn settings(t: &mut Table, s: &ServerSpec) {
    let mut int = |k: &str, v: u32, default: u32| {
        if v != default {
            t.insert(k.into(), Value::Integer(i64::from(v)));
        }
    };
    int("weight", s.weight, 1);
    int("max_fails", s.max_fails, 1);
    int("max_conns", s.max_conns, 0);
    let mut flag = |k: &str, v: bool| {
        if v {
            t.insert(k.into(), Value::Boolean(true));
        }
    };
    flag("backup", s.backup);
    flag("down", s.down);
    flag("drain", s.drain);
    let mut duration = |k: &str, v: Duration, default: Duration| {
        if v != default {
            let text = humantime::format_duration(v).to_string();
            t.insert(k.into(), Value::String(text));
        }
    };
    duration("fail_timeout", s.fail_timeout, Duration::from_secs(10));
    duration("slow_start", s.slow_start, Duration::ZERO);
    if !s.route.is_empty() {
        t.insert("route".into(), Value::String(s.route.clone()));
    }
}
