//! A store in memory only, for simulated appliances and tests: nothing survives the
//! process, so it is never what an appliance or the authority runs on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Store, Write};
use crate::Result;

/// A key-value map behind a lock; cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    map: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl MemoryStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // Every operation leaves the map whole, so a panic elsewhere cannot corrupt it.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn write_all(map: &mut BTreeMap<String, Vec<u8>>, batch: Vec<Write>) {
    for w in batch {
        match w {
            Write::Put(k, v) => {
                map.insert(k, v);
            }
            Write::Delete(k) => {
                map.remove(&k);
            }
        }
    }
}

impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.map().get(key).cloned())
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.map().insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    async fn insert_new(&self, key: &str, value: &[u8]) -> Result<bool> {
        let mut map = self.map();
        if map.contains_key(key) {
            return Ok(false);
        }
        map.insert(key.to_owned(), value.to_vec());
        Ok(true)
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .map()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn apply(&self, batch: Vec<Write>) -> Result<()> {
        write_all(&mut self.map(), batch);
        Ok(())
    }

    async fn apply_unless_present(&self, guard: &str, batch: Vec<Write>) -> Result<bool> {
        let mut map = self.map();
        if map.contains_key(guard) {
            return Ok(false);
        }
        write_all(&mut map, batch);
        Ok(true)
    }
}
