//! Authority replicas under failure: a three-member etcd cluster on loopback, N `cpclink
//! keymgr` replica processes on it, and key agents (in this process, over real QUIC)
//! enrolling, rotating and granting SAs to each other while the leader is killed (-9) and
//! restarted, frozen (SIGSTOP) past its lease and resumed, and etcd members are frozen.
//! Each agent is given every replica's address, as an operator would configure it, and
//! finds the leader (and the next one, after a failover) by itself.
//!
//! After every step the invariants are checked ([`Run::check`]); each one broken is named
//! in [`ReplicaReport::violations`]. `cpclink bench keymgr --replicas 3 --kills 20` runs
//! this with kills only and reports the failover time (the kill to the first write the new
//! leader accepts); `control/tests/authority_chaos.rs` runs it with the whole chaos loop.
//! Needs the `etcd` binary; needs root for nothing.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cpclink_keymgr::agent::{generation_at, AgentOptions, AuthorityLink, KeyAgent};
use cpclink_keymgr::authority::admin_request;
use cpclink_keymgr::proto::{AdminReply, AdminRequest};
use cpclink_keymgr::seal::Kek;
use cpclink_keymgr::store::{AnyStore, Election, EtcdStore, MemoryStore, Store};
use serde::Serialize;

use crate::Error;

type Result<T> = std::result::Result<T, Error>;

/// The etcd prefix the replicas share (the authority's default).
const PREFIX: &str = "/cpclink/keymgr/";
/// The replicas' lease: etcd's minimum, so a failover takes about this long.
const ELECTION_TTL_SECS: u64 = 2;
/// The KEK every replica and agent seals with (a bench: not a secret).
const KEK: [u8; 32] = [0x5a; 32];
/// How long a step may wait for the cluster to settle before it counts as a violation.
const SETTLE: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct ReplicaPlan {
    /// The `cpclink` binary the replicas run as.
    pub binary: PathBuf,
    /// Authority replicas.
    pub replicas: usize,
    /// Leader kills (-9, then a restart) to make.
    pub kills: usize,
    /// Also freeze the leader past its lease and freeze etcd members, between kills.
    pub chaos: bool,
    /// Seeds the choice and order of steps; printed, so a failure replays.
    pub seed: u64,
    /// Agents enrolled in all (two at the start, the others during the run).
    pub agents: usize,
}

/// Failover times, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Longest.
    pub max: f64,
    /// Samples.
    pub samples: usize,
}

impl FailoverMs {
    /// The percentiles of `samples`.
    fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        Self {
            p50: crate::keyplane::percentile(&samples, 0.5),
            p99: crate::keyplane::percentile(&samples, 0.99),
            max: samples.last().copied().unwrap_or(0.0),
            samples: samples.len(),
        }
    }
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaReport {
    /// Authority replicas.
    pub replicas: usize,
    /// Leader kills made.
    pub kills: usize,
    /// Leaders frozen past their lease and resumed.
    pub pauses: usize,
    /// etcd members frozen and resumed.
    pub etcd_stops: usize,
    /// The seed the steps were drawn from.
    pub seed: u64,
    /// From killing the leader to the first write the new leader accepted.
    pub failover_ms: FailoverMs,
    /// From killing (or freezing) the leader to every agent following the new leader,
    /// each agent finding it by itself through its list of replica addresses.
    pub agents_back_ms: FailoverMs,
    /// Agents enrolled (each acknowledged enrolment is checked after every step).
    pub enrolled: usize,
    /// Distinct SA grants checked for reuse of (appliance, generation, SPI).
    pub grants: usize,
    /// Rotations ordered before a failover and checked to complete after it.
    pub rotations_across_failover: usize,
    /// Writes sent to a resumed former leader that it did not refuse (each then checked
    /// not to have landed).
    pub stale_writes_accepted: usize,
    /// Each invariant broken, named; empty when all held.
    pub violations: Vec<String>,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
}

pub use cpclink_keymgr::store::loopback::etcd_installed;
use cpclink_keymgr::store::loopback::EtcdCluster;

/// A small deterministic generator (splitmix64): the steps replay from the seed.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn fail(what: impl std::fmt::Display) -> Error {
    Error::KeyPlane(what.to_string())
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::KeyPlaneIo { context, source }
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map_err(io("finding a free UDP port"))?
        .port())
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

/// One process that can be killed, frozen, resumed and started again as it was.
#[derive(Debug)]
struct Proc {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    frozen: bool,
}

impl Proc {
    fn start(program: PathBuf, args: Vec<String>, log: PathBuf) -> Result<Self> {
        let mut p = Self {
            program,
            args,
            log,
            child: None,
            frozen: false,
        };
        p.restart()?;
        Ok(p)
    }

    fn restart(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io("opening a process log"))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io("starting a process"))?;
        self.child = Some(child);
        self.frozen = false;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.frozen = false;
    }

    fn freeze(&mut self) {
        if let Some(c) = &self.child {
            signal(c, "-STOP");
            self.frozen = true;
        }
    }

    fn resume(&mut self) {
        if let Some(c) = &self.child {
            signal(c, "-CONT");
        }
        self.frozen = false;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A frozen process must run again to die and free its ports.
        self.resume();
        self.kill();
    }
}

/// One authority replica process.
struct Replica {
    id: String,
    /// Its control address, as every agent lists it.
    addr: SocketAddr,
    state_dir: PathBuf,
    proc: Proc,
}

/// The cluster under test and what was promised so far.
struct Run {
    dir: tempfile::TempDir,
    etcd: EtcdCluster,
    store: EtcdStore,
    election: Election,
    replicas: Vec<Replica>,
    ca: rustls::pki_types::CertificateDer<'static>,
    agents: HashMap<String, KeyAgent>,
    /// Spent tokens, by appliance: each must be refused if redeemed again.
    tokens: Vec<(String, String)>,
    /// Every (granting appliance, generation, SPI) seen.
    grants: HashSet<(String, u8, u32)>,
    violations: Vec<String>,
    rotations_checked: usize,
    stale_accepted: usize,
    probes: u64,
}

/// Runs `plan` and reports what it measured and found.
pub async fn run(plan: &ReplicaPlan) -> Result<ReplicaReport> {
    let started = Instant::now();
    let mut run = Run::start(plan).await?;
    let mut draw = Draw(plan.seed);
    let (mut kills, mut pauses, mut etcd_stops) = (0, 0, 0);
    let mut failovers = Vec::new();
    let mut agents_back = Vec::new();
    while kills < plan.kills {
        // With chaos, one step in eight freezes the leader and one freezes an etcd member.
        let step = if plan.chaos { draw.below(8) } else { 0 };
        match step {
            6 => {
                agents_back.extend(run.pause_leader().await?);
                pauses += 1;
            }
            7 => {
                let member = draw.below(run.etcd.members.len());
                run.freeze_etcd(member).await?;
                etcd_stops += 1;
            }
            _ => {
                let (failover, back) = run.kill_leader().await?;
                failovers.push(failover);
                agents_back.extend(back);
                kills += 1;
                if run.agents.len() < plan.agents {
                    run.enrol(&format!("agent-{}", run.agents.len())).await?;
                }
            }
        }
        run.check().await;
        if !run.violations.is_empty() {
            break;
        }
    }
    Ok(ReplicaReport {
        replicas: plan.replicas,
        kills,
        pauses,
        etcd_stops,
        seed: plan.seed,
        failover_ms: FailoverMs::of(failovers),
        agents_back_ms: FailoverMs::of(agents_back),
        enrolled: run.agents.len(),
        grants: run.grants.len(),
        rotations_across_failover: run.rotations_checked,
        stale_writes_accepted: run.stale_accepted,
        violations: std::mem::take(&mut run.violations),
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl Run {
    async fn start(plan: &ReplicaPlan) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(io("creating a temporary directory"))?;
        let etcd = EtcdCluster::start_in(dir.path(), 3)?;
        let store = etcd.connect(PREFIX).await?;
        let kek_file = dir.path().join("kek");
        std::fs::write(&kek_file, hex::encode(KEK)).map_err(io("writing the KEK"))?;
        let mut replicas = Vec::new();
        for i in 0..plan.replicas {
            let id = format!("r{i}");
            let state_dir = dir.path().join(&id);
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()?));
            let endpoints: Vec<String> = etcd.urls().iter().map(|u| format!("{u:?}")).collect();
            let config = format!(
                "listen = \"{listen}\"\nstate_dir = {:?}\nkek_file = {:?}\n\
                 rotation_interval_secs = 86400\n\n[store]\nkind = \"etcd\"\n\
                 endpoints = [{}]\ncandidate = \"{id}\"\nelection_ttl_secs = {ELECTION_TTL_SECS}\n",
                state_dir.to_string_lossy(),
                kek_file.to_string_lossy(),
                endpoints.join(", ")
            );
            let config_file = dir.path().join(format!("{id}.toml"));
            std::fs::write(&config_file, config).map_err(io("writing a replica's config"))?;
            let args = ["keymgr", "--config", &config_file.to_string_lossy()]
                .map(String::from)
                .to_vec();
            let log = dir.path().join(format!("{id}.log"));
            replicas.push(Replica {
                id,
                addr: listen,
                state_dir,
                proc: Proc::start(plan.binary.clone(), args, log)?,
            });
        }
        let election = store.election("authority");
        let mut run = Self {
            ca: rustls::pki_types::CertificateDer::from(Vec::new()),
            dir,
            etcd,
            election,
            store,
            replicas,
            agents: HashMap::new(),
            tokens: Vec::new(),
            grants: HashSet::new(),
            violations: Vec::new(),
            rotations_checked: 0,
            stale_accepted: 0,
            probes: 0,
        };
        let leader = run.leader(None).await?;
        let pem = wait_for(SETTLE, || {
            std::fs::read_to_string(run.replicas[leader].state_dir.join("ca.pem")).ok()
        })
        .await
        .ok_or_else(|| fail("no replica wrote ca.pem"))?;
        run.ca = cpclink_keymgr::pki::cert_from_pem(&pem)?;
        for i in 0..plan.agents.min(2) {
            run.enrol(&format!("agent-{i}")).await?;
        }
        Ok(run)
    }

    /// Where the logs and state of this run are (printed when a check fails).
    fn place(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The index of the replica that leads now (other than `not`), once one does and its
    /// admin socket accepts writes.
    async fn leader(&mut self, not: Option<usize>) -> Result<usize> {
        let deadline = Instant::now() + SETTLE;
        loop {
            if let Some(i) = self.elected().await.filter(|i| Some(*i) != not) {
                if self.probe(i).await {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "no leader accepted a write within {}s (logs in {})",
                    SETTLE.as_secs(),
                    self.place()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The replica the election names as leader now, if any (it may not accept writes yet).
    async fn elected(&self) -> Option<usize> {
        let l = self.election.leader().await.ok()??;
        self.replicas.iter().position(|r| r.id == l.candidate.id)
    }

    /// The leader's control address (of the replica that leads and accepted a write).
    async fn leader_addr(&mut self) -> Result<SocketAddr> {
        let i = self.leader(None).await?;
        Ok(self.replicas[i].addr)
    }

    /// Asks replica `i` for a write (an audited token): whether it accepted it.
    async fn probe(&mut self, i: usize) -> bool {
        self.probes += 1;
        let req = AdminRequest::CreateToken {
            appliance: format!("probe-{}", self.probes),
            centre: "bench".into(),
            tenant: "bench".into(),
            ttl_secs: Some(60),
            prefixes: Vec::new(),
        };
        let asked = admin_request(&self.replicas[i].state_dir, &req);
        matches!(
            tokio::time::timeout(Duration::from_secs(3), asked).await,
            Ok(Ok(AdminReply::Token(_)))
        )
    }

    /// Orders a rotation on replica `i`; its number.
    async fn rotate(&self, i: usize) -> Result<u64> {
        let asked = admin_request(&self.replicas[i].state_dir, &AdminRequest::Rotate);
        match tokio::time::timeout(Duration::from_secs(5), asked).await {
            Ok(Ok(AdminReply::Done(r))) => Ok(r),
            other => Err(fail(format!("rotation order refused: {other:?}"))),
        }
    }

    /// Mints a token on the leader and starts an agent with it.
    async fn enrol(&mut self, id: &str) -> Result<()> {
        let leader = self.leader(None).await?;
        let req = AdminRequest::CreateToken {
            appliance: id.to_owned(),
            centre: "bench".into(),
            tenant: "bench".into(),
            ttl_secs: Some(600),
            prefixes: Vec::new(),
        };
        let token = match admin_request(&self.replicas[leader].state_dir, &req).await? {
            AdminReply::Token(t) => t,
            other => return Err(fail(format!("token for {id} refused: {other:?}"))),
        };
        let state_dir = self.dir.path().join("agents").join(id);
        let agent = self.start_agent(id, &state_dir, token.clone()).await?;
        self.tokens.push((id.to_owned(), token));
        self.agents.insert(id.to_owned(), agent);
        Ok(())
    }

    /// Starts agent `id` with every replica's address, beginning at a different replica
    /// for each agent (most enrol through a follower's redirect), and waits for its feed.
    async fn start_agent(&mut self, id: &str, state_dir: &Path, token: String) -> Result<KeyAgent> {
        let deadline = Instant::now() + SETTLE;
        let store = MemoryStore::default();
        let first = self.agents.len();
        let n = self.replicas.len();
        let authorities: Vec<SocketAddr> = (0..n)
            .map(|i| self.replicas[(first + i) % n].addr)
            .collect();
        loop {
            let opts = AgentOptions {
                appliance: id.to_owned(),
                authorities: authorities.clone(),
                listen: (Ipv4Addr::LOCALHOST, 0).into(),
                state_dir: state_dir.to_owned(),
                kek: Kek::from_bytes(KEK),
                ca_cert: self.ca.clone(),
                token: Some(zeroize::Zeroizing::new(token.clone())),
                endpoints: Vec::new(),
                capabilities: Vec::new(),
                prefixes: Vec::new(),
                suite: cpclink_dataplane::crypto::Suite::AesGcm256,
                sa_lifetime: Duration::from_secs(600),
                rekey_grace: Duration::from_millis(50),
            };
            let starting = KeyAgent::start_with_store(opts, AnyStore::Memory(store.clone()));
            let started = tokio::time::timeout(Duration::from_secs(10), starting)
                .await
                .unwrap_or_else(|_| Err(cpclink_keymgr::Error::Timeout(format!("starting {id}"))));
            match started {
                Ok((agent, mut events)) => {
                    // No data plane here: the events are drained.
                    tokio::spawn(async move { while events.recv().await.is_some() {} });
                    let mut link = agent.authority_link();
                    let connected = tokio::time::timeout(
                        Duration::from_secs(10),
                        link.wait_for(|l| *l == AuthorityLink::Connected),
                    )
                    .await;
                    if matches!(connected, Ok(Ok(_))) {
                        return Ok(agent);
                    }
                    agent.shutdown();
                }
                // Every replica may be between leaders for a moment.
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("starting {id} failed, retrying: {e}");
                }
                Err(e) => return Err(e.into()),
            }
            if Instant::now() > deadline {
                return Err(fail(format!("{id} did not connect to the leader")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every agent follows the replica that leads now, by itself: the time
    /// each took from `since`, in milliseconds. The leader is read again on every look (an
    /// etcd member's freeze may move it meanwhile). One that does not follow within the
    /// settle time is a violation (agents fail over through their lists of replica
    /// addresses).
    async fn agents_follow(&mut self, since: Instant) -> Result<Vec<f64>> {
        // A leader that accepts writes first, so the wait below measures the agents.
        self.leader(None).await?;
        let deadline = Instant::now() + SETTLE;
        let mut back: HashMap<String, f64> = HashMap::new();
        loop {
            if let Some(leader) = self.elected().await.map(|i| self.replicas[i].addr) {
                for (id, agent) in &self.agents {
                    if !back.contains_key(id)
                        && agent.authority_connected()
                        && agent.current_authority() == leader
                    {
                        back.insert(id.clone(), since.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            if back.len() == self.agents.len() {
                return Ok(back.into_values().collect());
            }
            if Instant::now() > deadline {
                for (id, agent) in &self.agents {
                    if !back.contains_key(id) {
                        self.violations.push(format!(
                            "{id} did not follow the new leader within {}s (it follows {})",
                            SETTLE.as_secs(),
                            agent.current_authority()
                        ));
                    }
                }
                return Ok(back.into_values().collect());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Orders a rotation, kills the leader (-9), times the first write another replica
    /// accepts, restarts the killed one, and checks the rotation completes under the new
    /// leader. Returns the failover time and each agent's time to follow the new leader,
    /// in milliseconds.
    async fn kill_leader(&mut self) -> Result<(f64, Vec<f64>)> {
        let old = self.leader(None).await?;
        let ordered = self.rotate(old).await?;
        let killed = Instant::now();
        self.replicas[old].proc.kill();
        let new = self.leader(Some(old)).await?;
        let failover = killed.elapsed().as_secs_f64() * 1e3;
        self.replicas[old].proc.restart()?;
        tracing::info!(
            "killed {}, {} took over in {failover:.0} ms",
            self.replicas[old].id,
            self.replicas[new].id
        );
        let back = self.agents_follow(killed).await?;
        self.rotation_completes(ordered).await;
        Ok((failover, back))
    }

    /// Freezes the leader past its lease, waits for another to lead, resumes it and asks
    /// it for a write at once (it may still believe it leads): that write must not land.
    /// Returns each agent's time from the freeze to following the new leader, milliseconds.
    async fn pause_leader(&mut self) -> Result<Vec<f64>> {
        let old = self.leader(None).await?;
        let ordered = self.rotate(old).await?;
        let frozen = Instant::now();
        self.replicas[old].proc.freeze();
        let new = self.leader(Some(old)).await;
        self.replicas[old].proc.resume();
        new?;
        if self.probe(old).await {
            // Refused by etcd or not, it must not have landed: the check of terms below
            // finds a line by a former leader after its successor's.
            self.stale_accepted += 1;
        }
        let back = self.agents_follow(frozen).await?;
        self.rotation_completes(ordered).await;
        Ok(back)
    }

    /// Freezes etcd member `member` for a while, writing through the leader meanwhile.
    async fn freeze_etcd(&mut self, member: usize) -> Result<()> {
        self.etcd.members[member].pause();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let wrote = self.leader(None).await;
        self.etcd.members[member].resume();
        wrote?;
        self.agents_follow(Instant::now()).await?;
        Ok(())
    }

    /// Waits until every agent's acknowledgement of `rotation` (or a later one) is stored.
    async fn rotation_completes(&mut self, rotation: u64) {
        let ids: HashSet<String> = self.agents.keys().cloned().collect();
        let store = self.store.clone();
        let done = wait_for_async(SETTLE, || {
            let (store, ids) = (store.clone(), ids.clone());
            async move {
                let acks = store.scan("rotated/").await.ok()?;
                let obeyed: HashSet<String> = acks
                    .into_iter()
                    .filter_map(|(k, v)| {
                        let (r, _epoch): (u64, u64) = serde_json::from_slice(&v).ok()?;
                        (r >= rotation).then(|| k.trim_start_matches("rotated/").to_owned())
                    })
                    .collect();
                ids.is_subset(&obeyed).then_some(())
            }
        })
        .await;
        match done {
            Some(()) => self.rotations_checked += 1,
            None => self.violations.push(format!(
                "rotation {rotation}, ordered before a failover, was not acknowledged by every agent within {}s after it",
                SETTLE.as_secs()
            )),
        }
    }

    /// Checks every invariant; each broken one is added to the violations.
    async fn check(&mut self) {
        let found = self.check_all().await;
        for v in &found {
            tracing::error!("violation: {v} (logs in {})", self.place());
        }
        self.violations.extend(found);
    }

    async fn check_all(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        found.extend(self.check_tokens().await);
        found.extend(self.check_enrolments().await);
        found.extend(self.check_grants().await);
        found.extend(self.check_audit().await);
        found
    }

    /// No token is redeemed twice: the last one spent is refused again.
    async fn check_tokens(&mut self) -> Vec<String> {
        let Some((id, token)) = self.tokens.last().cloned() else {
            return Vec::new();
        };
        let Ok(addr) = self.leader_addr().await else {
            return vec!["no leader to redeem a token at".into()];
        };
        match cpclink_keymgr::agent::enrol_only(addr, &self.ca, &id, &token).await {
            Ok(_) => vec![format!("token of {id} redeemed twice")],
            Err(_) => Vec::new(),
        }
    }

    /// Every acknowledged enrolment is still listed, not revoked.
    async fn check_enrolments(&self) -> Vec<String> {
        let listed: HashMap<String, Vec<u8>> = match self.store.scan("appliance/").await {
            Ok(l) => l.into_iter().collect(),
            Err(e) => return vec![format!("reading the directory failed: {e}")],
        };
        self.agents
            .keys()
            .filter(|id| !listed.contains_key(&format!("appliance/{id}")))
            .map(|id| format!("acknowledged enrolment of {id} lost"))
            .collect()
    }

    /// No (appliance, generation, SPI) granted twice: each agent asks the next for an SA.
    async fn check_grants(&mut self) -> Vec<String> {
        let mut ids: Vec<String> = self.agents.keys().cloned().collect();
        ids.sort();
        let mut found = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let peer = &ids[(i + 1) % ids.len()];
            if peer == id {
                continue;
            }
            let Some(a) = self.agents.get(id) else {
                continue;
            };
            // A peer's address reaches the asker through the new leader's directory.
            let mut granted = None;
            for _ in 0..20 {
                match a.request_sa(peer).await {
                    Ok(g) => {
                        granted = Some(g);
                        break;
                    }
                    Err(e) => tracing::debug!("{id} asking {peer} for an SA: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let Some(g) = granted else {
                found.push(format!("{id} got no SA from {peer} (availability)"));
                continue;
            };
            let grant = (peer.clone(), generation_at(g.epoch), g.spi.0);
            if !self.grants.insert(grant.clone()) {
                found.push(format!(
                    "({}, generation {}, SPI {:#x}) granted twice",
                    grant.0, grant.1, grant.2
                ));
            }
        }
        found
    }

    /// The audit chain verifies (no fork, gap or edit), and no line of a former leader's
    /// term comes after a line of its successor's.
    async fn check_audit(&self) -> Vec<String> {
        let records = match cpclink_keymgr::audit::store_records(&self.store).await {
            Ok(r) => r,
            Err(e) => return vec![format!("audit chain: {e}")],
        };
        let mut newest = 0;
        let mut found = Vec::new();
        for (record, term) in records {
            if term != 0 && term < newest {
                found.push(format!(
                    "audit line {} was written by a former leader (term {term}) after term {newest}",
                    record.seq
                ));
            }
            newest = newest.max(term);
        }
        found
    }
}

/// Polls `f` until it answers, at most `limit`.
async fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_for`] with an asynchronous question.
async fn wait_for_async<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f().await {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The seed from `CPCLINK_CHAOS_SEED`, or one from the clock; printed either way.
pub fn seed_from_env() -> u64 {
    let seed = std::env::var("CPCLINK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("replica chaos seed: {seed} (replay with CPCLINK_CHAOS_SEED={seed})");
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_replay_from_the_seed() {
        let a: Vec<usize> = {
            let mut d = Draw(42);
            (0..20).map(|_| d.below(6)).collect()
        };
        let mut d = Draw(42);
        assert_eq!(a, (0..20).map(|_| d.below(6)).collect::<Vec<_>>());
        assert!(a.iter().any(|&x| x != a[0]), "draws vary: {a:?}");
    }
}
