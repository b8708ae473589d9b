//! The clustered store: etcd v3, every key under one prefix; batches are etcd transactions.
//!
//! etcd is spoken to through its JSON gateway over HTTP/1.1 ([`client`]), with the v3
//! messages in [`messages`]: no gRPC code generation, so building needs no `protoc`.
//! [`Election`] elects one leader among processes sharing a prefix, on an etcd lease, and
//! fences the leader's writes with the revision of its leader key.

mod client;
mod election;
// The v3 messages are written out whole (every compare target, leases on puts, revisions in
// replies) so that leases, watches and fencing on revisions add calls, not new types.
#[allow(dead_code)]
mod messages;

use std::sync::Arc;

pub use self::election::{Candidate, Election, Leader, Leadership};

use self::client::EtcdClient;
use self::messages::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use super::{Store, Write};
use crate::Result;

/// A namespace in an etcd cluster.
#[derive(Debug, Clone)]
pub struct EtcdStore {
    client: Arc<EtcdClient>,
    prefix: String,
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (`http://host:port` client URLs, tried in turn
    /// when one cannot be reached) and keeps every key under `prefix`. Fails when no
    /// endpoint answers, so that a wrong URL shows at start rather than at the first write.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        let store = Self {
            client: Arc::new(EtcdClient::new(endpoints)?),
            prefix: prefix.to_owned(),
        };
        store
            .client
            .call(&RangeRequest::key(prefix.as_bytes().to_vec()))
            .await?;
        Ok(store)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn ops(&self, batch: Vec<Write>) -> Vec<RequestOp> {
        batch
            .into_iter()
            .map(|w| match w {
                Write::Put(k, value) => RequestOp::Put(PutRequest {
                    key: self.key(&k).into_bytes(),
                    value,
                    lease: 0,
                }),
                Write::Delete(k) => RequestOp::DeleteRange(DeleteRangeRequest {
                    key: self.key(&k).into_bytes(),
                    range_end: Vec::new(),
                }),
            })
            .collect()
    }

    /// Runs `batch` in one transaction, only while `guard` (when given) does not exist.
    async fn txn(&self, guard: Option<&str>, batch: Vec<Write>) -> Result<bool> {
        let txn = TxnRequest {
            compare: guard
                .map(|g| Compare::absent(self.key(g).into_bytes()))
                .into_iter()
                .collect(),
            success: self.ops(batch),
            failure: Vec::new(),
        };
        Ok(self.client.call(&txn).await?.succeeded)
    }
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let reply = self
            .client
            .call(&RangeRequest::key(self.key(key).into_bytes()))
            .await?;
        Ok(reply.kvs.into_iter().next().map(|kv| kv.value))
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let put = PutRequest {
            key: self.key(key).into_bytes(),
            value: value.to_vec(),
            lease: 0,
        };
        self.client.call(&put).await?;
        Ok(())
    }

    async fn insert_new(&self, key: &str, value: &[u8]) -> Result<bool> {
        let put = Write::Put(key.to_owned(), value.to_vec());
        self.txn(Some(key), vec![put]).await
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let reply = self
            .client
            .call(&RangeRequest::prefix(self.key(prefix).into_bytes()))
            .await?;
        let mut out: Vec<(String, Vec<u8>)> = reply
            .kvs
            .into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key);
                let key = key.strip_prefix(&self.prefix).unwrap_or(&key).to_owned();
                (key, kv.value)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn apply(&self, batch: Vec<Write>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.txn(None, batch).await?;
        Ok(())
    }

    async fn apply_unless_present(&self, guard: &str, batch: Vec<Write>) -> Result<bool> {
        self.txn(Some(guard), batch).await
    }
}
