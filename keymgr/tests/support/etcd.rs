//! etcd servers on loopback ports in temporary directories: one member, or a cluster of
//! several whose members can be stopped (SIGSTOP), resumed, killed and restarted.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cpclink_keymgr::store::{EtcdStore, Store};

/// One etcd member.
pub struct Etcd {
    /// The running process.
    pub child: Child,
    _dir: Option<tempfile::TempDir>,
    /// Its client URL.
    pub url: String,
    /// The command line, to restart the member as it was.
    pub args: Vec<String>,
}

impl Etcd {
    /// Starts the member again with the same ports and data (after it was killed).
    pub fn restart(&mut self) {
        self.child = spawn(&self.args);
    }

    /// Kills the member at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the member (SIGSTOP): it keeps its sockets and answers nothing.
    pub fn pause(&self) {
        signal(&self.child, "-STOP");
    }

    /// Lets a frozen member run again (SIGCONT).
    pub fn resume(&self) {
        signal(&self.child, "-CONT");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {} failed", child.id());
}

fn spawn(args: &[String]) -> Child {
    Command::new("etcd")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client URL where nothing listens.
pub fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// Whether the `etcd` binary is here; says why the test is skipped when not.
fn etcd_installed() -> bool {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("skipping: no `etcd` binary (install Debian's etcd-server)");
        return false;
    }
    true
}

/// The command line of member `name` of the cluster `initial` (`name=peer-url,…`).
fn member_args(
    dir: &std::path::Path,
    name: &str,
    client: u16,
    peer: u16,
    initial: &str,
) -> Vec<String> {
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    [
        "--name",
        name,
        "--data-dir",
        dir.join(name).to_str().unwrap(),
        "--listen-client-urls",
        &url,
        "--advertise-client-urls",
        &url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        initial,
        "--initial-cluster-state",
        "new",
        // A member resumed after a freeze would otherwise call an election at once and
        // depose a healthy leader (etcd 3.5 turns this on by default).
        "--pre-vote",
    ]
    .map(String::from)
    .to_vec()
}

/// Starts a one-member etcd, or says why it cannot.
pub fn start_etcd() -> Option<Etcd> {
    if !etcd_installed() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let args = member_args(
        dir.path(),
        "default",
        client,
        peer,
        &format!("default=http://127.0.0.1:{peer}"),
    );
    Some(Etcd {
        child: spawn(&args),
        _dir: Some(dir),
        url: format!("http://127.0.0.1:{client}"),
        args,
    })
}

/// A store on `urls` once the cluster behind them answers reads.
pub async fn connect_urls(urls: &[String], prefix: &str) -> EtcdStore {
    for _ in 0..300 {
        if let Ok(s) = EtcdStore::connect(urls, prefix).await {
            if s.get("probe").await.is_ok() {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd at {urls:?} did not come up");
}

/// A store on the one member `etcd` once it answers.
pub async fn connect(etcd: &Etcd, prefix: &str) -> EtcdStore {
    connect_urls(std::slice::from_ref(&etcd.url), prefix).await
}

/// Several etcd members forming one cluster on loopback.
pub struct EtcdCluster {
    /// The members, in the order of their client URLs.
    pub members: Vec<Etcd>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members, or says why it cannot.
    pub fn start(size: usize) -> Option<Self> {
        if !etcd_installed() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, &(client, peer))| {
                let args = member_args(dir.path(), &format!("m{i}"), client, peer, &initial);
                Etcd {
                    child: spawn(&args),
                    _dir: None,
                    url: format!("http://127.0.0.1:{client}"),
                    args,
                }
            })
            .collect();
        Some(Self { members, _dir: dir })
    }

    /// Every member's client URL, starting with member `first`.
    pub fn urls_from(&self, first: usize) -> Vec<String> {
        let n = self.members.len();
        (0..n)
            .map(|i| self.members[(first + i) % n].url.clone())
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // A stopped member must run again to die cleanly and free its ports.
        for m in &self.members {
            let _ = Command::new("kill")
                .args(["-CONT", &m.child.id().to_string()])
                .status();
        }
    }
}
