//! A map keyed by connection id that costs one pointer while it is empty: a topic's subscribers.
//!
//! A node with a million topics has subscribers on few of them, so an empty map is what matters:
//! a `HashMap` with a `RandomState` is 48 bytes on every topic, this is 8 (the table is boxed and
//! dropped with its last entry). Ids are handed out by the hub, one after the other, never chosen
//! by a client, so they need no keyed hash against flooding: a multiply spreads them over the
//! table, and the hasher has no state to store.
//!
//! The table carries one count its owner keeps about the entries (a topic: how many subscribers
//! have an exact subscription), in the box with it, so that the count costs nothing while the
//! map is empty, where it is zero anyway.

use std::collections::hash_map::{self, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes one `u64` id by a multiply (Fibonacci hashing): consecutive ids differ in the high
/// bits the table uses for its control bytes, and in the low bits that pick the bucket.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; this keeps any other key correct, if slower.
        bytes.iter().for_each(|&b| self.write_u64(b.into()));
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Table<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Invariant: `None` exactly when there is no entry.
pub struct IdMap<V>(Option<Box<Inner<V>>>);

struct Inner<V> {
    table: Table<V>,
    tally: u32,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap(None)
    }
}

impl<V> IdMap<V> {
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |t| t.table.len())
    }

    /// The owner's count (see the module's header); zero while the map is empty.
    pub fn tally(&self) -> u32 {
        self.0.as_ref().map_or(0, |t| t.tally)
    }

    /// Changes the owner's count by `by`, if the map has entries (an empty map's is zero and
    /// goes with its last entry).
    pub fn add_tally(&mut self, by: i32) {
        if let Some(inner) = self.0.as_mut() {
            inner.tally = inner.tally.saturating_add_signed(by);
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().flat_map(|t| t.table.values())
    }

    /// The values as the table's own iterator, `None` when empty: for the publication path,
    /// where `values`' flattening cost 3 instructions per delivery (callgrind).
    pub fn non_empty_values_mut(&mut self) -> Option<hash_map::ValuesMut<'_, u64, V>> {
        self.0.as_mut().map(|t| t.table.values_mut())
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut V> {
        self.0.as_mut()?.table.get_mut(&id)
    }

    /// The entry of `id`, made by `new` when missing.
    pub fn get_or_insert_with(&mut self, id: u64, new: impl FnOnce() -> V) -> &mut V {
        let inner = self.0.get_or_insert_with(|| {
            Box::new(Inner {
                table: Table::default(),
                tally: 0,
            })
        });
        match inner.table.entry(id) {
            hash_map::Entry::Occupied(e) => e.into_mut(),
            hash_map::Entry::Vacant(e) => e.insert(new()),
        }
    }

    pub fn remove(&mut self, id: u64) -> Option<V> {
        let inner = self.0.as_mut()?;
        let removed = inner.table.remove(&id);
        if inner.table.is_empty() {
            self.0 = None;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_nothing_while_empty() {
        assert_eq!(std::mem::size_of::<IdMap<[u64; 4]>>(), 8);
        let mut map = IdMap::default();
        assert!(map.is_empty() && map.non_empty_values_mut().is_none());
        *map.get_or_insert_with(7, || 1) += 1;
        *map.get_or_insert_with(7, || 100) += 1;
        map.get_or_insert_with(9, || 5);
        assert_eq!((map.len(), map.get_mut(7).copied()), (2, Some(3)));
        let mut values: Vec<i32> = map.values().copied().collect();
        values.sort();
        assert_eq!(values, vec![3, 5]);
        assert_eq!(map.non_empty_values_mut().map(|v| v.count()), Some(2));
        assert_eq!(map.remove(7), Some(3));
        assert!(!map.is_empty());
        assert_eq!(map.remove(9), Some(5));
        assert!(
            map.is_empty() && map.0.is_none(),
            "the table goes with its last entry"
        );
        assert_eq!(map.remove(9), None);
        map.add_tally(1);
        assert_eq!(map.tally(), 0, "an empty map counts nothing");
        map.get_or_insert_with(1, || 1);
        map.add_tally(2);
        map.add_tally(-1);
        assert_eq!(map.tally(), 1);
        map.remove(1);
        map.get_or_insert_with(2, || 1);
        assert_eq!(map.tally(), 0, "the count went with the last entry");
    }

    #[test]
    fn consecutive_ids_spread_over_the_table() {
        let hash = |id: u64| {
            let mut h = IdHasher::default();
            h.write_u64(id);
            h.finish()
        };
        // The control byte of hashbrown is the top 7 bits: consecutive ids must not share it.
        let tops: std::collections::HashSet<u64> = (1..=64).map(|id| hash(id) >> 57).collect();
        assert!(tops.len() > 32, "only {} distinct control bytes", tops.len());
    }
}
