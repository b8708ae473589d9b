//! etcd on loopback for the tests: [`cpclink_keymgr::store::loopback`], skipped with a
//! line saying why where the `etcd` binary is missing.

use cpclink_keymgr::store::loopback;
use cpclink_keymgr::store::EtcdStore;

pub use cpclink_keymgr::store::loopback::EtcdCluster;

/// A client URL where nothing listens.
pub fn dead_url() -> String {
    format!("http://127.0.0.1:{}", loopback::free_port().unwrap())
}

/// Whether the `etcd` binary is here; says why the test is skipped when not.
fn etcd_installed() -> bool {
    if !loopback::etcd_installed() {
        eprintln!("skipping: no `etcd` binary (install Debian's etcd-server)");
        return false;
    }
    true
}

/// A one-member etcd, or `None` (having said why) where it cannot run.
pub fn start_etcd() -> Option<EtcdCluster> {
    cluster(1)
}

/// `size` members forming one cluster, or `None` (having said why) where etcd cannot run.
pub fn cluster(size: usize) -> Option<EtcdCluster> {
    etcd_installed().then(|| EtcdCluster::start(size).unwrap())
}

/// A store on `urls` once the cluster behind them answers reads.
pub async fn connect_urls(urls: &[String], prefix: &str) -> EtcdStore {
    loopback::connect_urls(urls, prefix).await.unwrap()
}

/// A store on `etcd` once it answers.
pub async fn connect(etcd: &EtcdCluster, prefix: &str) -> EtcdStore {
    etcd.connect(prefix).await.unwrap()
}
