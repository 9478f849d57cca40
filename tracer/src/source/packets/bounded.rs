//! A map of fixed capacity that forgets its oldest entry to make room: the
//! tables keyed by what the network sends (handshakes in progress, recently
//! closed flows), whose size a flood must not be able to grow.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

/// Tuples come off the wire: a per-process random seed keeps a crafted
/// flood from colliding in the hash (FxHash is unseeded), at FxHash's speed.
pub type TupleHasher = foldhash::fast::RandomState;

/// Insertion-ordered map of at most `capacity` entries.
pub struct Bounded<K, V> {
    /// Value and the stamp of its insertion.
    map: HashMap<K, (u64, V), TupleHasher>,
    /// Keys by insertion; an entry whose stamp no longer matches the map's
    /// was removed or re-inserted since and is skipped.
    order: VecDeque<(K, u64)>,
    capacity: usize,
    stamp: u64,
}

impl<K: Hash + Eq + Copy, V> Bounded<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            stamp: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key).map(|(_, value)| value)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|(_, value)| value)
    }

    /// Inserts or replaces `key` as the newest entry; true when the oldest
    /// entry was forgotten to make room.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        let mut evicted = false;
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            while let Some((old, stamp)) = self.order.pop_front() {
                if self.map.get(&old).is_some_and(|(s, _)| *s == stamp) {
                    self.map.remove(&old);
                    evicted = true;
                    break;
                }
            }
        }
        self.stamp += 1;
        self.map.insert(key, (self.stamp, value));
        self.order.push_back((key, self.stamp));
        // Removed and replaced entries leave stale keys in `order`; drop
        // them once they outnumber the live ones, so memory stays bounded.
        if self.order.len() > 2 * self.capacity + 64 {
            let map = &self.map;
            self.order
                .retain(|(k, stamp)| map.get(k).is_some_and(|(s, _)| s == stamp));
        }
        evicted
    }

    /// Keeps the entries `keep` accepts; returns how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|_, (_, value)| keep(value));
        before - self.map.len()
    }

    /// Slots `order` holds, live or stale (for the bound's test).
    #[cfg(test)]
    pub fn order_len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_goes_first_and_memory_stays_bounded() {
        let mut table = Bounded::new(3);
        assert!(!table.insert(1, 'a'));
        assert!(!table.insert(2, 'b'));
        assert!(!table.insert(3, 'c'));
        assert!(!table.insert(1, 'A'), "a replacement evicts nothing");
        assert!(table.insert(4, 'd'));
        assert!(!table.contains(&2), "2 was the oldest");
        assert_eq!(table.get_mut(&1), Some(&mut 'A'));
        assert_eq!(table.remove(&3), Some('c'));
        assert!(!table.insert(5, 'e'), "room left by the removal");
        for i in 0..10_000 {
            table.insert(100 + i % 2, 'x');
            table.remove(&(100 + i % 2));
        }
        assert!(table.len() <= 3);
        assert!(table.order_len() <= 2 * 3 + 64 + 1);
    }
}
