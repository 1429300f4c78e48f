//! The synchronisation facade: every atomic and lock the cross-shard code uses comes from
//! here, so that `RUSTFLAGS="--cfg loom"` swaps in loom's model-checked versions (the tokio
//! idiom, STYLE.md 1.3). Code outside this module must not import `std::sync` primitives that
//! take part in cross-thread protocols.

#[cfg(loom)]
pub(crate) use loom::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

#[cfg(not(loom))]
pub(crate) use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

/// Locks `m`, treating poisoning as recoverable: every critical section in this crate leaves
/// the protected state consistent before anything that can panic, so a poisoned lock still
/// holds valid data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
