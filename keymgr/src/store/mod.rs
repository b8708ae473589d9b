//! Durable state behind one trait: redb (embedded, the default) and etcd (clustered).
//!
//! The trait is a small key-value interface with an atomic batch and an atomic
//! insert-if-absent, which is all the authority and the agents need: single-use tokens are an
//! insert-if-absent, and every state change that must not be half-applied is one batch.

mod etcd;
pub mod loopback;
mod memory;
mod redb_store;
mod replica;

use std::future::Future;

pub use etcd::{Candidate, Election, EtcdStore, Leader, Leadership};
pub use memory::MemoryStore;
pub use redb_store::RedbStore;
pub use replica::ReplicaStore;

use crate::Result;

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Sets `key` to the value.
    Put(String, Vec<u8>),
    /// Removes `key` (no error when absent).
    Delete(String),
}

/// A durable key-value store. Every method returns only once its effect is durable.
pub trait Store: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// Sets `key` to `value`.
    fn put(&self, key: &str, value: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// Sets `key` only if it holds nothing; returns whether it was inserted.
    fn insert_new(&self, key: &str, value: &[u8]) -> impl Future<Output = Result<bool>> + Send;
    /// Every key starting with `prefix` with its value, in key order.
    fn scan(&self, prefix: &str) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>>> + Send;
    /// Applies every write or none.
    fn apply(&self, batch: Vec<Write>) -> impl Future<Output = Result<()>> + Send;
    /// Applies every write of `batch` if `guard` holds nothing, else none; one atomic
    /// transaction either way. Returns whether it applied.
    fn apply_unless_present(
        &self,
        guard: &str,
        batch: Vec<Write>,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// The store an authority was configured with.
#[derive(Debug)]
pub enum AnyStore {
    /// An embedded redb file.
    Redb(RedbStore),
    /// An etcd cluster.
    Etcd(Box<EtcdStore>),
    /// Memory only (simulated appliances, tests): not durable.
    Memory(MemoryStore),
    /// An etcd cluster shared by replicas, written only by the elected leader (fenced).
    Replica(Box<ReplicaStore>),
}

impl Store for AnyStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Redb(s) => s.get(key).await,
            Self::Etcd(s) => s.get(key).await,
            Self::Memory(s) => s.get(key).await,
            Self::Replica(s) => s.get(key).await,
        }
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        match self {
            Self::Redb(s) => s.put(key, value).await,
            Self::Etcd(s) => s.put(key, value).await,
            Self::Memory(s) => s.put(key, value).await,
            Self::Replica(s) => s.put(key, value).await,
        }
    }

    async fn insert_new(&self, key: &str, value: &[u8]) -> Result<bool> {
        match self {
            Self::Redb(s) => s.insert_new(key, value).await,
            Self::Etcd(s) => s.insert_new(key, value).await,
            Self::Memory(s) => s.insert_new(key, value).await,
            Self::Replica(s) => s.insert_new(key, value).await,
        }
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        match self {
            Self::Redb(s) => s.scan(prefix).await,
            Self::Etcd(s) => s.scan(prefix).await,
            Self::Memory(s) => s.scan(prefix).await,
            Self::Replica(s) => s.scan(prefix).await,
        }
    }

    async fn apply(&self, batch: Vec<Write>) -> Result<()> {
        match self {
            Self::Redb(s) => s.apply(batch).await,
            Self::Etcd(s) => s.apply(batch).await,
            Self::Memory(s) => s.apply(batch).await,
            Self::Replica(s) => s.apply(batch).await,
        }
    }

    async fn apply_unless_present(&self, guard: &str, batch: Vec<Write>) -> Result<bool> {
        match self {
            Self::Redb(s) => s.apply_unless_present(guard, batch).await,
            Self::Etcd(s) => s.apply_unless_present(guard, batch).await,
            Self::Memory(s) => s.apply_unless_present(guard, batch).await,
            Self::Replica(s) => s.apply_unless_present(guard, batch).await,
        }
    }
}

/// Reads a JSON record.
pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    store: &impl Store,
    key: &str,
) -> Result<Option<T>> {
    match store.get(key).await? {
        None => Ok(None),
        Some(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| crate::Error::CorruptRecord {
                    key: key.to_owned(),
                    reason: e.to_string(),
                })
        }
    }
}

/// Encodes a JSON record for a write.
pub(crate) fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers into a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}
