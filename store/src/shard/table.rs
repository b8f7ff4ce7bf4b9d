//! The shard's object table: a hash table of (key, entry) whose lookups can take a hash
//! computed earlier.
//!
//! A batch is looked up twice: once by `Shard::touch` to start every cache miss of the batch
//! together, once when each operation is applied. Taking the hash as an
//! argument lets the first pass hash each key once for both, and keeps its loop short enough
//! for the processor to have many lookups in flight.
//!
//! Keys may come from the network, so the hasher stays hashbrown's default, which is seeded at
//! random per process (colliding keys cannot be chosen in advance).

use super::Entry;
use crate::key::{Key, KeyRef};
use hashbrown::hash_table::Entry as Slot;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

/// Asks the processor to bring the cache line holding `p` closer. A hint: nothing is read,
/// and the loop issuing it does not wait for the line.
#[inline(always)]
#[allow(unsafe_code)]
pub(super) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and does not access memory in the language's sense (any
    // address is allowed); SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Where a table's control bytes are, for prefetching them (see [`Table::control`]).
#[derive(Clone, Copy, Debug)]
pub struct Control {
    base: usize,
    mask: usize,
}

#[derive(Default)]
pub(super) struct Table {
    t: HashTable<(Key, Entry)>,
    hasher: DefaultHashBuilder,
}

impl Table {
    #[inline]
    pub fn hash(&self, k: KeyRef<'_>) -> u64 {
        self.hasher.hash_one(k)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.t.len()
    }

    /// Where the control bytes are: hashbrown keeps slot `i` right below them, at
    /// `base - (i + 1) * size_of::<slot>()`, so one occupied slot's address and index give
    /// the base. Only [`Table::prefetch_control`] uses it, and a prefetch of a wrong address
    /// is harmless, so a layout change in hashbrown could cost speed, never correctness
    /// (the test `control_base_is_where_every_slot_points` would catch it). `None` when empty.
    pub fn control(&self) -> Option<Control> {
        let i = self.t.iter_buckets().next()?;
        let slot = self.t.get_bucket(i)? as *const (Key, Entry) as usize;
        Some(Control {
            base: slot + (i + 1) * std::mem::size_of::<(Key, Entry)>(),
            mask: self.t.num_buckets() - 1,
        })
    }

    /// Starts fetching the control bytes a lookup of this hash reads first (a group of 16
    /// from the hash's home position), without waiting. [`Table::touch`] reads them to find
    /// the slot, so a batch prefetches every key's control bytes before touching any.
    #[inline]
    pub fn prefetch_control(&self, c: Control, hash: u64) {
        let p = c.base.wrapping_add(hash as usize & c.mask) as *const u8;
        prefetch(p);
        prefetch(p.wrapping_add(15));
    }

    /// Brings the slot of the key with this hash into the cache, for the cache's sake only:
    /// the control bytes are read, and the first bucket whose tag matches is prefetched (both
    /// ends: a bucket may straddle two cache lines) without comparing keys. Reading the bucket
    /// instead made each lookup wait for its control bytes and then its bucket; a prefetch
    /// lets the loop go on, so the buckets of a whole batch are fetched at once.
    #[inline]
    pub fn touch(&self, hash: u64) {
        if let Some(slot) = self.t.find(hash, |_| true) {
            let first = (slot as *const (Key, Entry)).cast::<u8>();
            prefetch(first);
            prefetch(first.wrapping_add(std::mem::size_of::<(Key, Entry)>() - 1));
        }
    }

    pub fn get(&self, k: &KeyRef<'_>) -> Option<&Entry> {
        let h = self.hash(*k);
        self.t
            .find(h, |(key, _)| key.as_ref() == *k)
            .map(|(_, e)| e)
    }

    /// [`Table::get`] with `hash` = [`Table::hash`] of `k`.
    #[inline]
    pub fn get_hashed(&self, hash: u64, k: &KeyRef<'_>) -> Option<&Entry> {
        self.t
            .find(hash, |(key, _)| key.as_ref() == *k)
            .map(|(_, e)| e)
    }

    pub fn get_mut(&mut self, k: &KeyRef<'_>) -> Option<&mut Entry> {
        let h = self.hash(*k);
        self.get_mut_hashed(h, k)
    }

    /// [`Table::get_mut`] with `hash` = [`Table::hash`] of `k`.
    #[inline]
    pub fn get_mut_hashed(&mut self, hash: u64, k: &KeyRef<'_>) -> Option<&mut Entry> {
        self.t
            .find_mut(hash, |(key, _)| key.as_ref() == *k)
            .map(|(_, e)| e)
    }

    pub fn contains_key(&self, k: &KeyRef<'_>) -> bool {
        self.get(k).is_some()
    }

    /// The entry of `k`, inserted empty if absent.
    pub fn or_default(&mut self, k: &KeyRef<'_>) -> &mut Entry {
        let h = self.hash(*k);
        self.or_default_hashed(h, *k)
    }

    /// [`Table::or_default`] with `hash` = [`Table::hash`] of `k`.
    #[inline]
    pub fn or_default_hashed(&mut self, hash: u64, k: KeyRef<'_>) -> &mut Entry {
        let hasher = &self.hasher;
        let slot = self.t.entry(
            hash,
            |(key, _)| key.as_ref() == k,
            |(key, _)| hasher.hash_one(key.as_ref()),
        );
        match slot {
            Slot::Occupied(o) => &mut o.into_mut().1,
            Slot::Vacant(v) => &mut v.insert((k.to_key(), Entry::default())).into_mut().1,
        }
    }

    /// Inserts or replaces the entry of `key`.
    pub fn insert(&mut self, key: Key, e: Entry) {
        let k = key.as_ref();
        *self.or_default(&k) = e;
    }

    pub fn remove(&mut self, k: &KeyRef<'_>) -> Option<Entry> {
        let h = self.hash(*k);
        let found = self.t.find_entry(h, |(key, _)| key.as_ref() == *k).ok()?;
        Some(found.remove().0 .1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.t.iter().map(|(k, e)| (k, e))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Key, &mut Entry)> {
        self.t.iter_mut().map(|(k, e)| (&*k, e))
    }

    pub fn values(&self) -> impl Iterator<Item = &Entry> {
        self.t.iter().map(|(_, e)| e)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &mut Entry) -> bool) {
        self.t.retain(|(k, e)| keep(k, e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &[u8]) -> KeyRef<'_> {
        KeyRef {
            vertex: 1,
            object: 2,
            per_flow: false,
            sub: s,
        }
    }

    #[test]
    fn control_base_is_where_every_slot_points() {
        let mut t = Table::default();
        assert!(t.control().is_none());
        for i in 0u32..5000 {
            let s = i.to_le_bytes();
            let k = key(&s);
            let h = t.hash(k);
            t.or_default_hashed(h, k);
            if i % 997 != 0 {
                continue;
            }
            // After growing too: every occupied slot agrees on the base.
            let c = t.control().expect("not empty");
            let size = std::mem::size_of::<(Key, Entry)>();
            for b in t.t.iter_buckets() {
                let slot = t.t.get_bucket(b).unwrap() as *const (Key, Entry) as usize;
                assert_eq!(slot + (b + 1) * size, c.base, "slot {b}");
            }
            assert_eq!(c.mask + 1, t.t.num_buckets());
        }
    }

    #[test]
    fn lookups_by_hash_and_by_key_agree() {
        let mut t = Table::default();
        let subs: Vec<Vec<u8>> = (0u32..2000).map(|i| i.to_le_bytes().to_vec()).collect();
        for s in &subs {
            let k = key(s);
            let h = t.hash(k);
            t.or_default_hashed(h, k).set_owner(u32::from(s[0]) + 1);
        }
        assert_eq!(t.len(), subs.len());
        for s in &subs {
            let k = key(s);
            t.touch(t.hash(k));
            assert_eq!(t.get(&k).map(Entry::owner), Some(u32::from(s[0]) + 1));
            assert_eq!(
                t.or_default(&k).owner(),
                u32::from(s[0]) + 1,
                "found, not inserted"
            );
        }
        assert_eq!(t.len(), subs.len());
        let long = vec![9u8; 100];
        t.insert(key(&long).to_key(), Entry::default());
        assert!(t.contains_key(&key(&long)));
        assert!(t.remove(&key(&long)).is_some());
        assert!(t.remove(&key(&long)).is_none());
        let c = t.control().expect("not empty");
        t.prefetch_control(c, t.hash(key(&subs[0])));
        t.retain(|k, _| k.sub.as_slice()[0] % 2 == 0);
        assert_eq!(t.len(), subs.len() / 2);
        assert!(t.iter().all(|(k, _)| k.sub.as_slice()[0] % 2 == 0));
    }
}
