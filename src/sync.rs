//! Small helpers over `std::sync`, shared by modules that must not depend on each
//! other.

use std::sync::{Mutex, MutexGuard};

/// A poisoned mutex only means a panic elsewhere; the data behind it is still whole.
pub(crate) fn lock_unpoisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
