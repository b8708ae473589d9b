//! etcd members on loopback ports, for the tests and benchmarks of replicas: one member or
//! a cluster, each member of which can be frozen (SIGSTOP), resumed, killed (-9) and
//! started again as it was. Needs the `etcd` binary; needs root for nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{EtcdStore, Store};
use crate::{Error, Result};

/// How long a cluster may take to answer its first read.
const COME_UP: Duration = Duration::from_secs(30);

/// Whether the `etcd` binary is on the `PATH`.
pub fn etcd_installed() -> bool {
    Command::new("etcd").arg("--version").output().is_ok()
}

/// A TCP port on loopback nothing listens on now.
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free loopback port", e))
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

/// One etcd member.
#[derive(Debug)]
pub struct EtcdMember {
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
    /// Its client URL.
    pub url: String,
}

impl EtcdMember {
    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Error::io(format!("opening {}", self.log.display()), e))?;
        let child = Command::new("etcd")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                Error::io(
                    "starting etcd (install Debian's etcd-server, or etcd from etcd.io)",
                    e,
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the member again with the same ports and data (after [`Self::kill`]).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Kills the member at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A frozen process must run again to die and free its ports.
            signal(&c, "-CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the member (SIGSTOP): it keeps its sockets and answers nothing.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            signal(c, "-STOP");
        }
    }

    /// Lets a frozen member run again (SIGCONT).
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            signal(c, "-CONT");
        }
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// etcd members forming one cluster on loopback, stopped when dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in the order of their client URLs.
    pub members: Vec<EtcdMember>,
    /// Holds the data and logs when the cluster chose where they go.
    _dir: Option<tempfile::TempDir>,
}

impl EtcdCluster {
    /// Starts `size` members with their data and logs in a temporary directory.
    pub fn start(size: usize) -> Result<Self> {
        let dir =
            tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
        let mut cluster = Self::start_in(dir.path(), size)?;
        cluster._dir = Some(dir);
        Ok(cluster)
    }

    /// Starts `size` members with their data (`etcd-mN/`) and logs (`etcd-mN.log`) under
    /// `dir`.
    pub fn start_in(dir: &Path, size: usize) -> Result<Self> {
        if !etcd_installed() {
            return Err(Error::io(
                "starting etcd",
                std::io::Error::other(
                    "no `etcd` binary: install Debian's etcd-server (or etcd from etcd.io)",
                ),
            ));
        }
        let ports = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<Vec<_>>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::with_capacity(size);
        for (i, (client, peer)) in ports.into_iter().enumerate() {
            let name = format!("m{i}");
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data = dir.join(format!("etcd-{name}"));
            let args = [
                "--name",
                &name,
                "--data-dir",
                &data.to_string_lossy(),
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                // A member resumed after a freeze would otherwise call an election at once
                // and depose a healthy raft leader.
                "--pre-vote",
            ]
            .map(String::from)
            .to_vec();
            let mut member = EtcdMember {
                child: None,
                args,
                log: dir.join(format!("etcd-{name}.log")),
                url,
            };
            member.spawn()?;
            members.push(member);
        }
        Ok(Self {
            members,
            _dir: None,
        })
    }

    /// Every member's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.urls_from(0)
    }

    /// Every member's client URL, starting with member `first`.
    pub fn urls_from(&self, first: usize) -> Vec<String> {
        let n = self.members.len();
        (0..n)
            .map(|i| self.members[(first + i) % n].url.clone())
            .collect()
    }

    /// A store under `prefix` on the cluster, once it answers reads.
    pub async fn connect(&self, prefix: &str) -> Result<EtcdStore> {
        connect_urls(&self.urls(), prefix).await
    }
}

/// A store under `prefix` on the cluster behind `urls`, once it answers reads (it may
/// still be starting); an error after half a minute without an answer.
pub async fn connect_urls(urls: &[String], prefix: &str) -> Result<EtcdStore> {
    let deadline = Instant::now() + COME_UP;
    loop {
        let last = match EtcdStore::connect(urls, prefix).await {
            Ok(s) => match s.get("probe").await {
                Ok(_) => return Ok(s),
                Err(e) => e,
            },
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
