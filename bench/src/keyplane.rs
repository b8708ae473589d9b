//! `cpclink bench keymgr` (also `cpclink keymgr bench`): one authority and N simulated
//! appliances, each a full key agent with its own QUIC endpoint, certificate and redb store,
//! on loopback. It measures the enrolment rate, how long a directory change and a rotation
//! take to reach every appliance, and how long a revocation takes to be enforced by each
//! peer.
//!
//! Up to `--per-process` appliances run in this process; beyond that they are spread over
//! child processes (this binary re-executed with `--child`), each reporting to the parent
//! over its standard input and output, so no process needs more file descriptors than one
//! group of appliances takes. The authority, with its durable redb store and audit log,
//! always runs in the parent. Times across processes are taken from the system clock.
//!
//! With `--replicas N` (and no `--kills`), the authority is instead N replicas, in the
//! parent too, each an [`Authority`] standing for election on a three-member etcd cluster
//! started on loopback (etcd is the store replicas share); every appliance is given all N
//! addresses, each list starting at another replica, and finds the leader by itself (a
//! follower names it). The benchmark drives the leader's API, as an operator would.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use cpclink_keymgr::agent::{AgentOptions, KeyAgent};
use cpclink_keymgr::authority::Authority;
use cpclink_keymgr::config::{AuthorityConfig, StoreConfig};
use cpclink_keymgr::directory::{Rule, Selector};
use cpclink_keymgr::seal::{random_bytes, Kek};
use cpclink_keymgr::store::loopback::EtcdCluster;
use cpclink_keymgr::store::{AnyStore, MemoryStore};

use crate::Error;

type Result<T> = std::result::Result<T, Error>;

/// Appliances per tenant: the default policy lets a tenant's appliances talk, so each
/// appliance's directory view holds this many entries.
const TENANT_SIZE: usize = 10;
/// How many appliances enrol at once, over all processes.
const ENROL_PARALLELISM: usize = 64;
/// How long one phase may take before the run at that size is abandoned.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

/// Arguments of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Print one JSON object per size instead of text.
    #[arg(long)]
    pub json: bool,
    /// Simulated appliances in the first run.
    #[arg(long, default_value_t = 1000)]
    pub appliances: usize,
    /// Keep doubling the count up to this many (stops at the first size that fails).
    #[arg(long, default_value_t = 1000)]
    pub max: usize,
    /// Run exactly these sizes, in order, instead of doubling (stops at the first failure).
    #[arg(long = "sizes", num_args = 1..)]
    pub sizes: Vec<usize>,
    /// Revocations to measure (each enforced by every peer of the revoked appliance).
    #[arg(long, default_value_t = 10)]
    pub revocations: usize,
    /// Simulated appliances per process; larger runs are spread over child processes.
    #[arg(long, default_value_t = 1000)]
    pub per_process: usize,
    /// Where simulated appliances keep their state: one redb file each (fsync'd, on the
    /// one disk they all share here) or memory. The authority's store is redb either way.
    #[arg(long, value_enum, default_value_t = AgentStore::File)]
    pub agent_store: AgentStore,
    /// Internal: run as a child process serving a group of simulated appliances.
    #[arg(long, hide = true)]
    pub child: bool,
}

/// Where simulated appliances keep their state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AgentStore {
    /// One redb file per appliance, every commit fsync'd.
    File,
    /// In memory (not durable): no file descriptor or disk space per appliance.
    Memory,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Appliances enrolled, connected and followed through every phase.
    pub appliances: usize,
    /// Authority replicas (1: a single authority).
    pub replicas: usize,
    /// The authority's store: `redb` for one authority, `etcd` (three members on
    /// loopback) for replicas.
    pub authority_store: String,
    /// Processes the simulated appliances ran in (the authority runs in the first).
    pub processes: usize,
    /// Where the simulated appliances kept their state.
    pub agent_store: AgentStore,
    /// Enrolments per second (token check, CSR signing, durable store commit, agent start).
    pub enrolments_per_sec: f64,
    /// Seconds until every appliance held a live QUIC feed from the authority.
    pub all_connected_secs: f64,
    /// Seconds for a policy change to be applied by every appliance.
    pub directory_change_secs: f64,
    /// Seconds for a rotation order to be obeyed (keys persisted) and acknowledged by all.
    pub rotation_secs: f64,
    /// Revocation enforcement time per peer, median, milliseconds.
    pub revocation_p50_ms: f64,
    /// Revocation enforcement time per peer, 99th percentile, milliseconds.
    pub revocation_p99_ms: f64,
    /// Revocation samples (peers × revocations).
    pub revocation_samples: usize,
}

/// Runs the benchmark with one authority, or `replicas` on etcd, and prints the results
/// (or, with `--child`, serves as a child).
pub async fn run(args: &BenchArgs, replicas: Option<usize>) -> Result<()> {
    if args.child {
        return child_main().await;
    }
    let sizes: Vec<usize> = if args.sizes.is_empty() {
        let mut sizes = vec![args.appliances.max(2)];
        while let Some(&n) = sizes.last().filter(|&&n| n < args.max) {
            sizes.push((n * 2).min(args.max));
        }
        sizes
    } else {
        args.sizes.iter().map(|&n| n.max(2)).collect()
    };
    let mut reached = 0;
    for n in sizes {
        match run_once(
            n,
            args.revocations,
            args.per_process.max(1),
            args.agent_store,
            replicas,
        )
        .await
        {
            Ok(report) => {
                reached = n;
                if args.json {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                } else {
                    print_report(&report);
                }
            }
            Err(e) => {
                eprintln!("keymgr bench: {n} appliances: {e}");
                break;
            }
        }
    }
    if !args.json {
        println!("largest size completed: {reached} appliances (target 10000)");
    }
    if reached == 0 {
        return Err(Error::KeyPlane("no size completed".into()));
    }
    Ok(())
}

fn print_report(r: &BenchReport) {
    println!(
        "keymgr bench: {} appliances in {} process(es), real QUIC (TLS 1.3, X25519MLKEM768) on loopback, {} on {}, appliances on {:?} stores",
        r.appliances,
        r.processes,
        if r.replicas > 1 {
            format!("{} authority replicas", r.replicas)
        } else {
            "one authority".to_owned()
        },
        r.authority_store,
        r.agent_store
    );
    println!("  enrolment            {:>10.1} /s", r.enrolments_per_sec);
    println!("  all connected        {:>10.3} s", r.all_connected_secs);
    println!(
        "  directory change     {:>10.3} s to reach all",
        r.directory_change_secs
    );
    println!(
        "  rotation             {:>10.3} s to reach all (target <= 10 s at 10000)",
        r.rotation_secs
    );
    println!(
        "  revocation enforced  p50 {:.1} ms, p99 {:.1} ms over {} peer samples (target <= 1 s)",
        r.revocation_p50_ms, r.revocation_p99_ms, r.revocation_samples
    );
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    within_limit(PHASE_LIMIT, what, fut).await
}

async fn within_limit<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Error::KeyPlane(format!("{what} took over {limit:?}")))
}

/// How long a phase that does work for each appliance in turn (enrolling, connecting) may
/// take for `n` of them: a phase's limit plus 60 ms an appliance (10,000: 15 minutes), so a
/// large run on a small machine is measured rather than abandoned, while a hung one still
/// ends.
fn per_appliance_limit(n: usize) -> Duration {
    PHASE_LIMIT + Duration::from_millis(60).saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
}

/// The nearest-rank `p` quantile of `sorted` (0 when empty).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The system clock in microseconds: comparable across the processes of one machine.
fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One simulated appliance to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Appliance {
    index: usize,
    token: String,
}

/// What a group of simulated appliances needs to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupSetup {
    /// Every authority replica's control address (one for a single authority).
    authorities: Vec<SocketAddr>,
    ca_cert: String,
    kek_file: PathBuf,
    state_dir: PathBuf,
    parallelism: usize,
    agent_store: AgentStore,
    appliances: Vec<Appliance>,
}

/// Parent → child, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Report when each running appliance of `only` (every one when `None`) first held
    /// `version`.
    Reached {
        version: u64,
        only: Option<HashSet<String>>,
    },
    /// Stop one appliance.
    Stop(String),
}

/// Child → parent, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Started,
    Reached(Vec<u64>),
    Stopped,
    Failed(String),
}

/// (directory version, system clock in µs when an appliance first held it), in order.
type VersionLog = Arc<StdMutex<Vec<(u64, u64)>>>;

/// Appliances running in this process, each with the times it first held each directory
/// version.
struct Sim {
    agents: Vec<KeyAgent>,
    seen: Vec<VersionLog>,
    stopped: HashSet<String>,
}

impl Sim {
    async fn start(setup: GroupSetup) -> Result<Self> {
        let ca = rustls::pki_types::CertificateDer::from(
            hex::decode(&setup.ca_cert).map_err(|e| Error::KeyPlane(e.to_string()))?,
        );
        let gate = Arc::new(Semaphore::new(setup.parallelism.max(1)));
        let mut starting = Vec::with_capacity(setup.appliances.len());
        for a in setup.appliances {
            let opts = AgentOptions {
                appliance: format!("sim-{}", a.index),
                // Each appliance starts at another replica: followers send it to the leader.
                authorities: (0..setup.authorities.len())
                    .map(|i| setup.authorities[(a.index + i) % setup.authorities.len()])
                    .collect(),
                listen: (Ipv4Addr::LOCALHOST, 0).into(),
                state_dir: setup.state_dir.join(format!("agent-{}", a.index)),
                kek: Kek::load(&setup.kek_file, "kek_file")?,
                ca_cert: ca.clone(),
                token: Some(zeroize::Zeroizing::new(a.token)),
                endpoints: vec![format!("127.0.0.1:{}", 20_000 + a.index % 40_000)],
                capabilities: vec!["psp-v1".into()],
                prefixes: vec![],
                suite: cpclink_dataplane::crypto::Suite::AesGcm256,
                sa_lifetime: Duration::from_secs(3600),
                rekey_grace: Duration::from_millis(500),
            };
            let gate = gate.clone();
            let memory = setup.agent_store == AgentStore::Memory;
            starting.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                let started = if memory {
                    KeyAgent::start_with_store(opts, AnyStore::Memory(MemoryStore::default())).await
                } else {
                    KeyAgent::start(opts).await
                };
                started.map(|(agent, mut events)| {
                    // The bench has no data plane: drain the events.
                    tokio::spawn(async move { while events.recv().await.is_some() {} });
                    agent
                })
            }));
        }
        let mut sim = Self {
            agents: Vec::with_capacity(starting.len()),
            seen: Vec::with_capacity(starting.len()),
            stopped: HashSet::new(),
        };
        for s in starting {
            let agent = s.await.map_err(|e| Error::KeyPlane(e.to_string()))??;
            let seen: VersionLog = Arc::default();
            let mut versions = agent.directory_version();
            let log = seen.clone();
            tokio::spawn(async move {
                loop {
                    let v = *versions.borrow_and_update();
                    if let Ok(mut log) = log.lock() {
                        log.push((v, wall_us()));
                    }
                    if versions.changed().await.is_err() {
                        return;
                    }
                }
            });
            sim.agents.push(agent);
            sim.seen.push(seen);
        }
        Ok(sim)
    }

    /// When each running appliance of `only` (all when `None`) first held `version` or
    /// later; waits for all of them.
    async fn reached(&self, version: u64, only: Option<&HashSet<String>>) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.agents.len());
        for (agent, seen) in self.agents.iter().zip(&self.seen) {
            if self.stopped.contains(agent.id()) || only.is_some_and(|o| !o.contains(agent.id())) {
                continue;
            }
            let mut rx = agent.directory_version();
            let _ = rx.wait_for(|v| *v >= version).await;
            loop {
                let first = seen
                    .lock()
                    .ok()
                    .and_then(|log| log.iter().find(|(v, _)| *v >= version).map(|(_, t)| *t));
                if let Some(t) = first {
                    out.push(t);
                    break;
                }
                // The recorder runs just after the version changes.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        out
    }

    fn stop(&mut self, id: &str) {
        if let Some(a) = self.agents.iter().find(|a| a.id() == id) {
            a.shutdown();
            self.stopped.insert(id.to_owned());
        }
    }

    fn shutdown(&self) {
        for a in &self.agents {
            a.shutdown();
        }
    }
}

/// A group of simulated appliances, here or in a child process.
enum Group {
    Here(Sim),
    Child {
        child: Child,
        /// Lent to the blocking pool while a request is out.
        pipes: Option<Pipes>,
        ids: HashSet<String>,
    },
}

type Pipes = (ChildStdin, BufReader<ChildStdout>);

fn send_line<T: Serialize>(w: &mut impl std::io::Write, msg: &T) -> Result<()> {
    let line = serde_json::to_string(msg).map_err(|e| Error::KeyPlane(e.to_string()))?;
    writeln!(w, "{line}")
        .and_then(|()| w.flush())
        .map_err(|e| Error::key_plane_io("writing to a bench process", e))
}

fn read_line<T: serde::de::DeserializeOwned>(r: &mut impl BufRead) -> Result<T> {
    let mut line = String::new();
    let n = r
        .read_line(&mut line)
        .map_err(|e| Error::key_plane_io("reading from a bench process", e))?;
    if n == 0 {
        return Err(Error::KeyPlane(
            "a bench process exited early (see its messages above)".into(),
        ));
    }
    serde_json::from_str(&line)
        .map_err(|e| Error::KeyPlane(format!("bench process said {line:?}: {e}")))
}

fn joined<T>(r: std::result::Result<T, tokio::task::JoinError>) -> Result<T> {
    r.map_err(|e| Error::KeyPlane(format!("bench task: {e}")))
}

impl Group {
    /// Starts the group's appliances (enrolment included) and returns once all run.
    async fn start(setup: GroupSetup, here: bool) -> Result<Self> {
        if here {
            return Sim::start(setup).await.map(Group::Here);
        }
        let ids = setup
            .appliances
            .iter()
            .map(|a| format!("sim-{}", a.index))
            .collect();
        joined(
            tokio::task::spawn_blocking(move || -> Result<Group> {
                let exe = std::env::current_exe()
                    .map_err(|e| Error::key_plane_io("finding this executable to re-run", e))?;
                let mut child = Command::new(exe)
                    .args(std::env::args_os().skip(1))
                    .arg("--child")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| Error::key_plane_io("starting a bench child process", e))?;
                let (Some(mut requests), Some(out)) = (child.stdin.take(), child.stdout.take())
                else {
                    return Err(Error::KeyPlane("bench child without pipes".into()));
                };
                let mut replies = BufReader::new(out);
                send_line(&mut requests, &setup)?;
                match read_line(&mut replies)? {
                    Reply::Started => Ok(Group::Child {
                        child,
                        pipes: Some((requests, replies)),
                        ids,
                    }),
                    Reply::Failed(e) => Err(Error::KeyPlane(e)),
                    other => Err(Error::KeyPlane(format!("bench child said {other:?}"))),
                }
            })
            .await,
        )?
    }

    fn holds(&self, id: &str) -> bool {
        match self {
            Group::Here(sim) => sim.agents.iter().any(|a| a.id() == id),
            Group::Child { ids, .. } => ids.contains(id),
        }
    }

    fn shutdown(self) {
        match self {
            Group::Here(sim) => sim.shutdown(),
            Group::Child {
                mut child, pipes, ..
            } => {
                // End of input tells the child to stop its appliances and exit.
                drop(pipes);
                let _ = child.wait();
            }
        }
    }
}

/// Sends `cmd` to every group at once; returns the replies in group order.
async fn ask_all(groups: &mut [Group], cmd: &Request) -> Result<Vec<Reply>> {
    let mut pending = Vec::with_capacity(groups.len());
    for g in groups.iter_mut() {
        pending.push(match g {
            Group::Here(_) => None,
            Group::Child { pipes, .. } => {
                let (mut w, mut r) = pipes
                    .take()
                    .ok_or_else(|| Error::KeyPlane("a bench process stopped answering".into()))?;
                let line =
                    serde_json::to_string(cmd).map_err(|e| Error::KeyPlane(e.to_string()))?;
                Some(tokio::task::spawn_blocking(move || {
                    let reply = writeln!(w, "{line}")
                        .and_then(|()| w.flush())
                        .map_err(|e| Error::key_plane_io("writing to a bench process", e))
                        .and_then(|()| read_line::<Reply>(&mut r));
                    (reply, (w, r))
                }))
            }
        });
    }
    let mut replies = Vec::with_capacity(groups.len());
    for (g, p) in groups.iter_mut().zip(pending) {
        replies.push(match (g, p) {
            (Group::Here(sim), _) => match cmd {
                Request::Reached { version, only } => {
                    Reply::Reached(sim.reached(*version, only.as_ref()).await)
                }
                Request::Stop(id) => {
                    sim.stop(id);
                    Reply::Stopped
                }
            },
            (Group::Child { pipes, .. }, Some(task)) => {
                let (reply, back) = joined(task.await)?;
                *pipes = Some(back);
                reply?
            }
            (Group::Child { .. }, None) => return Err(Error::KeyPlane("bench group lost".into())),
        });
    }
    Ok(replies)
}

/// When every appliance of `only` (all when `None`) first held `version`, as microseconds
/// after `start`.
async fn reached_all(
    groups: &mut [Group],
    version: u64,
    only: Option<HashSet<String>>,
    start: u64,
) -> Result<Vec<Duration>> {
    let cmd = Request::Reached { version, only };
    let mut out = Vec::new();
    for reply in ask_all(groups, &cmd).await? {
        match reply {
            Reply::Reached(times) => {
                out.extend(
                    times
                        .into_iter()
                        .map(|t| Duration::from_micros(t.saturating_sub(start))),
                );
            }
            Reply::Failed(e) => return Err(Error::KeyPlane(e)),
            other => return Err(Error::KeyPlane(format!("bench process said {other:?}"))),
        }
    }
    Ok(out)
}

/// The child side: starts the group it is given on standard input, answers commands, and
/// stops everything at the end of its input.
async fn child_main() -> Result<()> {
    let mut input = BufReader::new(std::io::stdin());
    let mut output = std::io::stdout();
    let setup: GroupSetup = read_line(&mut input)?;
    // Commands are read from the start, so that the parent going away (end of input) ends
    // this process even while its appliances are still enrolling.
    let (commands, mut incoming) = tokio::sync::mpsc::unbounded_channel::<Request>();
    std::thread::spawn(move || {
        while let Ok(cmd) = read_line::<Request>(&mut input) {
            if commands.send(cmd).is_err() {
                return;
            }
        }
        std::process::exit(0);
    });
    let mut sim = match Sim::start(setup).await {
        Ok(sim) => {
            send_line(&mut output, &Reply::Started)?;
            sim
        }
        Err(e) => {
            send_line(&mut output, &Reply::Failed(e.to_string()))?;
            return Err(e);
        }
    };
    while let Some(cmd) = incoming.recv().await {
        let reply = match cmd {
            Request::Reached { version, only } => {
                Reply::Reached(sim.reached(version, only.as_ref()).await)
            }
            Request::Stop(id) => {
                sim.stop(&id);
                Reply::Stopped
            }
        };
        send_line(&mut output, &reply)?;
    }
    sim.shutdown();
    Ok(())
}

/// The authority under test: one on redb, or replicas on a three-member etcd cluster.
struct Authorities {
    all: Vec<Authority>,
    /// The cluster replicas share; stopped when dropped.
    _etcd: Option<EtcdCluster>,
    store: &'static str,
}

impl Authorities {
    /// Starts one authority on redb (`replicas` none or 1) or `replicas` on etcd, with their
    /// state under `dir`; returns once one leads.
    async fn start(
        dir: &std::path::Path,
        kek_file: PathBuf,
        replicas: Option<usize>,
    ) -> Result<Self> {
        let base = AuthorityConfig::on_loopback(dir.join("authority"), kek_file);
        let n = replicas.unwrap_or(1);
        if n <= 1 {
            return Ok(Self {
                all: vec![Authority::start(&base).await?],
                _etcd: None,
                store: "redb",
            });
        }
        let etcd = EtcdCluster::start_in(dir, 3)?;
        etcd.connect("/probe/").await?;
        let mut all = Vec::with_capacity(n);
        for i in 0..n {
            let cfg = AuthorityConfig {
                state_dir: dir.join(format!("replica-{i}")),
                store: StoreConfig::Etcd {
                    endpoints: etcd.urls_from(i),
                    prefix: "/cpclink/keymgr/".into(),
                    candidate: Some(format!("r{i}")),
                    election_ttl_secs: 10,
                },
                ..base.clone()
            };
            // One at a time: the first creates the CA in etcd, the others read it.
            all.push(Authority::start(&cfg).await?);
        }
        let authorities = Self {
            all,
            _etcd: Some(etcd),
            store: "etcd",
        };
        within("electing a leader", async {
            while authorities.all.iter().all(|a| !a.is_leader()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await?;
        Ok(authorities)
    }

    /// The one that leads now (the single authority always does).
    fn leader(&self) -> Result<&Authority> {
        self.all
            .iter()
            .find(|a| a.is_leader())
            .ok_or_else(|| Error::KeyPlane("no authority replica leads".into()))
    }

    fn addrs(&self) -> Result<Vec<SocketAddr>> {
        self.all
            .iter()
            .map(|a| {
                a.local_addr()
                    .ok_or_else(|| Error::KeyPlane("authority has no address".into()))
            })
            .collect()
    }

    fn shutdown(&self) {
        for a in &self.all {
            a.shutdown();
        }
    }
}

/// Measures `n` appliances once (all in this process when `per_process >= n`), with one
/// authority on redb or `replicas` on etcd.
pub async fn run_once(
    n: usize,
    revocations: usize,
    per_process: usize,
    agent_store: AgentStore,
    replicas: Option<usize>,
) -> Result<BenchReport> {
    let dir = tempfile::tempdir()
        .map_err(|e| Error::key_plane_io("creating a temporary directory", e))?;
    let kek_hex = hex::encode(*random_bytes::<32>()?);
    let kek_file = dir.path().join("kek");
    std::fs::write(&kek_file, &kek_hex)
        .map_err(|e| Error::key_plane_io("writing the bench KEK", e))?;
    let authorities = Authorities::start(dir.path(), kek_file.clone(), replicas).await?;
    let authority = authorities.leader()?.clone();
    let addrs = authorities.addrs()?;
    let ca = hex::encode(authority.ca_cert().as_ref());

    let processes = n.div_ceil(per_process);
    let mut setups: Vec<GroupSetup> = (0..processes)
        .map(|_| GroupSetup {
            authorities: addrs.clone(),
            ca_cert: ca.clone(),
            kek_file: kek_file.clone(),
            state_dir: dir.path().to_owned(),
            parallelism: (ENROL_PARALLELISM / processes).max(8),
            agent_store,
            appliances: Vec::new(),
        })
        .collect();
    for i in 0..n {
        let token = authority.mint_token(
            &format!("sim-{i}"),
            &format!("dc{}", i % 8),
            &format!("t{}", i / TENANT_SIZE),
            Duration::from_secs(3600),
        )?;
        setups[i / per_process]
            .appliances
            .push(Appliance { index: i, token });
    }

    // Enrolment: token, CSR, certificate, durable commit, agent store, feed.
    let started = Instant::now();
    let here = processes == 1;
    let starting: Vec<_> = setups
        .into_iter()
        .map(|s| tokio::spawn(Group::start(s, here)))
        .collect();
    let mut groups = Vec::with_capacity(processes);
    let mut failed = None;
    for s in starting {
        match within_limit(per_appliance_limit(n), "enrolment", s)
            .await
            .and_then(joined)
        {
            Ok(Ok(g)) => groups.push(g),
            Ok(Err(e)) | Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        for g in groups {
            g.shutdown();
        }
        authorities.shutdown();
        return Err(e);
    }
    let enrol_secs = started.elapsed().as_secs_f64();
    eprintln!("  {n} enrolled in {enrol_secs:.1} s ({processes} process(es))");
    let result = measure(&authority, &mut groups, n, revocations, started).await;
    for g in groups {
        g.shutdown();
    }
    authorities.shutdown();
    let m = result?;
    Ok(BenchReport {
        appliances: n,
        replicas: authorities.all.len(),
        authority_store: authorities.store.to_owned(),
        processes,
        agent_store,
        enrolments_per_sec: n as f64 / enrol_secs,
        all_connected_secs: m.all_connected_secs,
        directory_change_secs: m.directory_change_secs,
        rotation_secs: m.rotation_secs,
        revocation_p50_ms: percentile(&m.samples, 0.5),
        revocation_p99_ms: percentile(&m.samples, 0.99),
        revocation_samples: m.samples.len(),
    })
}

/// The appliances of `alive` the bench's policy lets `victim` talk to: those of its tenant,
/// and sim-0 and sim-1 each other.
fn peers_of(victim: &str, alive: &[String]) -> HashSet<String> {
    let index = |id: &str| {
        id.strip_prefix("sim-")
            .and_then(|i| i.parse::<usize>().ok())
    };
    let Some(v) = index(victim) else {
        return HashSet::new();
    };
    alive
        .iter()
        .filter(|id| {
            index(id).is_some_and(|i| {
                i / TENANT_SIZE == v / TENANT_SIZE || i.min(v) == 0 && i.max(v) == 1
            })
        })
        .cloned()
        .collect()
}

struct Measured {
    all_connected_secs: f64,
    directory_change_secs: f64,
    rotation_secs: f64,
    samples: Vec<f64>,
}

async fn measure(
    authority: &Authority,
    groups: &mut [Group],
    n: usize,
    revocations: usize,
    started: Instant,
) -> Result<Measured> {
    within_limit(per_appliance_limit(n), "connecting", async {
        loop {
            if let cpclink_keymgr::proto::AdminReply::Status { connected, .. } =
                authority.status().await
            {
                if connected >= n {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let all_connected_secs = started.elapsed().as_secs_f64();
    eprintln!("  {n} connected after {all_connected_secs:.1} s");

    // A policy change reaches everyone: each gets the new rules (and sim-0 and sim-1 each
    // other's entry).
    let start = wall_us();
    let v = authority
        .set_rules(
            vec![
                Rule::same_tenant(),
                Rule {
                    a: Selector {
                        appliance: Some("sim-0".into()),
                        ..Selector::default()
                    },
                    b: Selector {
                        appliance: Some("sim-1".into()),
                        ..Selector::default()
                    },
                    same_tenant: false,
                },
            ],
            "bench",
        )
        .await?;
    let waits = within("directory change", reached_all(groups, v, None, start)).await??;
    let directory_change_secs = waits
        .iter()
        .max()
        .copied()
        .unwrap_or_default()
        .as_secs_f64();
    eprintln!("  directory change reached all in {directory_change_secs:.2} s");

    // A rotation: every agent persists a new generation and acknowledges.
    let mut acks = authority.rotations();
    let before: HashMap<String, u64> = acks.borrow_and_update().clone();
    let ids: Vec<String> = (0..n).map(|i| format!("sim-{i}")).collect();
    let start = Instant::now();
    authority.rotate_all("bench").await?;
    within("rotation", async {
        // Only the appliances not yet heard from are checked, at most every few
        // milliseconds: counting all of them on every acknowledgement was quadratic, and
        // held the map's lock against the authority's feeds recording acknowledgements.
        let mut pending: Vec<&String> = ids.iter().collect();
        loop {
            {
                let m = acks.borrow_and_update();
                pending.retain(|id| {
                    m.get(*id)
                        .is_none_or(|e| *e <= before.get(*id).copied().unwrap_or(0))
                });
            }
            if pending.is_empty() || acks.changed().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    let rotation_secs = start.elapsed().as_secs_f64();
    eprintln!("  rotation reached all in {rotation_secs:.2} s");

    // Revocations: each enforced (applied and acted on) by every remaining peer of the
    // revoked appliance, the only appliances it is pushed to.
    let mut samples = Vec::new();
    let mut alive = ids;
    for r in 0..revocations.min(n / 2) {
        let victim = alive.remove((r * 7919) % alive.len());
        let peers = peers_of(&victim, &alive);
        let start = wall_us();
        let v = authority.revoke(&victim, "bench").await?;
        let waits = within("revocation", reached_all(groups, v, Some(peers), start)).await??;
        samples.extend(waits.iter().map(|d| d.as_secs_f64() * 1e3));
        let owner = groups.iter().position(|g| g.holds(&victim));
        if let Some(i) = owner {
            ask_all(&mut groups[i..=i], &Request::Stop(victim)).await?;
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(Measured {
        all_connected_secs,
        directory_change_secs,
        rotation_secs,
        samples,
    })
}
