//! A bounded map of what was used recently: two generations, the older dropped whole when the
//! newer fills up, so an entry used at least once per generation stays and memory stays below
//! `capacity` entries without a list to keep in order.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

pub(crate) struct Recent<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
    /// Entries per generation.
    generation: usize,
}

impl<K: Hash + Eq, V: Clone> Recent<K, V> {
    /// Holds at most `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
            generation: (capacity / 2).max(1),
        }
    }

    pub(crate) fn get<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(value) = self.current.get(key) {
            return Some(value.clone());
        }
        let (key, value) = self.previous.remove_entry(key)?;
        self.insert(key, value.clone());
        Some(value)
    }

    /// Sets `key` to `value`, whatever it was.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.previous.remove(&key);
        if self.current.len() >= self.generation && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }

    /// Sets `key` to `value` unless it is already known: the first value stays.
    pub(crate) fn insert_new(&mut self, key: K, value: V) {
        if self.get(key.borrow()).is_none() {
            self.insert(key, value);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_its_capacity_and_keeps_what_is_used() {
        let mut recent = Recent::new(4);
        recent.insert(0, "zero");
        for i in 1..100 {
            // Used once per generation, 0 is never dropped.
            assert_eq!(recent.get(&0), Some("zero"), "after {i} inserts");
            recent.insert(i, "other");
            assert!(recent.len() <= 4, "{} entries", recent.len());
        }
        assert_eq!(recent.get(&1), None, "dropped long ago");
        assert_eq!(recent.get(&99), Some("other"));
    }

    #[test]
    fn the_first_value_stays_with_insert_new_and_insert_replaces_it() {
        let mut recent = Recent::new(4);
        recent.insert_new("a", 1);
        recent.insert_new("a", 2);
        assert_eq!(recent.get(&"a"), Some(1));
        recent.insert("a", 3);
        assert_eq!(recent.get(&"a"), Some(3));
        recent.clear();
        assert_eq!(recent.get(&"a"), None);
    }
}
