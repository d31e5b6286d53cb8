//! The open streams of an HTTP/2 client connection, so the connection can close once it has carried none for
//! its idle timeout. A stream is open from its request until its response body ends, and a tunnel it became
//! counts until the tunnel ends.

use std::sync::atomic::{AtomicUsize, Ordering::AcqRel, Ordering::Acquire};
use std::sync::Arc;

use tokio::sync::Notify;

/// The count of open streams and a wake-up for the connection's idle watch.
#[derive(Default)]
pub struct Streams {
    open: AtomicUsize,
    changed: Notify,
}

impl Streams {
    /// Counts a stream open until the guard is dropped.
    pub fn open(self: &Arc<Streams>) -> StreamGuard {
        self.open.fetch_add(1, AcqRel);
        self.changed.notify_one();
        StreamGuard(self.clone())
    }

    /// Streams open now.
    pub fn count(&self) -> usize {
        self.open.load(Acquire)
    }

    /// Resolves after the next change of the count (or at once, when one happened since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// One open stream.
pub struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, AcqRel);
        self.0.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_and_wakes() {
        let streams = Arc::new(Streams::default());
        let a = streams.open();
        let b = streams.open();
        assert_eq!(streams.count(), 2);
        streams.changed().await;
        drop(a);
        assert_eq!(streams.count(), 1);
        // The drop's wake-up is kept for the next wait.
        tokio::time::timeout(std::time::Duration::from_secs(5), streams.changed())
            .await
            .expect("a drop wakes the watch");
        drop(b);
        assert_eq!(streams.count(), 0);
    }
}
