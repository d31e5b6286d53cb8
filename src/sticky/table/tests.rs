use super::*;
use std::time::Duration;
use tokio::time::advance;

const TTL: Duration = Duration::from_secs(90);

/// A table plus the running sum of its on_count deltas per server.
fn table(
    shards: usize,
    ttl: Duration,
    max: usize,
) -> (SessionTable, Arc<Mutex<BTreeMap<ServerId, i64>>>) {
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let sink = Arc::clone(&counts);
    let on_count: CountFn = Arc::new(move |server, delta| {
        *sink.lock().unwrap().entry(server).or_insert(0) += delta;
    });
    (
        SessionTable::with_shards(shards, ttl, max, on_count),
        counts,
    )
}

/// Entries per server (GONE included), read from the shards themselves.
fn census(table: &SessionTable) -> BTreeMap<ServerId, i64> {
    let mut out = BTreeMap::new();
    for shard in table.shards.iter() {
        for slot in lock(shard).values() {
            *out.entry(slot.server).or_insert(0) += 1;
        }
    }
    out
}

/// The reported counts are the census of live entries; len counts GONE ones too.
fn assert_counts_match(table: &SessionTable, counts: &Mutex<BTreeMap<ServerId, i64>>) {
    let mut reported = counts.lock().unwrap().clone();
    reported.retain(|_, n| *n != 0);
    let mut census = census(table);
    assert_eq!(table.len() as i64, census.values().sum::<i64>());
    census.remove(&GONE);
    assert_eq!(reported, census);
}

#[tokio::test(start_paused = true)]
async fn learn_lookup_forget() {
    let (t, counts) = table(SHARDS, TTL, 1000);
    assert!(t.is_empty());
    t.learn("a", 1);
    t.learn("b", 2);
    assert_eq!(
        (t.lookup("a"), t.lookup("b"), t.lookup("c")),
        (Some(1), Some(2), None)
    );
    t.learn("a", 3);
    assert_eq!(t.lookup("a"), Some(3));
    assert_eq!(t.len(), 2);
    assert_counts_match(&t, &counts);
    assert_eq!(t.forget("a"), Some(3));
    assert_eq!((t.forget("a"), t.lookup("a"), t.len()), (None, None, 1));
    assert_counts_match(&t, &counts);
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_ttl_without_traffic() {
    let (t, counts) = table(SHARDS, TTL, 1000);
    t.learn("a", 1);
    t.learn("b", 1);
    advance(TTL).await;
    assert_eq!(t.lookup("a"), Some(1));
    advance(Duration::from_millis(500)).await;
    assert_eq!(t.lookup("b"), None, "b is past its ttl");
    assert_eq!(t.len(), 1, "the expired lookup dropped b");
    assert_eq!(t.purge_expired(), 0);
    advance(TTL + Duration::from_millis(500)).await;
    assert_eq!(t.len(), 1);
    assert_eq!(t.purge_expired(), 1);
    assert!(t.is_empty());
    assert_counts_match(&t, &counts);
}

#[tokio::test(start_paused = true)]
async fn lookups_refresh_entries() {
    let (t, _) = table(SHARDS, TTL, 1000);
    t.learn("a", 1);
    for _ in 0..10 {
        advance(TTL / 2).await;
        assert_eq!(t.lookup("a"), Some(1));
    }
    assert_eq!(t.purge_expired(), 0);
    advance(TTL + Duration::from_secs(1)).await;
    assert_eq!(t.lookup("a"), None);
}

#[tokio::test(start_paused = true)]
async fn expired_entries_are_absent_before_the_purge() {
    let (t, counts) = table(SHARDS, TTL, 1000);
    t.learn("a", 1);
    advance(TTL * 2).await;
    assert_eq!(t.forget("a"), None);
    t.learn("b", 1);
    advance(TTL * 2).await;
    t.learn("b", 2);
    assert_eq!(t.lookup("b"), Some(2), "relearning revives an expired sid");
    assert_counts_match(&t, &counts);
}

#[tokio::test(start_paused = true)]
async fn full_table_evicts_least_recently_seen_first() {
    let (t, counts) = table(1, TTL, 16);
    for i in 0..16 {
        t.learn(&format!("s{i}"), i % 3);
        advance(Duration::from_secs(1)).await;
    }
    assert_eq!(t.lookup("s0"), Some(0), "s0 becomes the newest");
    t.learn("new", 7);
    // 16/8 = 2 evicted: the oldest apart from s0.
    assert_eq!(
        (t.lookup("s0"), t.lookup("s1"), t.lookup("s2")),
        (Some(0), None, None)
    );
    assert_eq!(
        (t.lookup("s3"), t.lookup("new"), t.len()),
        (Some(0), Some(7), 15)
    );
    assert_counts_match(&t, &counts);
}

#[tokio::test(start_paused = true)]
async fn eviction_within_one_tick_keeps_the_bound_and_the_newcomer() {
    let (t, counts) = table(1, TTL, 8);
    for i in 0..100 {
        t.learn(&format!("s{i}"), 1);
        assert!(t.len() <= 8);
        assert_eq!(t.lookup(&format!("s{i}")), Some(1));
    }
    assert_counts_match(&t, &counts);
}

#[tokio::test(start_paused = true)]
async fn sharded_bound_and_lowered_limits() {
    let (t, counts) = table(SHARDS, TTL, 6400);
    for i in 0..20_000 {
        t.learn(&format!("sid-{i}"), i % 5);
    }
    assert!(t.len() <= 6400 && t.len() > 5000, "len {}", t.len());
    t.set_limits(TTL, 640);
    assert!(t.purge_expired() > 0);
    assert!(t.len() <= 640, "len {}", t.len());
    assert_counts_match(&t, &counts);
    t.set_limits(Duration::from_secs(1), 640);
    advance(Duration::from_secs(2)).await;
    t.purge_expired();
    assert!(t.is_empty());
    assert!(
        t.shards.iter().all(|s| lock(s).capacity() <= SHRINK_FLOOR),
        "sparse shards shrink"
    );
    assert_counts_match(&t, &counts);
}

#[tokio::test(start_paused = true)]
async fn forget_and_retain_servers() {
    let (t, counts) = table(SHARDS, TTL, 10_000);
    for i in 0..300 {
        t.learn(&format!("sid-{i}"), i % 3);
    }
    assert_eq!(t.forget_server(1), 100);
    assert_eq!(t.forget_server(1), 0);
    assert_eq!(t.lookup("sid-1"), Some(GONE));
    assert_eq!(t.lookup("sid-2"), Some(2));
    assert_counts_match(&t, &counts);
    assert_eq!(t.retain_servers(|s| s == 2), 100);
    assert_eq!(t.len(), 300);
    assert_counts_match(&t, &counts);
    assert_eq!(t.forget("sid-1"), Some(GONE));
    assert_eq!(t.lookup("sid-1"), None);
    t.learn("sid-4", 3);
    assert_eq!(t.lookup("sid-4"), Some(3));
    assert_counts_match(&t, &counts);
    // Gone entries expire like any other.
    advance(TTL + Duration::from_secs(1)).await;
    t.learn("fresh", 2);
    assert_eq!(t.purge_expired(), 299);
    assert_eq!(t.len(), 1);
    assert_counts_match(&t, &counts);
}

#[test]
fn concurrent_learn_and_lookup() {
    let (t, counts) = table(SHARDS, TTL, 1_000_000);
    std::thread::scope(|scope| {
        for thread in 0..4u32 {
            let t = &t;
            scope.spawn(move || {
                for i in 0..5000u32 {
                    let sid = format!("{thread}-{i}");
                    t.learn(&sid, thread);
                    assert_eq!(t.lookup(&sid), Some(thread));
                    t.learn(&format!("shared-{}", i % 100), thread);
                    let _ = t.lookup(&format!("{}-{i}", (thread + 1) % 4));
                    if i % 2 == 0 {
                        assert_eq!(t.forget(&sid), Some(thread));
                    }
                }
            });
        }
    });
    assert_eq!(t.len(), 4 * 2500 + 100);
    assert_counts_match(&t, &counts);
}

#[test]
fn sid_keys_are_stable() {
    assert_eq!(
        sid_key("lv_VI97HAXpY6yYWAAAC"),
        sid_key("lv_VI97HAXpY6yYWAAAC")
    );
    assert_ne!(sid_key("a"), sid_key("b"));
    assert_eq!(ticks(Duration::from_millis(1)), 1);
    assert_eq!(ticks(Duration::from_secs(90)), 360);
    assert_eq!(keep_after_eviction(1), 0);
    assert_eq!(keep_after_eviction(15_625), 13_672);
}

#[tokio::test(start_paused = true)]
async fn the_store_refresh_is_due_once_per_quarter_ttl_and_after_an_outage() {
    let (t, _) = table(SHARDS, TTL, 1000);
    t.learn("s", 1);
    assert_eq!(
        t.lookup_stored("s"),
        Some((1, false)),
        "just learned counts as written"
    );
    advance(TTL / 4 - Duration::from_millis(500)).await;
    assert_eq!(t.lookup_stored("s"), Some((1, false)));
    advance(Duration::from_millis(500)).await;
    assert_eq!(t.lookup_stored("s"), Some((1, true)));
    assert_eq!(
        t.lookup_stored("s"),
        Some((1, false)),
        "once, then not for another quarter"
    );
    t.mark_unstored();
    assert_eq!(
        t.lookup_stored("s"),
        Some((1, true)),
        "the store came back: write it again"
    );
    assert_eq!(t.lookup_stored("s"), Some((1, false)));
    assert_eq!(t.lookup_stored("other"), None);
}
