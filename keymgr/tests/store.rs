//! One suite, run against the redb store and against a real etcd server.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cpclink_keymgr::store::{EtcdStore, RedbStore, Store, Write};

async fn suite(s: &impl Store) {
    assert_eq!(s.get("a/1").await.unwrap(), None);
    s.put("a/1", b"one").await.unwrap();
    s.put("a/2", b"two").await.unwrap();
    s.put("b/1", b"other").await.unwrap();
    assert_eq!(s.get("a/1").await.unwrap().as_deref(), Some(&b"one"[..]));
    s.put("a/1", b"uno").await.unwrap();
    assert_eq!(s.get("a/1").await.unwrap().as_deref(), Some(&b"uno"[..]));

    let scanned = s.scan("a/").await.unwrap();
    assert_eq!(
        scanned,
        vec![
            ("a/1".into(), b"uno".to_vec()),
            ("a/2".into(), b"two".to_vec())
        ]
    );

    assert!(s.insert_new("tok/x", b"1").await.unwrap());
    assert!(!s.insert_new("tok/x", b"2").await.unwrap());
    assert_eq!(s.get("tok/x").await.unwrap().as_deref(), Some(&b"1"[..]));

    s.apply(vec![
        Write::Put("c/1".into(), b"x".to_vec()),
        Write::Delete("a/2".into()),
        Write::Put("c/2".into(), b"y".to_vec()),
    ])
    .await
    .unwrap();
    assert_eq!(s.get("a/2").await.unwrap(), None);
    assert_eq!(s.scan("c/").await.unwrap().len(), 2);
    // Deleting what is absent is not an error.
    s.apply(vec![Write::Delete("nope".into())]).await.unwrap();
}

/// Many concurrent insert-if-absent calls for one key: exactly one wins (single-use tokens
/// rest on this).
async fn insert_new_has_one_winner<S: Store>(s: std::sync::Arc<S>) {
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.insert_new("race", &[i]).await.unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn redb_store_passes_the_suite_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let s = RedbStore::open(&path).unwrap();
        suite(&s).await;
        insert_new_has_one_winner(std::sync::Arc::new(s)).await;
    }
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(s.get("a/1").await.unwrap().as_deref(), Some(&b"uno"[..]));
    assert!(!s.insert_new("tok/x", b"3").await.unwrap());
}

struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts etcd on loopback ports in a temporary directory, or says why it cannot.
fn start_etcd() -> Option<Etcd> {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("skipping: no `etcd` binary (install Debian's etcd-server)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let child = Command::new("etcd")
        .args([
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Some(Etcd {
        child,
        _dir: dir,
        url,
    })
}

async fn connect(etcd: &Etcd, prefix: &str) -> EtcdStore {
    for _ in 0..100 {
        if let Ok(s) = EtcdStore::connect(std::slice::from_ref(&etcd.url), prefix).await {
            if s.get("probe").await.is_ok() {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd at {} did not come up", etcd.url);
}

#[tokio::test]
async fn etcd_store_passes_the_suite() {
    let Some(etcd) = start_etcd() else { return };
    let s = connect(&etcd, "/test/").await;
    suite(&s).await;
    insert_new_has_one_winner(std::sync::Arc::new(s)).await;
    // Prefixes keep authorities apart.
    let other = connect(&etcd, "/other/").await;
    assert_eq!(other.get("a/1").await.unwrap(), None);
    assert!(other.scan("").await.unwrap().is_empty());
}
