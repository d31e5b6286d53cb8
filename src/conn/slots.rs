//! Connection slots: the process-wide `max_connections` count, per-address caps, and idle keep-alive
//! connections given up to make room (nginx's "reusing connections").
//!
//! A connection waiting for its next request holds a slot as much as a busy one does. When every slot is taken,
//! the oldest idle keep-alive connections are told to close, and the new connection takes the place of one of
//! them: the count may pass `max_connections` for the moment it takes them to go.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures_util::task::AtomicWaker;
use prometheus::IntGauge;

use crate::sync::lock;
use tokio::time::Instant;

/// Registry and per-address shards: connections spread by id or address.
const SHARDS: usize = 16;
/// Most idle connections closed by one reclaim (nginx closes min(32, reusable / 8), at least one).
const RECLAIM_MAX: usize = 32;

/// Every client connection of the process, for the connection cap and idle reuse.
pub struct Slots {
    count: AtomicUsize,
    next_id: AtomicU64,
    epoch: Instant,
    registry: [Mutex<HashMap<u64, Arc<Reuse>>>; SHARDS],
}

/// What a connection shares with [`Slots`]: since when it has been idle between requests, and whether it was
/// picked to close.
#[derive(Default)]
pub struct Reuse {
    /// Milliseconds since the slots' epoch, plus one, since it has waited for a next request; 0 while it is
    /// reading a request, serving one, or a tunnel.
    idle_since: AtomicU64,
    evicted: AtomicBool,
    /// The connection's task, woken when it is picked.
    waker: AtomicWaker,
}

impl Default for Slots {
    fn default() -> Slots {
        Slots {
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            registry: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl Slots {
    /// Takes a slot among at most `max`. At the cap, idle keep-alive connections are told to close and the new
    /// connection takes the slot of one of them; None when none is idle. `gauge` counts the listener's.
    pub fn admit(self: &Arc<Self>, max: usize, gauge: &IntGauge) -> Admitted {
        let reused = if self.count.fetch_add(1, Relaxed) >= max {
            let closed = self.reclaim();
            if closed == 0 {
                self.count.fetch_sub(1, Relaxed);
                return Admitted::Full;
            }
            closed
        } else {
            0
        };
        gauge.inc();
        let id = self.next_id.fetch_add(1, Relaxed);
        let reuse = Arc::new(Reuse::default());
        lock(&self.registry[shard(id)]).insert(id, reuse.clone());
        let permit = Permit {
            slots: self.clone(),
            id,
            gauge: gauge.clone(),
        };
        Admitted::Slot {
            permit,
            reuse,
            reused,
        }
    }

    /// Tells the oldest idle connections to close; how many were told.
    fn reclaim(&self) -> usize {
        let mut idle: Vec<(u64, Arc<Reuse>)> = Vec::new();
        for shard in &self.registry {
            idle.extend(lock(shard).values().filter_map(|r| {
                let since = r.idle_since.load(Relaxed);
                (since != 0 && !r.evicted.load(Relaxed)).then(|| (since, r.clone()))
            }));
        }
        if idle.is_empty() {
            return 0;
        }
        let take = (idle.len() / 8).clamp(1, RECLAIM_MAX);
        if take < idle.len() {
            idle.select_nth_unstable_by_key(take - 1, |(since, _)| *since);
        }
        idle.truncate(take);
        let mut told = 0;
        for (_, reuse) in idle {
            if !reuse.evicted.swap(true, Relaxed) {
                reuse.waker.wake();
                told += 1;
            }
        }
        told
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }
}

/// The answer of [`Slots::admit`].
pub enum Admitted {
    /// A slot, the connection's idle state (for its IO to keep up to date and to watch), and how many idle
    /// connections were told to close to make room for it.
    Slot {
        permit: Permit,
        reuse: Arc<Reuse>,
        reused: usize,
    },
    /// Every slot is held by a connection that is not idle.
    Full,
}

/// A held slot, given back when dropped.
pub struct Permit {
    slots: Arc<Slots>,
    id: u64,
    gauge: IntGauge,
}

impl Permit {
    /// The connection will never be idle again (it became a tunnel): it leaves the registry, and its idle state
    /// is freed with the connection's IO.
    pub fn not_reusable(&self) {
        lock(&self.slots.registry[shard(self.id)]).remove(&self.id);
    }

    /// A handle that reads the slots' clock (for [`Reuse::idle`]).
    pub fn clock(&self) -> Clock {
        Clock(self.slots.clone())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        lock(&self.slots.registry[shard(self.id)]).remove(&self.id);
        self.slots.count.fetch_sub(1, Relaxed);
        self.gauge.dec();
    }
}

/// The slots' clock.
#[derive(Clone)]
pub struct Clock(Arc<Slots>);

impl Reuse {
    /// The connection now waits for its next request.
    pub fn idle(&self, clock: &Clock) {
        self.idle_since.store(clock.0.now(), Relaxed);
    }

    /// The connection is reading or serving a request, or has become a tunnel.
    pub fn busy(&self) {
        self.idle_since.store(0, Relaxed);
    }

    /// Picked to close, to make room for a new connection. `waker` is woken when that happens.
    pub fn evicted(&self, waker: &std::task::Waker) -> bool {
        if self.evicted.load(Relaxed) {
            return true;
        }
        self.waker.register(waker);
        self.evicted.load(Relaxed)
    }
}

/// Client connections per address on one listen address, against `max_connections_per_ip`.
#[derive(Default)]
pub struct PerIp {
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

impl PerIp {
    /// A place for one more connection from `ip`, or None when it holds `max` already.
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpPermit> {
        let mut shard = lock(&self.shards[ip_shard(ip)]);
        let held = shard.entry(ip).or_insert(0);
        if *held as usize >= max {
            return None;
        }
        *held += 1;
        Some(IpPermit {
            per_ip: self.clone(),
            ip,
        })
    }
}

/// One connection of an address, given back when dropped.
pub struct IpPermit {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut shard = lock(&self.per_ip.shards[ip_shard(self.ip)]);
        if let Some(held) = shard.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                shard.remove(&self.ip);
            }
        }
    }
}

fn shard(id: u64) -> usize {
    (id % SHARDS as u64) as usize
}

fn ip_shard(ip: IpAddr) -> usize {
    let last = match ip {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    };
    usize::from(last) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> IntGauge {
        IntGauge::new("t", "t").unwrap()
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let slots = Arc::new(Slots::default());
        let g = gauge();
        let Admitted::Slot {
            permit: a,
            reuse: a_reuse,
            ..
        } = slots.admit(2, &g)
        else {
            panic!("first")
        };
        let Admitted::Slot {
            permit: b,
            reuse: b_reuse,
            ..
        } = slots.admit(2, &g)
        else {
            panic!("second")
        };
        assert!(
            matches!(slots.admit(2, &g), Admitted::Full),
            "nothing idle yet"
        );
        a_reuse.idle(&a.clock());
        b_reuse.idle(&b.clock());
        b.not_reusable();
        let Admitted::Slot { reused, .. } = slots.admit(2, &g) else {
            panic!("reuse")
        };
        assert_eq!(reused, 1);
        let waker = futures_util::task::noop_waker();
        assert!(a_reuse.evicted(&waker));
        assert!(
            !b_reuse.evicted(&waker),
            "a connection out of the registry is never picked"
        );
    }

    #[test]
    fn per_ip_counts_come_back() {
        let per_ip = Arc::new(PerIp::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let one = per_ip.take(ip, 2);
        let two = per_ip.take(ip, 2);
        assert!(one.is_some() && two.is_some());
        assert!(per_ip.take(ip, 2).is_none());
        assert!(per_ip.take("192.0.2.2".parse().unwrap(), 2).is_some());
        drop(one);
        assert!(per_ip.take(ip, 2).is_some());
    }
}
