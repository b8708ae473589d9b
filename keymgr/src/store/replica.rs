//! The store as one replica of several sees it: reads go to etcd as they are, and every
//! write is fenced by this replica's leadership, so a replica that is not (or no longer)
//! the leader changes nothing, whatever it believes.

use std::sync::Arc;

use tokio::sync::watch;

use super::{EtcdStore, Leadership, Store, Write};
use crate::{Error, Result};

/// An etcd store whose writes go through the current [`Leadership`]; cloning shares it.
#[derive(Debug, Clone)]
pub struct ReplicaStore {
    store: EtcdStore,
    lead: Arc<watch::Sender<Option<Arc<Leadership>>>>,
}

impl ReplicaStore {
    /// Fences writes to `store` with a leadership set later ([`ReplicaStore::lead`]).
    pub fn new(store: EtcdStore) -> Self {
        Self {
            store,
            lead: Arc::new(watch::channel(None).0),
        }
    }

    /// The store without fencing: reads, and material every replica may create once.
    pub fn unfenced(&self) -> &EtcdStore {
        &self.store
    }

    /// Writes from now on are fenced by `leadership`; `None`: every write is refused.
    pub fn lead(&self, leadership: Option<Arc<Leadership>>) {
        self.lead.send_replace(leadership);
    }

    /// The leadership writes are fenced by, if this replica leads.
    pub fn leadership(&self) -> Option<Arc<Leadership>> {
        self.lead.borrow().clone()
    }

    /// The fencing revision of the current leadership (0 when not leading): the term
    /// recorded with what it writes.
    pub fn term(&self) -> i64 {
        self.lead.borrow().as_ref().map_or(0, |l| l.revision())
    }

    fn leading(&self) -> Result<Arc<Leadership>> {
        self.leadership().ok_or_else(|| Error::NotLeader {
            leader: "another replica".into(),
        })
    }
}

impl Store for ReplicaStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.store.get(key).await
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.apply(vec![Write::Put(key.to_owned(), value.to_vec())])
            .await
    }

    async fn insert_new(&self, key: &str, value: &[u8]) -> Result<bool> {
        let put = Write::Put(key.to_owned(), value.to_vec());
        self.apply_unless_present(key, vec![put]).await
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.store.scan(prefix).await
    }

    async fn apply(&self, batch: Vec<Write>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.leading()?.fenced(batch).await
    }

    async fn apply_unless_present(&self, guard: &str, batch: Vec<Write>) -> Result<bool> {
        self.leading()?.fenced_unless_present(guard, batch).await
    }
}
