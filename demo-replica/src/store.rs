//! The in-memory key/value store behind `/kv/{key}`.

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::RwLock;

/// A thread-safe map from keys to opaque byte values.
#[derive(Debug, Default)]
pub struct Store {
    entries: RwLock<HashMap<String, Bytes>>,
}

impl Store {
    /// Stores `value` under `key`; returns `true` when the key did not exist before.
    pub fn put(&self, key: &str, value: Bytes) -> bool {
        self.entries.write().insert(key.to_owned(), value).is_none()
    }

    /// Returns the value stored under `key`, if any. `Bytes` clones are cheap reference bumps.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.entries.read().get(key).cloned()
    }

    /// Removes `key`; returns `true` when it existed.
    pub fn delete(&self, key: &str) -> bool {
        self.entries.write().remove(key).is_some()
    }

    /// Number of stored keys.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_replace_delete() {
        let s = Store::default();
        assert!(s.is_empty());
        assert!(s.put("a", Bytes::from_static(b"1")));
        assert!(!s.put("a", Bytes::from_static(b"2")));
        assert_eq!(s.get("a").as_deref(), Some(&b"2"[..]));
        assert_eq!(s.len(), 1);
        assert!(s.delete("a"));
        assert!(!s.delete("a"));
        assert_eq!(s.get("a"), None);
    }
}
