//! Memory and speed of the sticky sid table.
//!
//! Inserts N sessions (default 1,000,000; `sticky_mem N`) with Engine.IO-like 20-character sids and
//! prints the resident-set growth per session (from /proc/self/statm), then times lookups and a
//! full purge pass. Run it in release: `cargo run --release --example sticky_mem -- 1000000` (declared as an example in Cargo.toml).

use std::sync::Arc;
use std::time::{Duration, Instant};

use limpet::SessionTable;

const SID_LEN: usize = 20;
const SID_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const SERVERS: u32 = 16;

fn main() {
    let sessions: usize = match std::env::args().nth(1).map(|arg| arg.parse()) {
        None => 1_000_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: sticky_mem [SESSIONS]");
            std::process::exit(2);
        }
    };
    let table = SessionTable::new(
        Duration::from_secs(90),
        sessions.saturating_mul(2),
        Arc::new(|_, _| {}),
    );
    let mut sids = SidGen(0x9E37_79B9_7F4A_7C15);

    let before = rss_bytes();
    let start = Instant::now();
    for i in 0..sessions {
        table.learn(sids.next().as_str(), i as u32 % SERVERS);
    }
    let learn_time = start.elapsed();
    let growth = rss_bytes().saturating_sub(before);

    let mut again = SidGen(0x9E37_79B9_7F4A_7C15);
    let start = Instant::now();
    let hits = (0..sessions)
        .filter(|_| table.lookup(again.next().as_str()).is_some())
        .count();
    let lookup_time = start.elapsed();
    let start = Instant::now();
    let purged = table.purge_expired();
    let purge_time = start.elapsed();

    println!("sessions:       {}", table.len());
    println!("rss growth:     {growth} bytes");
    println!(
        "per session:    {:.1} bytes",
        growth as f64 / sessions as f64
    );
    println!(
        "learn:          {:.0} ns each",
        per_op(learn_time, sessions)
    );
    println!(
        "lookup:         {:.0} ns each ({hits} hits)",
        per_op(lookup_time, sessions)
    );
    println!(
        "purge pass:     {:.2} ms ({purged} dropped)",
        purge_time.as_secs_f64() * 1e3
    );
}

fn per_op(elapsed: Duration, ops: usize) -> f64 {
    elapsed.as_secs_f64() * 1e9 / ops as f64
}

/// Deterministic base64url sids like Engine.IO's default `generateId` (xorshift64*).
struct SidGen(u64);

impl SidGen {
    fn next(&mut self) -> Sid {
        let mut sid = [0u8; SID_LEN];
        for chunk in sid.chunks_mut(10) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let mut bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
            for byte in chunk {
                *byte = SID_ALPHABET[(bits & 63) as usize];
                bits >>= 6;
            }
        }
        Sid(sid)
    }
}

struct Sid([u8; SID_LEN]);

impl Sid {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Resident set size: statm's second field (pages) times the kernel page size.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

fn page_size() -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    smaps
        .lines()
        .find_map(|line| line.strip_prefix("KernelPageSize:"))
        .and_then(|kb| {
            kb.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .map_or(4096, |kb| kb * 1024)
}
