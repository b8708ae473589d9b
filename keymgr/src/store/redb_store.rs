//! The embedded store: one redb file, every commit durable (fsync'd) before it returns.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};

use super::{Store, Write};
use crate::{Error, Result};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("cpclink");

/// A redb database file. Operations run on tokio's blocking pool, so an fsync never stalls
/// the tasks that keep QUIC connections alive.
#[derive(Debug, Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl RedbStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db =
            Database::create(path).map_err(|e| Error::Redb(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write()?;
        tx.open_table(TABLE)?;
        tx.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| Error::Redb(format!("store task failed: {e}")))?
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>) -> Result<T>,
    ) -> Result<T> {
        // redb's default durability is `Immediate`: commit returns after the fsync.
        let tx = self.db.begin_write()?;
        let out = {
            let mut table = tx.open_table(TABLE)?;
            f(&mut table)?
        };
        tx.commit()?;
        Ok(out)
    }
}

impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = key.to_owned();
        self.blocking(move |s| {
            let tx = s.db.begin_read()?;
            let table = tx.open_table(TABLE)?;
            Ok(table.get(key.as_str())?.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.apply(vec![Write::Put(key.to_owned(), value.to_vec())])
            .await
    }

    async fn insert_new(&self, key: &str, value: &[u8]) -> Result<bool> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.blocking(move |s| {
            s.write(|t| {
                if t.get(key.as_str())?.is_some() {
                    return Ok(false);
                }
                t.insert(key.as_str(), value.as_slice())?;
                Ok(true)
            })
        })
        .await
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = prefix.to_owned();
        self.blocking(move |s| s.scan_now(&prefix)).await
    }

    async fn apply(&self, batch: Vec<Write>) -> Result<()> {
        self.blocking(move |s| s.apply_now(&batch)).await
    }

    async fn apply_unless_present(&self, guard: &str, batch: Vec<Write>) -> Result<bool> {
        let guard = guard.to_owned();
        self.blocking(move |s| {
            s.write(|t| {
                if t.get(guard.as_str())?.is_some() {
                    return Ok(false);
                }
                write_all(t, &batch)?;
                Ok(true)
            })
        })
        .await
    }
}

fn write_all(t: &mut redb::Table<'_, &'static str, &'static [u8]>, batch: &[Write]) -> Result<()> {
    for w in batch {
        match w {
            Write::Put(k, v) => {
                t.insert(k.as_str(), v.as_slice())?;
            }
            Write::Delete(k) => {
                t.remove(k.as_str())?;
            }
        }
    }
    Ok(())
}

impl RedbStore {
    fn scan_now(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TABLE)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..)? {
            let (k, v) = entry?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply_now(&self, batch: &[Write]) -> Result<()> {
        self.write(|t| write_all(t, batch))
    }
}
