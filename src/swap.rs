//! A value that readers take a snapshot of and a reload replaces: the API keys, the JWT
//! verifier, the fetched JWKS and the TLS certificate.
//!
//! `arc-swap` is not in the tree, so this is a `std::sync::RwLock<Arc<T>>` held only long
//! enough to clone the `Arc` (a reader never holds it across an `.await` or any real work), and
//! a store only swaps the pointer: the old value is dropped outside the lock, by whoever holds
//! the last snapshot.

use std::sync::{Arc, RwLock};

pub struct Swap<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Swap<T> {
    pub fn new(value: T) -> Swap<T> {
        Swap {
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The current value; a later [`store`](Swap::store) does not change it.
    pub fn load(&self) -> Arc<T> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn store(&self, value: T) {
        let value = Arc::new(value);
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            value,
        );
        drop(old);
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Swap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.load().fmt(f)
    }
}
