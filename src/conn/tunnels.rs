//! The open tunnels of a process, so that when it has to close many at once (shutdown, the end of an upgrade's
//! linger) it closes them one at a time over `close_spread`, and the fleet sees a trickle of reconnects, not a
//! burst. A tunnel costs one map entry here; nothing waits inside the tunnel itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use tokio::task::AbortHandle;

use super::CloseAt;
use crate::sync::lock;

/// Every open tunnel's task, by key.
#[derive(Default)]
pub struct Tunnels {
    open: Mutex<HashMap<u64, AbortHandle>>,
    next: AtomicU64,
}

impl Tunnels {
    /// A key for a tunnel about to start.
    pub fn reserve(&self) -> u64 {
        self.next.fetch_add(1, Relaxed)
    }

    /// Records the task of the tunnel `key` (unless it has ended already).
    pub fn insert(&self, key: u64, task: AbortHandle) {
        let mut open = lock(&self.open);
        if !task.is_finished() {
            open.insert(key, task);
        }
    }

    /// The tunnel `key` ended.
    pub fn remove(&self, key: u64) {
        lock(&self.open).remove(&key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.open).len()
    }

    /// Closes every tunnel open when `at.from` comes, one after another, evenly over `at.spread`.
    pub async fn close_paced(&self, at: CloseAt) {
        tokio::time::sleep_until(at.from).await;
        let tasks: Vec<AbortHandle> = lock(&self.open).drain().map(|(_, t)| t).collect();
        let n = tasks.len() as u32;
        for (i, task) in (0u32..).zip(tasks) {
            let moment = crate::deadline::after(at.from, at.spread / n.max(1) * i);
            tokio::time::sleep_until(moment).await;
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn tunnels_close_one_by_one_over_the_spread() {
        let tunnels = std::sync::Arc::new(Tunnels::default());
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let key = tunnels.reserve();
            let task = tokio::spawn(std::future::pending::<()>());
            tunnels.insert(key, task.abort_handle());
            tasks.push(task);
        }
        let start = tokio::time::Instant::now();
        let at = CloseAt {
            from: start + Duration::from_secs(1),
            spread: Duration::from_secs(4),
        };
        let closer = tokio::spawn({
            let t = tunnels.clone();
            async move { t.close_paced(at).await }
        });
        let waits: Vec<_> = tasks
            .into_iter()
            .map(|task| {
                tokio::spawn(async move {
                    assert!(task.await.unwrap_err().is_cancelled());
                    start.elapsed().as_secs()
                })
            })
            .collect();
        let mut ended = Vec::new();
        for w in waits {
            ended.push(w.await.unwrap());
        }
        closer.await.unwrap();
        ended.sort();
        assert_eq!(ended, vec![1, 2, 3, 4]);
        assert_eq!(tunnels.len(), 0);
    }
}
