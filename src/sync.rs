//! Lock helpers.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking it over if a thread panicked while holding it: every mutex in limpet guards state that
/// stays consistent between statements (a queue, a map), so a panic elsewhere must not stop the proxy.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
