//! The key-value store behind the `kv` import: one per WasmFilter, in memory, with TTLs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_KEYS: usize = 65_536;
const MAX_KEY: usize = 256;
const MAX_VALUE: usize = 64 << 10;

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// A short critical section per call; filters that use `kv` accept that cost, others
/// never touch the lock.
#[derive(Default)]
pub struct Kv {
    map: Mutex<HashMap<String, Entry>>,
}

fn expiry(ttl_ms: Option<u64>, now: Instant) -> Option<Instant> {
    ttl_ms.map(|ms| now + Duration::from_millis(ms))
}

impl Kv {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.lock()
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }

    /// Makes room for one more key: drop expired entries first; false if still full.
    fn room(map: &mut HashMap<String, Entry>, key: &str, now: Instant) -> bool {
        if map.len() < MAX_KEYS || map.contains_key(key) {
            return true;
        }
        map.retain(|_, e| e.live(now));
        map.len() < MAX_KEYS
    }

    pub fn set(&self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> bool {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return false;
        }
        let now = Instant::now();
        let mut map = self.lock();
        if !Self::room(&mut map, &key, now) {
            return false;
        }
        map.insert(
            key,
            Entry {
                value,
                expires: expiry(ttl_ms, now),
            },
        );
        true
    }

    pub fn increment(&self, key: String, delta: i64, ttl_ms: Option<u64>) -> i64 {
        if key.len() > MAX_KEY {
            return 0;
        }
        let now = Instant::now();
        let mut map = self.lock();
        let current = map.get(&key).filter(|e| e.live(now)).map(|e| {
            let mut b = [0u8; 8];
            if e.value.len() == 8 {
                b.copy_from_slice(&e.value);
            }
            (i64::from_le_bytes(b), e.expires)
        });
        let (value, expires) = match current {
            Some((v, exp)) => (v.saturating_add(delta), exp),
            None => {
                if !Self::room(&mut map, &key, now) {
                    return 0;
                }
                (delta, expiry(ttl_ms, now))
            }
        };
        map.insert(
            key,
            Entry {
                value: value.to_le_bytes().to_vec(),
                expires,
            },
        );
        value
    }

    pub fn delete(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increment_creates_with_ttl_and_keeps_the_window() {
        let kv = Kv::default();
        assert_eq!(kv.increment("k".into(), 1, Some(50)), 1);
        assert_eq!(kv.increment("k".into(), 2, Some(10_000)), 3);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            kv.increment("k".into(), 1, None),
            1,
            "expired entries start again from 0"
        );
        assert!(kv.set("v".into(), b"x".to_vec(), None));
        assert_eq!(kv.get("v"), Some(b"x".to_vec()));
        assert!(!kv.set("big".into(), vec![0; MAX_VALUE + 1], None));
    }
}
