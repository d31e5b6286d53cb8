//! The process's millisecond clock, for state kept in atomics (passive marks, warning limits, store back-off).

use std::sync::OnceLock;

use tokio::time::Instant;

/// Milliseconds since the process's time base (tokio's clock, so paused-time tests work); never 0.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(epoch).as_millis() as u64 + 1
}
