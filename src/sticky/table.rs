//! The in-memory sid → server table: sharded, expiring after a ttl without traffic, bounded in size.
//!
//! Keys are a fixed-key 64-bit SipHash of the sid, not the sid itself: an entry is 16 bytes in
//! its shard's map and the sid's length does not matter. Two live sids colliding (odds about
//! n²/2⁶⁵, ~3e-8 at a million sessions) would route one of them like the other, and that client
//! would get Engine.IO's "Session ID unknown" and open a new session.
//!
//! Time is a coarse tick (1/4 s) since the table's creation, read from `tokio::time::Instant`
//! so paused-time tests drive it.
//!
//! When a server goes down or leaves the config its entries are not dropped but turned to [`GONE`]:
//! the next request of such a session is known to be lost (limpet answers "Session ID unknown"
//! itself) instead of being mistaken for an unknown sid and sent to another server. They expire
//! like any entry and count towards `max_sessions`, but towards no server's count.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use siphasher::sip::SipHasher13;
use tokio::time::Instant;

use crate::sync::lock;

/// Index of a server; the caller decides what it names.
pub type ServerId = u32;

/// The server of a session whose server went down or left the config; never a real server's id.
pub const GONE: ServerId = ServerId::MAX;

/// Called with a server and the change in its number of entries.
pub type CountFn = Arc<dyn Fn(ServerId, i64) + Send + Sync>;

const SHARDS: usize = 64;
const TICK_MILLIS: u128 = 250;
/// SipHash keys ("limpet-sticky-sid"); fixed so every instance and restart hashes alike.
const SIP_KEYS: (u64, u64) = (0x6c69_6d70_6574_2d73, 0x7469_636b_792d_7369);
/// A sparse shard (fewer entries than capacity / this) is shrunk by the purge.
const SHRINK_RATIO: usize = 4;
/// Shards smaller than this are never shrunk.
const SHRINK_FLOOR: usize = 64;

/// Quarter-seconds since the table's creation.
type Tick = u32;

#[derive(Clone, Copy, Debug)]
struct Slot {
    server: ServerId,
    seen: Tick,
    /// When the shared store last had this entry written (learned counts as written); [`UNSTORED`] after the
    /// store came back from an outage.
    stored: Tick,
}

/// The `stored` tick of an entry the shared store may have lost: due for a refresh at its next lookup.
const UNSTORED: Tick = Tick::MAX;

/// The keys are SipHash outputs already: pass them through.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Shard = HashMap<u64, Slot, BuildHasherDefault<KeyHasher>>;

/// The sid → server table, shared by every request of every upstream that uses it.
pub struct SessionTable {
    shards: Box<[Mutex<Shard>]>,
    epoch: Instant,
    ttl: AtomicU32,
    max_sessions: AtomicUsize,
    len: AtomicUsize,
    on_count: CountFn,
    /// Where learned sessions are copied while a binary upgrade hands them over.
    mirror: arc_swap::ArcSwapOption<std::sync::mpsc::Sender<(u64, ServerId)>>,
}

impl SessionTable {
    /// `on_count(server, delta)` is called with +1 / -1 whenever an entry for `server` is added or removed (for the per-server sessions gauge).
    ///
    /// Bulk removals report one net delta per server. Calls are made outside the table's locks and
    /// may interleave across threads; per server they always sum to its number of entries.
    pub fn new(ttl: Duration, max_sessions: usize, on_count: CountFn) -> Self {
        Self::with_shards(SHARDS, ttl, max_sessions, on_count)
    }

    fn with_shards(shards: usize, ttl: Duration, max_sessions: usize, on_count: CountFn) -> Self {
        let shards = shards.next_power_of_two();
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            epoch: Instant::now(),
            ttl: AtomicU32::new(ticks(ttl)),
            max_sessions: AtomicUsize::new(max_sessions),
            len: AtomicUsize::new(0),
            on_count,
            mirror: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Inserts or overwrites the server of `sid` (moving the count), marking it seen now.
    ///
    /// A new entry in a full shard first evicts that shard's least recently seen ~1/8.
    pub fn learn(&self, sid: &str, server: ServerId) {
        let key = sid_key(sid);
        let now = self.now();
        self.insert(key, server, now, now);
        if let Some(mirror) = self.mirror.load().as_ref() {
            let _ = mirror.send((key, server));
        }
    }

    /// Every live entry, for a hand-over: (key, server, time since it was last seen). Entries of servers that
    /// went away are left out.
    pub fn export(&self) -> Vec<(u64, ServerId, Duration)> {
        let now = self.now();
        let ttl = self.ttl.load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            for (key, slot) in lock(shard).iter() {
                let idle = now.saturating_sub(slot.seen);
                if slot.server != GONE && idle <= ttl {
                    let idle = Duration::from_millis(u64::from(idle) * TICK_MILLIS as u64);
                    out.push((*key, slot.server, idle));
                }
            }
        }
        out
    }

    /// Adds an entry handed over by another process, seen `idle` ago; one the table learned itself meanwhile
    /// stays as it is.
    pub fn import(&self, key: u64, server: ServerId, idle: Duration) {
        if self.shard(key).contains_key(&key) {
            return;
        }
        let now = self.now();
        let seen = now.saturating_sub(ticks(idle));
        self.insert(key, server, seen, now);
    }

    /// From now on, sends every session learned (key, server) to `mirror` (None: stops).
    pub fn set_mirror(&self, mirror: Option<std::sync::mpsc::Sender<(u64, ServerId)>>) {
        self.mirror.store(mirror.map(Arc::new));
    }

    fn insert(&self, key: u64, server: ServerId, seen: Tick, stored: Tick) {
        let slot = Slot {
            server,
            seen,
            stored,
        };
        let mut evicted = Deltas::default();
        let previous = {
            let mut shard = self.shard(key);
            let share = self.share();
            if shard.len() >= share && !shard.contains_key(&key) {
                self.evict_oldest(&mut shard, keep_after_eviction(share), &mut evicted);
            }
            let previous = shard.insert(key, slot);
            if previous.is_none() {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
            previous
        };
        evicted.report(&self.on_count);
        match previous {
            Some(old) if old.server == server => {}
            Some(old) => {
                self.count(old.server, -1);
                self.count(server, 1);
            }
            None => self.count(server, 1),
        }
    }

    /// The server of `sid` ([`GONE`] if it went away), refreshing its last-seen time; an expired entry
    /// counts as absent (and is dropped).
    pub fn lookup(&self, sid: &str) -> Option<ServerId> {
        self.lookup_stored(sid).map(|(server, _)| server)
    }

    /// As [`lookup`](Self::lookup), and whether the shared store's copy is due for a refresh: true at most once
    /// per ttl / 4 for an entry (then counted as written).
    pub fn lookup_stored(&self, sid: &str) -> Option<(ServerId, bool)> {
        let key = sid_key(sid);
        let now = self.now();
        let ttl = self.ttl.load(Ordering::Relaxed);
        let mut shard = self.shard(key);
        let slot = shard.get_mut(&key)?;
        if !expired(slot.seen, now, ttl) {
            slot.seen = slot.seen.max(now);
            let refresh =
                slot.stored == UNSTORED || now.saturating_sub(slot.stored) >= (ttl / 4).max(1);
            if refresh {
                slot.stored = now;
            }
            return Some((slot.server, refresh));
        }
        let server = slot.server;
        shard.remove(&key);
        self.len.fetch_sub(1, Ordering::Relaxed);
        drop(shard);
        self.count(server, -1);
        None
    }

    /// Marks every entry due for a refresh of the shared store's copy (it came back from an outage, maybe empty):
    /// each live session is written again at its next lookup.
    pub fn mark_unstored(&self) {
        for shard in self.shards.iter() {
            for slot in lock(shard).values_mut() {
                slot.stored = UNSTORED;
            }
        }
    }

    /// Drops `sid`, returning its server unless the entry had expired.
    pub fn forget(&self, sid: &str) -> Option<ServerId> {
        let key = sid_key(sid);
        let now = self.now();
        let ttl = self.ttl.load(Ordering::Relaxed);
        let slot = self.shard(key).remove(&key)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        self.count(slot.server, -1);
        (!expired(slot.seen, now, ttl)).then_some(slot.server)
    }

    /// Turns every entry of `server` to [`GONE`] (it went down), returning how many.
    pub fn forget_server(&self, server: ServerId) -> usize {
        self.retain_servers(|s| s != server)
    }

    /// Turns every entry whose server `keep` rejects to [`GONE`] (for reloads), returning how many.
    pub fn retain_servers(&self, keep: impl Fn(ServerId) -> bool) -> usize {
        let mut deltas = Deltas::default();
        let mut gone = 0;
        for shard in self.shards.iter() {
            for slot in lock(shard).values_mut() {
                if slot.server != GONE && !keep(slot.server) {
                    deltas.add(slot.server, -1);
                    slot.server = GONE;
                    gone += 1;
                }
            }
        }
        deltas.report(&self.on_count);
        gone
    }

    /// Drops expired entries, trims shards over their share (after `set_limits` lowered it) and
    /// shrinks sparse shards; returns how many entries were dropped. Call it every second or so.
    pub fn purge_expired(&self) -> usize {
        let mut deltas = Deltas::default();
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let now = self.now();
            let ttl = self.ttl.load(Ordering::Relaxed);
            let mut shard = lock(shard);
            dropped +=
                self.remove_where(&mut shard, &mut deltas, |slot| expired(slot.seen, now, ttl));
            let share = self.share();
            if shard.len() > share {
                dropped += self.evict_oldest(&mut shard, share, &mut deltas);
            }
            shrink_if_sparse(&mut shard);
        }
        deltas.report(&self.on_count);
        dropped
    }

    /// Number of entries, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes the ttl (applies to existing entries too) and the bound (enforced on the next learn or purge).
    pub fn set_limits(&self, ttl: Duration, max_sessions: usize) {
        self.ttl.store(ticks(ttl), Ordering::Relaxed);
        self.max_sessions.store(max_sessions, Ordering::Relaxed);
    }

    /// Reports a change in a server's entries ([`GONE`] has no count).
    fn count(&self, server: ServerId, delta: i64) {
        if server != GONE {
            (self.on_count)(server, delta);
        }
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard> {
        let index = (key >> 32) as usize & (self.shards.len() - 1);
        lock(&self.shards[index])
    }

    fn now(&self) -> Tick {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        Tick::try_from(elapsed.as_millis() / TICK_MILLIS).unwrap_or(Tick::MAX)
    }

    /// Entries one shard may hold: max_sessions spread over the shards, rounded up.
    fn share(&self) -> usize {
        let max = self.max_sessions.load(Ordering::Relaxed);
        max.div_ceil(self.shards.len()).max(1)
    }

    /// Removes the entries `drop` selects, recording deltas; returns how many.
    fn remove_where(
        &self,
        shard: &mut Shard,
        deltas: &mut Deltas,
        mut drop: impl FnMut(&Slot) -> bool,
    ) -> usize {
        let before = shard.len();
        shard.retain(|_, slot| {
            let remove = drop(slot);
            if remove {
                deltas.add(slot.server, -1);
            }
            !remove
        });
        let removed = before - shard.len();
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Removes the least recently seen entries until `keep` remain, in one pass; returns how many.
    fn evict_oldest(&self, shard: &mut Shard, keep: usize, deltas: &mut Deltas) -> usize {
        let excess = shard.len().saturating_sub(keep);
        if excess == 0 {
            return 0;
        }
        let mut seen: Vec<Tick> = shard.values().map(|slot| slot.seen).collect();
        let cutoff = *seen.select_nth_unstable(excess - 1).1;
        let mut ties = excess - seen.iter().filter(|&&t| t < cutoff).count();
        self.remove_where(shard, deltas, |slot| {
            let tie = slot.seen == cutoff && ties > 0;
            if tie {
                ties -= 1;
            }
            slot.seen < cutoff || tie
        })
    }
}

/// Entries a full shard keeps after an eviction pass: 7/8 of its share, at least one fewer.
fn keep_after_eviction(share: usize) -> usize {
    share - (share / 8).max(1)
}

fn shrink_if_sparse(shard: &mut Shard) {
    let capacity = shard.capacity();
    if capacity > SHRINK_FLOOR && shard.len() < capacity / SHRINK_RATIO {
        shard.shrink_to(shard.len() * 2);
    }
}

fn expired(seen: Tick, now: Tick, ttl: Tick) -> bool {
    now.saturating_sub(seen) > ttl
}

/// Whole ticks in `ttl`, rounded up.
fn ticks(ttl: Duration) -> Tick {
    Tick::try_from(ttl.as_millis().div_ceil(TICK_MILLIS)).unwrap_or(Tick::MAX)
}

fn sid_key(sid: &str) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(SIP_KEYS.0, SIP_KEYS.1);
    hasher.write(sid.as_bytes());
    hasher.finish()
}

/// Net entry-count changes per server, gathered under a lock and reported after it.
#[derive(Default)]
struct Deltas(BTreeMap<ServerId, i64>);

impl Deltas {
    fn add(&mut self, server: ServerId, delta: i64) {
        if server != GONE {
            *self.0.entry(server).or_default() += delta;
        }
    }

    fn report(self, on_count: &CountFn) {
        for (server, delta) in self.0 {
            if delta != 0 {
                on_count(server, delta);
            }
        }
    }
}

#[cfg(test)]
mod tests;
