//! DNS membership: one task per `resolve` or `service` entry looks it up, reports each good answer, and looks
//! again when the answer's TTL runs out (bounded by `resolve_min` and `resolve_max`). A failed or empty lookup is
//! counted and logged and changes nothing: the last good answer stays.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, Protocol, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::error::{ResolveError, ResolveErrorKind};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioAsyncResolver;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::membership::Found;
use crate::config::{DnsEntry, Global, Lookup};
use crate::metrics::metrics;

/// A good answer for one entry.
pub struct Answer {
    pub upstream: String,
    pub entry: String,
    pub found: Vec<Found>,
    /// The entry's first-lookup token, on its first good answer: dropped once the answer is applied, so readiness
    /// sees the servers it names.
    pub first: Option<mpsc::Sender<()>>,
}

/// How long one lookup may take in all (each server is asked with a shorter timeout).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The resolver of `[global] resolver` (the system's when it is empty).
pub fn resolver(global: &Global) -> Result<TokioAsyncResolver, ResolveError> {
    let (config, mut opts) = if global.resolver.is_empty() {
        hickory_resolver::system_conf::read_system_conf()?
    } else {
        let mut group = NameServerConfigGroup::with_capacity(global.resolver.len() * 2);
        for addr in &global.resolver {
            group.push(NameServerConfig::new(*addr, Protocol::Udp));
            group.push(NameServerConfig::new(*addr, Protocol::Tcp));
        }
        (
            ResolverConfig::from_parts(None, Vec::new(), group),
            ResolverOpts::default(),
        )
    };
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    // Cached answers never outlive the bounds limpet re-resolves by.
    opts.positive_max_ttl = Some(global.resolve_max);
    opts.negative_max_ttl = Some(global.resolve_min);
    Ok(TokioAsyncResolver::tokio(config, opts))
}

/// What a lookup found, and until when it holds.
type Resolved = (Vec<Found>, Instant);

/// Follows one entry until `stop`: reports good answers to `answers`. `first` goes with the first good answer, or
/// is dropped at the first empty one (a definitive answer); a failed lookup keeps it and tries again.
pub async fn follow(
    resolver: TokioAsyncResolver,
    upstream: String,
    entry: DnsEntry,
    bounds: (Duration, Duration),
    answers: mpsc::Sender<Answer>,
    mut stop: watch::Receiver<bool>,
    mut first: Option<mpsc::Sender<()>>,
) {
    let (min, max) = bounds;
    let name = entry.template.name.clone();
    let counter = |result: &str| {
        metrics()
            .dns_lookups
            .with_label_values(&[upstream.as_str(), result])
    };
    let (ok, error, empty) = (counter("ok"), counter("error"), counter("empty"));
    let mut failing = false;
    loop {
        // A lookup under way when the entry is no longer followed (a reload) is abandoned: its answer could be
        // older than the new task's.
        let looked = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            looked = tokio::time::timeout(LOOKUP_TIMEOUT, lookup(&resolver, &entry.lookup)) => looked,
        };
        let wait = match looked {
            Ok(Ok((found, valid_until))) if !found.is_empty() => {
                ok.inc();
                if std::mem::take(&mut failing) {
                    info!(%upstream, entry = %name, servers = found.len(), "DNS lookup works again");
                }
                let answer = Answer {
                    upstream: upstream.clone(),
                    entry: name.clone(),
                    found,
                    first: first.take(),
                };
                if answers.send(answer).await.is_err() {
                    return;
                }
                valid_until
                    .saturating_duration_since(Instant::now())
                    .clamp(min, max)
            }
            outcome => {
                let why = match outcome {
                    Ok(Ok(_)) => {
                        empty.inc();
                        drop(first.take());
                        "no records".to_string()
                    }
                    Ok(Err(e)) if is_no_records(&e) => {
                        empty.inc();
                        drop(first.take());
                        "no records".to_string()
                    }
                    Ok(Err(e)) => {
                        error.inc();
                        e.to_string()
                    }
                    Err(_) => {
                        error.inc();
                        format!("no answer within {}s", LOOKUP_TIMEOUT.as_secs())
                    }
                };
                if !std::mem::replace(&mut failing, true) {
                    warn!(%upstream, entry = %name, reason = %why, "DNS lookup failed: the last good servers stay");
                }
                min
            }
        };
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Is this an answer that the name has no such records (NXDOMAIN, or NOERROR with none)? A server that refuses
/// or fails (REFUSED, SERVFAIL, …) gave no answer: that is an error, not an empty answer.
fn is_no_records(e: &ResolveError) -> bool {
    matches!(
        e.kind(),
        ResolveErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        }
    )
}

/// Returns once `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Looks an entry up once.
async fn lookup(resolver: &TokioAsyncResolver, what: &Lookup) -> Result<Resolved, ResolveError> {
    match what {
        Lookup::Host { host, port } => {
            let ips = resolver.lookup_ip(host.as_str()).await?;
            let found = ips
                .iter()
                .map(|ip| Found {
                    addr: SocketAddr::new(ip, *port),
                    weight: None,
                    backup: false,
                })
                .collect();
            Ok((found, ips.valid_until()))
        }
        Lookup::Service(name) => service(resolver, name).await,
    }
}

/// SRV records: each target's addresses at the record's port, with its weight; records of a priority below the
/// best one are backups (as nginx takes them).
async fn service(resolver: &TokioAsyncResolver, name: &str) -> Result<Resolved, ResolveError> {
    let srv = resolver.srv_lookup(name).await?;
    let mut valid_until = srv.as_lookup().valid_until();
    let best = srv.iter().map(|r| r.priority()).min().unwrap_or(0);
    let mut found = Vec::new();
    for record in srv.iter() {
        let target = record.target().to_utf8();
        let ips = match resolver.lookup_ip(target.as_str()).await {
            Ok(ips) => ips,
            Err(e) if is_no_records(&e) => continue,
            Err(e) => return Err(e),
        };
        valid_until = valid_until.min(ips.valid_until());
        found.extend(ips.iter().map(|ip| Found {
            addr: SocketAddr::new(ip, record.port()),
            // SRV weight 0 means "rarely": the least limpet can give is 1.
            weight: Some(u32::from(record.weight()).max(1)),
            backup: record.priority() != best,
        }));
    }
    Ok((found, valid_until))
}
