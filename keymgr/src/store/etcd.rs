//! The clustered store: etcd v3, every key under one prefix; batches are etcd transactions.

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::{Store, Write};
use crate::Result;

/// A namespace in an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` and keeps every key under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        let client = Client::connect(endpoints, None).await?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn ops(&self, batch: Vec<Write>) -> Vec<TxnOp> {
        batch
            .into_iter()
            .map(|w| match w {
                Write::Put(k, v) => TxnOp::put(self.key(&k), v, None),
                Write::Delete(k) => TxnOp::delete(self.key(&k), None),
            })
            .collect()
    }
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let resp = self.client.kv_client().get(self.key(key), None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.client
            .kv_client()
            .put(self.key(key), value.to_vec(), None)
            .await?;
        Ok(())
    }

    async fn insert_new(&self, key: &str, value: &[u8]) -> Result<bool> {
        let k = self.key(key);
        // Create revision 0 means the key does not exist: the put happens only then.
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, value.to_vec(), None)]);
        let resp = self.client.kv_client().txn(txn).await?;
        Ok(resp.succeeded())
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let resp = self
            .client
            .kv_client()
            .get(self.key(prefix), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let key = key.strip_prefix(&self.prefix).unwrap_or(&key).to_owned();
            out.push((key, kv.value().to_vec()));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn apply(&self, batch: Vec<Write>) -> Result<()> {
        self.client
            .kv_client()
            .txn(Txn::new().and_then(self.ops(batch)))
            .await?;
        Ok(())
    }

    async fn apply_unless_present(&self, guard: &str, batch: Vec<Write>) -> Result<bool> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key(guard),
                CompareOp::Equal,
                0,
            )])
            .and_then(self.ops(batch));
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }
}
