//! The authority: CA and enrolment, the directory and policy, rotation orders, revocation
//! and the audit log, serving appliances over QUIC and operators over a local socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cpclink_diagnostics::Diagnostic;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Mutex};
use zeroize::Zeroizing;

use crate::audit::{ApplianceReport, AuditEvent, AuditLog, AuditRecord, StoreChain, Verified};
use crate::config::{AuthorityConfig, StoreConfig, ROTATION_INTERVAL_SECS, TOKEN_TTL_SECS};
use crate::directory::{
    ApplianceEntry, Change, Delta, Directory, Fanout, Master, Rule, SnapshotSource,
};
use crate::metrics::ReceiptLimiter;
use crate::pki::{self, Ca, Identity};
use crate::prefix::{Assignments, InnerPrefix, Refusal};
use crate::proto::{self, AdminReply, AdminRequest, Message, SNAPSHOT_CHUNK};
use crate::seal::{random_bytes, EscrowKey, Kek};
use crate::store::{self, AnyStore, Candidate, EtcdStore, RedbStore, ReplicaStore, Store, Write};
use crate::token::{self, TokenClaims};
use crate::{tls, Error, Result};

mod api;
mod assign;
mod audit_writer;
mod material;
mod renew;
mod replace;
mod replica;

/// QUIC application close code: the appliance was revoked.
pub const CLOSE_REVOKED: u32 = 0x52;
/// QUIC application close code: the authority does not list the appliance (a store that
/// lost it, or an agent of another authority); unlike revocation, the agent retries.
pub const CLOSE_UNKNOWN: u32 = 0x55;
/// QUIC application close code: this replica is not the cluster's leader; the close reason
/// carries the leader's control address as text (empty when no leader is known), which the
/// agent tries next.
pub const CLOSE_NOT_LEADER: u32 = 0x4c;
/// QUIC application close code: protocol violation.
pub const CLOSE_PROTOCOL: u32 = 0x50;

/// Files the authority keeps in its state directory.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// The CA certificate (PEM), handed to appliances.
    pub ca_cert: PathBuf,
    ca_key: PathBuf,
    token_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    escrow_key: PathBuf,
    /// The audit log.
    pub audit: PathBuf,
    /// The operators' admin socket.
    pub admin_socket: PathBuf,
    redb: PathBuf,
}

impl StatePaths {
    /// The paths under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            ca_cert: state_dir.join("ca.pem"),
            ca_key: state_dir.join("ca.key.sealed"),
            token_key: state_dir.join("token.key.sealed"),
            server_cert: state_dir.join("authority.pem"),
            server_key: state_dir.join("authority.key.sealed"),
            escrow_key: state_dir.join("escrow.key.sealed"),
            audit: state_dir.join("audit.jsonl"),
            admin_socket: state_dir.join("admin.sock"),
            redb: state_dir.join("authority.redb"),
        }
    }
}

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let ctx = |e| Error::io(format!("writing {}", path.display()), e);
    std::fs::write(&tmp, bytes).map_err(ctx)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(ctx)?;
    std::fs::rename(&tmp, path).map_err(ctx)?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory is.
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(ctx)?;
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check_id(appliance: &str) -> Result<()> {
    if pki::valid_id(appliance) {
        return Ok(());
    }
    Err(Diagnostic::new(
        "<command line>",
        "APPLIANCE",
        format!("{appliance:?} is not an appliance id"),
    )
    .with_fix("use 1-63 of a-z, 0-9 and '-'")
    .into())
}

/// Who an offline command acts for, in the audit log.
const OFFLINE: &str = "command line (authority not running)";

/// Mints an enrolment token from the sealed token key in `state_dir` while the authority
/// is not running (with the daemon up, ask it: [`AdminRequest::CreateToken`]). Assigns
/// `prefixes` to the appliance first (refused, minting nothing, if one overlaps another
/// appliance's) and audits both. Returns the token.
pub async fn create_token(
    cfg: &AuthorityConfig,
    appliance: &str,
    centre: &str,
    tenant: &str,
    ttl_secs: Option<u64>,
    prefixes: &[InnerPrefix],
) -> Result<String> {
    check_id(appliance)?;
    let ttl = ttl_secs.unwrap_or(cfg.token_ttl_secs);
    if !TOKEN_TTL_SECS.contains(&ttl) {
        return Err(Diagnostic::new(
            "<command line>",
            "--ttl",
            format!("{ttl} seconds is out of range"),
        )
        .with_fix(format!(
            "give {}..={} seconds",
            TOKEN_TTL_SECS.start(),
            TOKEN_TTL_SECS.end()
        ))
        .into());
    }
    let paths = StatePaths::new(&cfg.state_dir);
    let kek = Kek::load(&cfg.kek_file, "kek_file")?;
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| Error::io(format!("creating {}", cfg.state_dir.display()), e))?;
    let store = open_store(cfg, &paths).await?;
    let key = material::load(&store, &paths, &kek, cfg.ca.as_ref())
        .await?
        .token_key;
    let mut events = Vec::new();
    let listed: Option<ApplianceEntry> =
        store::get_json(&store, &format!("appliance/{appliance}")).await?;
    if listed.is_some_and(|e| e.revoked) {
        return Err(Error::ReplaceRequired {
            appliance: appliance.to_owned(),
        });
    }
    if !prefixes.is_empty() {
        let held = load_assignments(&store)
            .await?
            .with_added(appliance, prefixes)
            .map_err(Error::Prefix)?;
        store
            .put(&assignment_key(appliance), &store::json(&held))
            .await?;
        events.push(AuditEvent::PrefixesAssigned {
            appliance: appliance.to_owned(),
            prefixes: prefixes.to_vec(),
            by: OFFLINE.into(),
        });
    }
    let claims = TokenClaims {
        id: hex::encode(*random_bytes::<16>()?),
        appliance: appliance.to_owned(),
        centre: centre.to_owned(),
        tenant: tenant.to_owned(),
        expires: now_secs().saturating_add(ttl),
    };
    events.push(AuditEvent::TokenCreated {
        token_id: claims.id.clone(),
        appliance: appliance.to_owned(),
        by: OFFLINE.into(),
        tenant: claims.tenant.clone(),
        expires: claims.expires,
    });
    match &store {
        AnyStore::Replica(r) => {
            // Offline, outside the election: the chain's seq guard still keeps it linear.
            let unfenced = AnyStore::Etcd(Box::new(r.unfenced().clone()));
            append_to_store(&unfenced, &mut None, events, 0).await?;
        }
        AnyStore::Etcd(_) => {
            append_to_store(&store, &mut None, events, 0).await?;
        }
        _ => AuditLog::open(&paths.audit)?.append_all(events)?,
    }
    Ok(token::mint(&key, &claims))
}

/// Opens the configured store.
async fn open_store(cfg: &AuthorityConfig, paths: &StatePaths) -> Result<AnyStore> {
    Ok(match &cfg.store {
        StoreConfig::Redb { path } => {
            AnyStore::Redb(RedbStore::open(path.as_deref().unwrap_or(&paths.redb))?)
        }
        StoreConfig::Etcd {
            endpoints,
            prefix,
            candidate,
            ..
        } => {
            let etcd = EtcdStore::connect(endpoints, prefix).await?;
            match candidate {
                Some(_) => AnyStore::Replica(Box::new(ReplicaStore::new(etcd))),
                None => AnyStore::Etcd(Box::new(etcd)),
            }
        }
    })
}

/// This replica as a candidate: its id, its control address and its API's URL.
fn candidate(cfg: &AuthorityConfig, control: SocketAddr) -> Candidate {
    let id = match &cfg.store {
        StoreConfig::Etcd {
            candidate: Some(id),
            ..
        } => id.clone(),
        _ => String::new(),
    };
    Candidate {
        id,
        address: control.to_string(),
        api: cfg
            .api
            .as_ref()
            .and_then(|raw| {
                raw.clone()
                    .check(&cpclink_diagnostics::ConfigText::new("[api]", ""))
                    .ok()
            })
            .map(|a| format!("https://{}", a.listen)),
    }
}

/// The leader's lease as configured.
fn election_ttl(cfg: &AuthorityConfig) -> Duration {
    match &cfg.store {
        StoreConfig::Etcd {
            election_ttl_secs, ..
        } => Duration::from_secs(*election_ttl_secs),
        StoreConfig::Redb { .. } => Duration::from_secs(10),
    }
}

/// The store key of `appliance`'s prefix assignment.
fn assignment_key(appliance: &str) -> String {
    format!("prefixes/{appliance}")
}

async fn load_assignments(store: &AnyStore) -> Result<Assignments> {
    let mut by_appliance = std::collections::BTreeMap::new();
    for (key, bytes) in store.scan("prefixes/").await? {
        let held: Vec<InnerPrefix> =
            serde_json::from_slice(&bytes).map_err(|e| Error::CorruptRecord {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        let id = key.trim_start_matches("prefixes/").to_owned();
        by_appliance.insert(id, held);
    }
    Ok(Assignments::new(by_appliance))
}

/// Where each appliance's last rotation acknowledgement is stored: `(rotation, epoch)`.
const ACK_PREFIX: &str = "rotated/";

/// The stored rotation acknowledgements, `(rotation, epoch)` by appliance.
async fn load_acks(store: &AnyStore) -> Result<HashMap<String, (u64, u64)>> {
    let mut acks = HashMap::new();
    for (key, bytes) in store.scan(ACK_PREFIX).await? {
        let ack = serde_json::from_slice(&bytes).map_err(|e| Error::CorruptRecord {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        acks.insert(key.trim_start_matches(ACK_PREFIX).to_owned(), ack);
    }
    Ok(acks)
}

/// The directory as the store holds it.
async fn load_directory(store: &AnyStore) -> Result<Directory> {
    let mut dir = Directory::default();
    for (key, bytes) in store.scan("appliance/").await? {
        let e: ApplianceEntry =
            serde_json::from_slice(&bytes).map_err(|e| Error::CorruptRecord {
                key,
                reason: e.to_string(),
            })?;
        dir.appliances.insert(e.id.clone(), e);
    }
    dir.version = store::get_json(store, "meta/version").await?.unwrap_or(0);
    dir.rules = store::get_json(store, "meta/rules")
        .await?
        .unwrap_or_default();
    Ok(dir)
}

/// When the next rotation is due (unix seconds), as the store's schedule says. The
/// schedule is kept in the store: a restart (or a new leader) neither postpones a rotation
/// that was due nor skips one that fell due meanwhile.
async fn scheduled_rotation(store: &AnyStore, every: Duration) -> Result<u64> {
    Ok(
        match store::get_json::<u64>(store, "meta/next_rotation").await? {
            Some(t) if t <= now_secs().saturating_add(every.as_secs()) => t,
            stored => {
                let t = now_secs().saturating_add(every.as_secs());
                if let Some(absurd) = stored {
                    // Further away than one interval: written by a bad clock or an
                    // out-of-range interval. Keeping it would postpone rotation forever.
                    tracing::warn!(
                        "stored next rotation {absurd} is more than rotation_interval_secs away; rescheduling it for {t}"
                    );
                }
                store.put("meta/next_rotation", &store::json(&t)).await?;
                t
            }
        },
    )
}

/// Where an authority's audit chain is written.
enum AuditSink {
    /// The log file in the state directory (one authority).
    File(Arc<StdMutex<AuditLog>>),
    /// The store (replicas on etcd); `None` until the chain's tip is read again (at start
    /// and whenever this replica takes the lead, since others appended meanwhile).
    Store(Option<StoreChain>),
}

/// Appends `events` to the store's chain, reading its tip again when another writer
/// appended first; `term` is recorded with each line. Returns the transactions applied.
async fn append_to_store(
    store: &AnyStore,
    tip: &mut Option<StoreChain>,
    events: Vec<AuditEvent>,
    term: i64,
) -> Result<u64> {
    for _ in 0..3 {
        let chain = match tip {
            Some(c) => c,
            None => tip.insert(StoreChain::load(store).await?),
        };
        let before = chain.writes();
        if chain.append(store, events.clone(), term).await? {
            return Ok(chain.writes() - before);
        }
        *tip = None;
    }
    Err(Error::io(
        "audit chain in the store",
        std::io::Error::other("another writer kept appending first; retry"),
    ))
}

/// Verifies the audit chain of the authority configured by `cfg`: its log file, or the
/// store's chain when replicas share etcd. Returns where the chain is, for messages.
pub async fn verify_audit(cfg: &AuthorityConfig) -> Result<(String, Verified)> {
    match &cfg.store {
        StoreConfig::Etcd {
            endpoints, prefix, ..
        } => {
            let store = EtcdStore::connect(endpoints, prefix).await?;
            let verified = crate::audit::verify_store(&store).await?;
            Ok((format!("etcd {prefix}audit/"), verified))
        }
        StoreConfig::Redb { .. } => {
            let path = StatePaths::new(&cfg.state_dir).audit;
            let verified = crate::audit::verify(&path)?;
            Ok((path.display().to_string(), verified))
        }
    }
}

/// What an agent publishes when it subscribes to its feed.
#[derive(Debug)]
struct Published {
    control: String,
    endpoints: Vec<String>,
    capabilities: Vec<String>,
    prefixes: Vec<InnerPrefix>,
}

/// Pushes queued per subscriber before it counts as lagging (and gets a fresh snapshot
/// instead of what it missed).
const FEED_QUEUE: usize = 1024;

#[derive(Debug)]
enum Push {
    Delta(Arc<Delta>),
    Rotate(u64),
    /// The change was too large to send as a delta: send a fresh snapshot.
    Resnapshot,
    /// The announced prefixes now refused (an assignment changed the answer).
    Refused(Vec<Refusal>),
}

/// One appliance's directory feed, as the authority pushes to it.
struct Subscriber {
    /// Tells this feed from a later one of the same appliance.
    serial: u64,
    queue: mpsc::Sender<Push>,
    /// Set when a push did not fit the queue: the feed resnapshots before going on.
    lagged: Arc<AtomicBool>,
}

impl Subscriber {
    fn push(&self, push: Push) {
        match self.queue.try_send(push) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => self.lagged.store(true, Ordering::Release),
        }
    }
}

/// Audit events waiting for the next group commit, in order, and who waits for them: told
/// the sequence number of the last of them once it is durable.
type QueuedAudit = (
    Vec<AuditEvent>,
    tokio::sync::oneshot::Sender<std::result::Result<u64, String>>,
);

struct State {
    master: Master,
    rotation: u64,
    /// The operator's prefix assignments, as stored.
    assignments: Assignments,
    /// What each appliance's agent last announced (since this authority started).
    announced: HashMap<String, Vec<InnerPrefix>>,
    /// What of it is refused now, by appliance; a refusal not already here is audited.
    refused: HashMap<String, Vec<Refusal>>,
}

struct Inner {
    store: AnyStore,
    /// This replica's election, when replicas share etcd (`[store] candidate`).
    replication: Option<replica::Replication>,
    /// Where audit lines go; written only by the audit writer, which holds it while a group
    /// is written (readers of the chain's counts and path lock it briefly).
    audit: Mutex<AuditSink>,
    /// To the audit writer, which appends all that waits here as one group.
    audit_queue: mpsc::UnboundedSender<QueuedAudit>,
    /// Durable writes (fsyncs of the log, or store transactions) the audit writer made.
    audit_writes: AtomicU64,
    /// Escrow boxes received and not yet stored, newest per appliance.
    escrow_pending: StdMutex<HashMap<String, (u64, Vec<u8>)>>,
    /// Rotation acknowledgements received and not yet stored, `(rotation, epoch)` by
    /// appliance: stored so a leader elected later knows who has obeyed which order.
    acks_pending: StdMutex<HashMap<String, (u64, u64)>>,
    escrow_queued: tokio::sync::Notify,
    ca: Ca,
    ca_cert: rustls::pki_types::CertificateDer<'static>,
    token_key: Zeroizing<[u8; 32]>,
    escrow: EscrowKey,
    escrow_public: Vec<u8>,
    cert_lifetime: renew::CertLifetime,
    token_ttl: Duration,
    state: Mutex<State>,
    subscribers: StdMutex<HashMap<String, Subscriber>>,
    next_serial: AtomicU64,
    connections: StdMutex<HashMap<String, quinn::Connection>>,
    /// When each appliance's agent last connected or left, unix seconds.
    last_seen: StdMutex<HashMap<String, u64>>,
    rotated: watch::Sender<HashMap<String, u64>>,
    /// The newest rotation each appliance reported obeying.
    obeyed: StdMutex<HashMap<String, u64>>,
    endpoint: quinn::Endpoint,
    /// Set by [`Authority::shutdown`]: the schedule and the admin socket stop with it.
    stopped: watch::Sender<bool>,
    /// Appliances' audit reports admitted per second, per appliance.
    report_limiter: StdMutex<ReceiptLimiter>,
    /// Reports dropped over that rate.
    reports_dropped: AtomicU64,
}

/// A running authority. Dropping it does not stop it; call [`Authority::shutdown`].
#[derive(Clone)]
pub struct Authority {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Opens the state (creating the CA on first start) and starts serving.
    pub async fn start(cfg: &AuthorityConfig) -> Result<Self> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| Error::io(format!("creating {}", cfg.state_dir.display()), e))?;
        let paths = StatePaths::new(&cfg.state_dir);
        let kek = Kek::load(&cfg.kek_file, "kek_file")?;
        let store = open_store(cfg, &paths).await?;
        let material = material::load(&store, &paths, &kek, cfg.ca.as_ref()).await?;
        let assignments = load_assignments(&store).await?;
        let audit = match &store {
            AnyStore::Etcd(_) | AnyStore::Replica(_) => AuditSink::Store(None),
            _ => AuditSink::File(Arc::new(StdMutex::new(AuditLog::open(&paths.audit)?))),
        };

        let dir = load_directory(&store).await?;
        let rotation = store::get_json(&store, "meta/rotation").await?.unwrap_or(0);
        let acks = load_acks(&store).await?;
        // Clamped as well as checked at load: a config built in code skips the check, and
        // the due time computed from it is persisted.
        let every = Duration::from_secs(cfg.rotation_interval_secs.clamp(
            *ROTATION_INTERVAL_SECS.start(),
            *ROTATION_INTERVAL_SECS.end(),
        ));
        // A replica reads the schedule when it takes the lead: only the leader writes.
        let next_rotation = match &store {
            AnyStore::Replica(_) => 0,
            _ => scheduled_rotation(&store, every).await?,
        };

        let server_cfg = tls::server_config(&material.ca.cert_der(), &material.server, false)?;
        let https = tls::https_server(&material.ca.cert_der(), &material.server)?;
        let endpoint = tls::endpoint(cfg.listen, Some(server_cfg), &kek)?;
        // The address bound, not the one configured: a port 0 is chosen by the system.
        let bound = endpoint.local_addr().unwrap_or(cfg.listen);
        let (audit_queue, audit_queued) = mpsc::unbounded_channel();
        let authority = Self {
            inner: Arc::new(Inner {
                replication: match &store {
                    AnyStore::Replica(r) => Some(replica::Replication::new(
                        (**r).clone(),
                        candidate(cfg, bound),
                        election_ttl(cfg),
                        cfg.policy(),
                    )),
                    _ => None,
                },
                store,
                audit: Mutex::new(audit),
                audit_queue,
                audit_writes: AtomicU64::new(0),
                escrow_pending: StdMutex::new(HashMap::new()),
                acks_pending: StdMutex::new(HashMap::new()),
                escrow_queued: tokio::sync::Notify::new(),
                ca_cert: material.ca.cert_der(),
                ca: material.ca,
                token_key: material.token_key,
                escrow_public: material.escrow.public()?,
                escrow: material.escrow,
                cert_lifetime: renew::CertLifetime::days(cfg.cert_days),
                token_ttl: Duration::from_secs(cfg.token_ttl_secs),
                state: Mutex::new(State {
                    master: Master::new(dir),
                    rotation,
                    assignments,
                    announced: HashMap::new(),
                    refused: HashMap::new(),
                }),
                subscribers: StdMutex::new(HashMap::new()),
                next_serial: AtomicU64::new(0),
                connections: StdMutex::new(HashMap::new()),
                last_seen: StdMutex::new(HashMap::new()),
                rotated: watch::channel(acks.iter().map(|(id, (_, e))| (id.clone(), *e)).collect())
                    .0,
                obeyed: StdMutex::new(acks.into_iter().map(|(id, (r, _))| (id, r)).collect()),
                endpoint,
                stopped: watch::channel(false).0,
                report_limiter: StdMutex::new(ReceiptLimiter::default()),
                reports_dropped: AtomicU64::new(0),
            }),
        };
        // First: everything below may audit.
        tokio::spawn(authority.clone().audit_writer(audit_queued));
        if authority.inner.replication.is_some() {
            // The policy and the schedule are the leader's, once one is elected.
            tokio::spawn(authority.clone().replicate(every));
        } else {
            let policy = cfg.policy();
            if authority.inner.state.lock().await.master.live().rules != policy {
                authority.set_rules(policy, "configuration").await?;
            }
            tokio::spawn(authority.clone().rotation_schedule(next_rotation, every));
        }
        tokio::spawn(authority.clone().accept_loop());
        tokio::spawn(authority.clone().escrow_writer());
        tokio::spawn(authority.clone().admin_loop(paths.admin_socket.clone())?);
        if let Some(raw) = &cfg.api {
            // Checked with its lines when the file was read; a configuration built in code
            // is checked here.
            let api = raw
                .clone()
                .check(&cpclink_diagnostics::ConfigText::new("[api]", ""))?;
            let router = api::router(
                authority.clone(),
                cpclink_mgmt::Access::new(api.tokens.clone()),
            );
            cpclink_mgmt::serve(api.listen, https, router)
                .await
                .map_err(|e| {
                    Error::io(format!("serving the management API on {}", api.listen), e)
                })?;
        }
        Ok(authority)
    }

    /// The control endpoint's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.endpoint.local_addr().ok()
    }

    /// The CA certificate appliances trust: the operator's root when the authority issues
    /// under the operator's intermediate, else its own CA's.
    pub fn ca_cert(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.inner.ca.trust_anchor()
    }

    /// Mints an enrolment token valid for `ttl`, without auditing it (simulated appliances
    /// and tests; operators' tokens come from [`Authority::issue_token`]).
    pub fn mint_token(
        &self,
        appliance: &str,
        centre: &str,
        tenant: &str,
        ttl: Duration,
    ) -> Result<String> {
        let claims = TokenClaims {
            id: hex::encode(*random_bytes::<16>()?),
            appliance: appliance.to_owned(),
            centre: centre.to_owned(),
            tenant: tenant.to_owned(),
            expires: now_secs().saturating_add(ttl.as_secs()),
        };
        Ok(token::mint(&self.inner.token_key, &claims))
    }

    /// A copy of the master directory.
    pub async fn directory(&self) -> Directory {
        self.inner.state.lock().await.master.live().clone()
    }

    /// The master keys `appliance` last escrowed and the epoch they were current at; for
    /// an operator recovering an appliance's keys. Opening them is audited.
    pub async fn escrowed_keys(
        &self,
        appliance: &str,
        by: &str,
    ) -> Result<Option<(u64, cpclink_dataplane::sa::MasterKeys)>> {
        let Some((epoch, sealed)) = self.escrow_record(appliance).await? else {
            return Ok(None);
        };
        let plain = self
            .inner
            .escrow
            .open(&crate::agent::escrow_label(appliance, epoch), &sealed)?;
        let (keys, _) = crate::agent::parse_keys(&plain)?;
        self.audit(AuditEvent::EscrowOpened {
            appliance: appliance.to_owned(),
            epoch,
            by: by.to_owned(),
        })
        .await?;
        Ok(Some((epoch, keys)))
    }

    async fn escrow_record(&self, appliance: &str) -> Result<Option<(u64, Vec<u8>)>> {
        let record: Option<(u64, String)> =
            store::get_json(&self.inner.store, &format!("escrow/{appliance}")).await?;
        record
            .map(|(epoch, sealed)| {
                hex::decode(sealed)
                    .map(|s| (epoch, s))
                    .map_err(|e| Error::CorruptRecord {
                        key: format!("escrow/{appliance}"),
                        reason: e.to_string(),
                    })
            })
            .transpose()
    }

    /// Queues an appliance's escrowed keys for the escrow writer, once checked to open
    /// under its label. Nothing is acknowledged: a box lost in a crash is sent again on the
    /// appliance's next connection, since the authority then tells it an older epoch.
    fn take_escrow(&self, id: &str, epoch: u64, sealed: Vec<u8>) -> Result<()> {
        // Opening proves the box is whole and meant for this appliance and epoch.
        drop(
            self.inner
                .escrow
                .open(&crate::agent::escrow_label(id, epoch), &sealed)?,
        );
        let mut pending = self.escrow_pending();
        if pending.get(id).is_none_or(|(e, _)| *e < epoch) {
            pending.insert(id.to_owned(), (epoch, sealed));
        }
        drop(pending);
        self.inner.escrow_queued.notify_one();
        Ok(())
    }

    fn acks_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        self.inner
            .acks_pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn escrow_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Vec<u8>)>> {
        self.inner
            .escrow_pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `writes` in as few transactions as the store takes: one for redb, groups
    /// within etcd's limit on operations per transaction (128 by default) for etcd, which
    /// refuses a larger one whole.
    async fn apply_in_groups(&self, mut writes: Vec<Write>) -> Result<()> {
        let limit = match &self.inner.store {
            AnyStore::Etcd(_) | AnyStore::Replica(_) => crate::audit::MAX_STORE_GROUP,
            _ => usize::MAX,
        };
        while !writes.is_empty() {
            let rest = writes.split_off(writes.len().min(limit));
            self.inner
                .store
                .apply(std::mem::replace(&mut writes, rest))
                .await?;
        }
        Ok(())
    }

    /// Stores queued rotation acknowledgements and escrow boxes, all that are waiting in
    /// one transaction each: after a rotation every appliance sends both at once, and one
    /// commit each would queue them all behind the disk.
    async fn escrow_writer(self) {
        loop {
            tokio::select! {
                () = self.inner.escrow_queued.notified() => {}
                () = self.stopping() => return,
            }
            let acks = std::mem::take(&mut *self.acks_pending());
            if !acks.is_empty() {
                let writes = acks
                    .iter()
                    .map(|(id, ack)| Write::Put(format!("{ACK_PREFIX}{id}"), store::json(ack)))
                    .collect();
                if let Err(e) = self.apply_in_groups(writes).await {
                    tracing::error!("storing rotation acknowledgements failed: {e}");
                }
            }
            let batch: Vec<(String, (u64, Vec<u8>))> = std::mem::take(&mut *self.escrow_pending())
                .into_iter()
                .collect();
            if batch.is_empty() {
                continue;
            }
            let writes = batch
                .iter()
                .map(|(id, (epoch, sealed))| {
                    Write::Put(
                        format!("escrow/{id}"),
                        store::json(&(epoch, hex::encode(sealed))),
                    )
                })
                .collect();
            if let Err(e) = self.apply_in_groups(writes).await {
                tracing::error!("storing escrowed keys failed: {e}");
                continue;
            }
            let events = batch
                .into_iter()
                .map(|(appliance, (epoch, _))| AuditEvent::Escrowed { appliance, epoch })
                .collect();
            if let Err(e) = self.audit_all(events).await {
                tracing::error!("auditing escrowed keys failed: {e}");
            }
        }
    }

    /// The epochs appliances reported after rotations, by appliance.
    pub fn rotations(&self) -> watch::Receiver<HashMap<String, u64>> {
        self.inner.rotated.subscribe()
    }

    /// Appends to the audit chain and returns once the line is durable. Lines queued
    /// meanwhile by other tasks are written with it as one group (the audit writer).
    pub(crate) async fn audit(&self, event: AuditEvent) -> Result<()> {
        self.audit_all(vec![event]).await.map(drop)
    }

    /// The audit log file's path, or `None` when the chain lives in the store.
    async fn audit_file(&self) -> Result<Option<PathBuf>> {
        match &*self.inner.audit.lock().await {
            AuditSink::File(log) => Ok(Some(
                log.lock()
                    .map_err(|_| Error::io("audit log", std::io::Error::other("lock poisoned")))?
                    .path()
                    .to_owned(),
            )),
            AuditSink::Store(_) => Ok(None),
        }
    }

    /// Every line of the audit chain, in order (the log file's, or the store's checked).
    pub async fn audit_records(&self) -> Result<Vec<AuditRecord>> {
        match self.audit_file().await? {
            Some(path) => crate::audit::records(&path),
            None => Ok(crate::audit::store_records(&self.inner.store)
                .await?
                .into_iter()
                .map(|(r, _)| r)
                .collect()),
        }
    }

    /// Verifies the whole audit chain: lines and head.
    pub async fn verify_audit(&self) -> Result<Verified> {
        match self.audit_file().await? {
            Some(path) => crate::audit::verify(&path),
            None => crate::audit::verify_store(&self.inner.store).await,
        }
    }

    /// Lines in the audit chain, and lines by event kind (for the store's chain: those
    /// this replica appended).
    pub(crate) async fn audit_counts(&self) -> (u64, Vec<(&'static str, u64)>) {
        match &*self.inner.audit.lock().await {
            AuditSink::File(log) => match log.lock() {
                Ok(log) => (
                    log.lines(),
                    log.kinds().iter().map(|(k, n)| (*k, *n)).collect(),
                ),
                Err(_) => (0, Vec::new()),
            },
            AuditSink::Store(Some(tip)) => (
                tip.lines(),
                tip.kinds().iter().map(|(k, n)| (*k, *n)).collect(),
            ),
            AuditSink::Store(None) => (0, Vec::new()),
        }
    }

    /// [`Self::audit`] for several events, in order, kept together in the chain. Returns
    /// the sequence number of the last (0 for none).
    async fn audit_all(&self, events: Vec<AuditEvent>) -> Result<u64> {
        let stopped = || {
            Error::io(
                "audit log",
                std::io::Error::other("the audit writer stopped (the authority is shutting down)"),
            )
        };
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.inner
            .audit_queue
            .send((events, done))
            .map_err(|_| stopped())?;
        match outcome.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(Error::io("audit log", std::io::Error::other(e))),
            Err(_) => Err(stopped()),
        }
    }

    /// Applies a directory change: store first, then the master copy, then the feeds.
    async fn change(&self, change: Change, extra: Vec<Write>, what: String) -> Result<u64> {
        let mut st = self.inner.state.lock().await;
        self.commit(&mut st, change, extra, None, what).await
    }

    /// [`Self::change`] under the held state lock. With `guard`, the store transaction
    /// happens only if that key is absent (otherwise nothing is written and the token it
    /// stands for is reported reused): redeeming a token and recording its appliance are
    /// one transaction, so a crash cannot leave a spent token without its appliance.
    async fn commit(
        &self,
        st: &mut State,
        change: Change,
        mut extra: Vec<Write>,
        guard: Option<String>,
        what: String,
    ) -> Result<u64> {
        let version = st.master.live().version + 1;
        match &change {
            Change::Upsert(e) => {
                extra.push(Write::Put(format!("appliance/{}", e.id), store::json(e)))
            }
            Change::Revoke(id) => {
                if let Some(e) = st.master.live().appliances.get(id) {
                    let mut e = e.clone();
                    e.revoked = true;
                    extra.push(Write::Put(format!("appliance/{id}"), store::json(&e)));
                }
            }
            Change::Rules(r) | Change::Policy { rules: r, .. } => {
                extra.push(Write::Put("meta/rules".into(), store::json(r)))
            }
        }
        extra.push(Write::Put("meta/version".into(), store::json(&version)));
        match guard {
            None => self.inner.store.apply(extra).await?,
            Some(key) => {
                if !self.inner.store.apply_unless_present(&key, extra).await? {
                    return Err(Error::Token(crate::TokenError::Reused));
                }
            }
        }
        let fanout = st.master.apply(version, change);
        self.audit(AuditEvent::DirectoryChanged {
            version,
            change: what,
        })
        .await?;
        self.fan_out(fanout);
        Ok(version)
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Subscriber>> {
        // A poisoned map only means a task panicked mid-insert; the map itself is intact.
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a change for the subscribers it concerns; called under the state lock so
    /// pushes keep the order of versions.
    fn fan_out(&self, fanout: Fanout) {
        let subs = self.subscribers();
        match fanout {
            Fanout::Everyone(delta) => {
                for s in subs.values() {
                    s.push(Push::Delta(delta.clone()));
                }
            }
            Fanout::Only(delta, ids) => {
                for id in ids {
                    if let Some(s) = subs.get(&id) {
                        s.push(Push::Delta(delta.clone()));
                    }
                }
            }
            Fanout::Moved {
                delta,
                audience,
                moved,
            } => {
                for id in audience {
                    if let Some(s) = subs.get(&id) {
                        s.push(Push::Delta(delta.clone()));
                    }
                }
                if let Some(s) = subs.get(&moved) {
                    s.push(Push::Resnapshot);
                }
            }
            Fanout::Policy {
                version,
                rules,
                mut allowed,
                everyone_resnapshots,
            } => {
                for (id, s) in subs.iter() {
                    let allowed = allowed.remove(id).unwrap_or_default();
                    if everyone_resnapshots || allowed.len() > SNAPSHOT_CHUNK {
                        s.push(Push::Resnapshot);
                        continue;
                    }
                    s.push(Push::Delta(Arc::new(Delta {
                        version,
                        change: Change::Policy {
                            rules: rules.clone(),
                            allowed,
                        },
                    })));
                }
            }
        }
    }

    /// Replaces the policy, as `by` asked; every appliance gets a fresh view.
    pub async fn set_rules(&self, rules: Vec<Rule>, by: &str) -> Result<u64> {
        let what = format!("policy: {} rules, set by {by}", rules.len());
        self.change(Change::Rules(rules), Vec::new(), what).await
    }

    /// Changes an appliance's published endpoints and capabilities.
    pub async fn update_appliance(
        &self,
        id: &str,
        endpoints: Vec<String>,
        capabilities: Vec<String>,
    ) -> Result<u64> {
        let mut entry = self.enrolled(id).await?;
        entry.endpoints = endpoints;
        entry.capabilities = capabilities;
        self.change(Change::Upsert(entry), Vec::new(), format!("update {id}"))
            .await
    }

    /// The live directory entry of `id`, or `NotAuthorised` if it is not enrolled.
    async fn enrolled(&self, id: &str) -> Result<ApplianceEntry> {
        self.inner
            .state
            .lock()
            .await
            .master
            .live()
            .appliances
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotAuthorised(format!("{id} is not enrolled")))
    }

    /// Revokes `id` as `by` asked: recorded, pushed to `id` and the appliances that may
    /// talk to it (the others' copies do not list it), its connection closed.
    pub async fn revoke(&self, id: &str, by: &str) -> Result<u64> {
        self.enrolled(id).await?;
        let version = self
            .change(
                Change::Revoke(id.to_owned()),
                Vec::new(),
                format!("revoke {id}"),
            )
            .await?;
        self.audit(AuditEvent::Revoked {
            appliance: id.to_owned(),
            by: by.to_owned(),
        })
        .await?;
        let conn = self.connections().remove(id);
        if let Some(conn) = conn {
            conn.close(CLOSE_REVOKED.into(), b"revoked");
        }
        Ok(version)
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, HashMap<String, quinn::Connection>> {
        // A poisoned map only means a task panicked mid-insert; the map itself is intact.
        self.inner
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Orders every appliance to rotate its master keys now, as `by` asked; returns the
    /// rotation number. The schedule is left as it is.
    pub async fn rotate_all(&self, by: &str) -> Result<u64> {
        self.order_rotation(None, by).await
    }

    /// Orders a rotation; with `next`, also records when the next scheduled one is due
    /// (unix seconds), in the same store transaction.
    async fn order_rotation(&self, next: Option<u64>, by: &str) -> Result<u64> {
        let mut st = self.inner.state.lock().await;
        let rotation = st.rotation + 1;
        let mut batch = vec![Write::Put("meta/rotation".into(), store::json(&rotation))];
        if let Some(next) = next {
            batch.push(Write::Put("meta/next_rotation".into(), store::json(&next)));
        }
        self.inner.store.apply(batch).await?;
        st.rotation = rotation;
        self.audit(AuditEvent::RotationOrdered {
            rotation,
            by: by.to_owned(),
        })
        .await?;
        for s in self.subscribers().values() {
            s.push(Push::Rotate(rotation));
        }
        Ok(rotation)
    }

    /// Status for operators.
    pub async fn status(&self) -> AdminReply {
        let st = self.inner.state.lock().await;
        let dir = st.master.live();
        let connected: std::collections::HashSet<String> =
            self.connections().keys().cloned().collect();
        let last_seen = self
            .inner
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let epochs = self.inner.rotated.borrow().clone();
        let obeyed = self.obeyed().clone();
        AdminReply::Status {
            version: dir.version,
            appliances: dir.appliances.len(),
            revoked: dir.appliances.values().filter(|e| e.revoked).count(),
            rotation: st.rotation,
            connected: connected.len(),
            listed: dir
                .appliances
                .values()
                .map(|e| proto::ApplianceStatus {
                    connected: connected.contains(&e.id),
                    last_seen: last_seen.get(&e.id).copied(),
                    epoch: epochs.get(&e.id).copied(),
                    generation: epochs.get(&e.id).copied().map(crate::agent::generation_at),
                    rotation: obeyed.get(&e.id).copied(),
                    entry: e.clone(),
                })
                .collect(),
        }
    }

    /// Stops accepting, closes every connection, and stops the rotation schedule and the
    /// admin socket.
    pub fn shutdown(&self) {
        self.inner.stopped.send_replace(true);
        self.inner.endpoint.close(0u32.into(), b"shutdown");
    }

    /// Waits (after [`Authority::shutdown`]) until every connection's close has been sent,
    /// so agents learn at once that the authority went away instead of after the idle
    /// timeout. Call it before the process exits.
    pub async fn wait_closed(&self) {
        self.inner.endpoint.wait_idle().await;
    }

    /// Resolves once [`Authority::shutdown`] was called.
    async fn stopping(&self) {
        let mut stopped = self.inner.stopped.subscribe();
        let _ = stopped.wait_for(|s| *s).await;
    }

    /// Orders a rotation whenever the stored schedule says one is due (`next`, unix
    /// seconds), then every `every`. After downtime that spanned several due times it
    /// rotates once and counts the next interval from then.
    async fn rotation_schedule(self, mut next: u64, every: Duration) {
        while !*self.inner.stopped.borrow() {
            let Some(due) = UNIX_EPOCH.checked_add(Duration::from_secs(next)) else {
                // A due time past what the clock can hold never comes.
                self.stopping().await;
                return;
            };
            if let Ok(wait) = due.duration_since(SystemTime::now()) {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.stopping() => return,
                }
            }
            let after = now_secs().max(next).saturating_add(every.as_secs().max(1));
            match self.order_rotation(Some(after), "schedule").await {
                Ok(_) => next = after,
                Err(e) => {
                    tracing::error!("scheduled rotation failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn accept_loop(self) {
        while let Some(incoming) = self.inner.endpoint.accept().await {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.serve(incoming).await {
                    tracing::debug!("control connection ended: {e}");
                }
            });
        }
    }

    async fn serve(self, incoming: quinn::Incoming) -> Result<()> {
        let conn = incoming.await?;
        if !self.is_leader() {
            self.redirect(&conn).await;
            return Err(Error::NotLeader {
                leader: "agent sent on".into(),
            });
        }
        let Some(identity) = tls::peer_identity(&conn) else {
            return self.serve_enrolment(conn).await;
        };
        let listed = self
            .inner
            .state
            .lock()
            .await
            .master
            .live()
            .appliances
            .get(&identity.appliance)
            .map(|e| (e.revoked, e.cert_serial.clone()));
        let presented = tls::peer_serial(&conn).unwrap_or_default();
        let current = match (&listed, tls::peer_certificate(&conn)) {
            (Some((false, serial)), Some(cert)) => {
                self.holds_listed_key(&identity.appliance, serial, &cert)
                    .await
            }
            _ => false,
        };
        match listed {
            None => {
                conn.close(CLOSE_UNKNOWN.into(), b"unknown appliance");
                return Err(Error::NotAuthorised(identity.appliance));
            }
            // Revoked, or a certificate that a replacement superseded: the same id, but
            // only the listed certificate's key pair is this appliance now.
            Some(_) if !current => {
                conn.close(CLOSE_REVOKED.into(), b"revoked");
                return Err(Error::NotAuthorised(format!(
                    "{} (certificate {presented})",
                    identity.appliance
                )));
            }
            Some(_) => {}
        }
        self.seen(&identity.appliance);
        let previous = self
            .connections()
            .insert(identity.appliance.clone(), conn.clone());
        if let Some(previous) = previous {
            previous.close(0u32.into(), b"replaced");
        }
        let result = async {
            loop {
                let (mut send, mut recv) = conn.accept_bi().await?;
                match proto::read_frame::<_, Message>(&mut recv).await {
                    Ok(Some(Message::Subscribe {
                        control,
                        endpoints,
                        capabilities,
                        prefixes,
                    })) => {
                        let this = self.clone();
                        let id = identity.appliance.clone();
                        let published = Published {
                            control,
                            endpoints,
                            capabilities,
                            prefixes,
                        };
                        tokio::spawn(async move {
                            let fed = this.serve_feed(&id, published, &mut send, &mut recv);
                            if let Err(e) = fed.await {
                                tracing::debug!("feed of {id} ended: {e}");
                            }
                        });
                    }
                    Ok(Some(Message::Renew { csr })) => {
                        let (this, id, presented) =
                            (self.clone(), identity.appliance.clone(), presented.clone());
                        tokio::spawn(async move {
                            if let Err(e) =
                                this.answer_renewal(&id, &presented, &csr, &mut send).await
                            {
                                tracing::debug!("renewal of {id} not answered: {e}");
                            }
                        });
                    }
                    Ok(_) => refuse(&mut send, "expected Subscribe or Renew").await,
                    Err(e) => refuse(&mut send, &e.to_string()).await,
                }
            }
        }
        .await;
        let mut conns = self.connections();
        if conns
            .get(&identity.appliance)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(&identity.appliance);
        }
        drop(conns);
        self.seen(&identity.appliance);
        result
    }

    fn obeyed(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.inner
            .obeyed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn seen(&self, id: &str) {
        self.inner
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), now_secs());
    }

    async fn serve_enrolment(self, conn: quinn::Connection) -> Result<()> {
        loop {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let reply = match proto::read_frame::<_, Message>(&mut recv).await {
                Ok(Some(Message::Enrol {
                    token,
                    appliance,
                    csr,
                    control,
                    endpoints,
                    capabilities,
                })) => match self
                    .enrol(&token, &appliance, &csr, control, endpoints, capabilities)
                    .await
                {
                    Ok(cert) => Message::Enrolled { cert },
                    Err(e) => Message::Error {
                        reason: e.to_string(),
                    },
                },
                Ok(_) => Message::Error {
                    reason: "without a certificate only Enrol is allowed".into(),
                },
                Err(e) => Message::Error {
                    reason: e.to_string(),
                },
            };
            proto::write_frame(&mut send, &reply).await?;
            send.finish()?;
        }
    }

    /// Redeems a token for the agent configured as `appliance`: checks it, records it used
    /// (once, atomically), signs the CSR and lists the appliance. A token for another
    /// appliance is refused naming both, and spends and records nothing. Returns the
    /// certificate followed by its chain ([`pki::split_chain`]).
    pub async fn enrol(
        &self,
        token: &str,
        appliance: &str,
        csr: &[u8],
        control: String,
        endpoints: Vec<String>,
        capabilities: Vec<String>,
    ) -> Result<Vec<u8>> {
        let claims =
            token::check(&self.inner.token_key, token, now_secs()).map_err(Error::Token)?;
        if claims.appliance != appliance {
            return Err(Error::WrongAppliance {
                token: claims.appliance,
                agent: appliance.to_owned(),
            });
        }
        let identity = Identity {
            appliance: claims.appliance.clone(),
            centre: claims.centre.clone(),
        };
        // Signing is the slow part: outside the lock.
        let (cert, serial) =
            self.inner
                .ca
                .sign_csr_for(csr, &identity, self.inner.cert_lifetime.get())?;
        let mut st = self.inner.state.lock().await;
        let listed = st.master.live().appliances.get(&claims.appliance);
        // A revoked id enrols again only as the replacement an operator ordered.
        let replacing = match listed {
            Some(e) if e.revoked => {
                Some(self.replacement_for(&claims.appliance, &claims.id).await?)
            }
            _ => None,
        };
        if self.token_revoked(&claims.id).await? {
            return Err(Error::Token(crate::TokenError::Revoked));
        }
        let token_key = format!("token/{}", claims.id);
        let guard = match self.inner.store.get(&token_key).await? {
            None => token_key.clone(),
            // Marked spent but its appliance never recorded: an older release crashed
            // between the two writes. The redemption never completed, so it may complete
            // now, once: the appliance's record is then the guard.
            Some(_) if listed.is_none() => format!("appliance/{}", claims.appliance),
            Some(_) => {
                // The same appliance again, asking for the key pair it enrolled with: the
                // reply to its enrolment was lost (a connection cut under load, a
                // failover). The CSR proves it holds that key, so it gets the certificate
                // it was issued; nothing is spent or written again.
                let issued = match listed {
                    Some(e) if !e.revoked => {
                        let key = format!("cert/{}", claims.appliance);
                        self.inner.store.get(&key).await?
                    }
                    _ => None,
                };
                if let Some(issued) = issued.filter(|c| pki::csr_is_for_key_of(csr, c)) {
                    drop(st);
                    tracing::info!(
                        "{} asked again with the key pair it enrolled with: its reply was lost; sending its certificate again",
                        claims.appliance
                    );
                    return Ok(self.inner.ca.with_chain(&issued));
                }
                return Err(Error::Token(crate::TokenError::Reused));
            }
        };
        let used = store::json(&(&claims.appliance, now_secs()));
        let entry = ApplianceEntry {
            id: claims.appliance.clone(),
            centre: claims.centre.clone(),
            tenant: claims.tenant,
            control,
            endpoints,
            capabilities,
            cert_serial: serial.clone(),
            revoked: false,
            // Accepted once its agent connects with the certificate and announces them.
            prefixes: Vec::new(),
            joined: false,
        };
        let mut writes = vec![
            Write::Put(token_key, used),
            Write::Put(format!("cert/{}", claims.appliance), cert.to_vec()),
        ];
        if let Some(order) = &replacing {
            writes.extend(self.replacement_writes(&claims.appliance, order).await?);
        }
        self.commit(
            &mut st,
            Change::Upsert(entry),
            writes,
            Some(guard),
            format!("enrol {}", claims.appliance),
        )
        .await?;
        drop(st);
        let mut events = vec![AuditEvent::Enrolled {
            appliance: claims.appliance.clone(),
            centre: claims.centre,
            serial: serial.clone(),
        }];
        if let Some(order) = replacing {
            self.forget_reports(&claims.appliance);
            tracing::info!(
                "{} replaced: certificate {} refused from now on, {serial} enrolled",
                claims.appliance,
                order.old_serial
            );
            events.push(AuditEvent::Replaced {
                appliance: claims.appliance,
                old_serial: order.old_serial,
                new_serial: serial,
                ordered_by: order.by,
            });
        }
        self.audit_all(events).await?;
        Ok(self.inner.ca.with_chain(&cert))
    }

    /// What a fresh snapshot is built from, and the newest rotation.
    async fn snapshot_source(&self) -> (SnapshotSource, u64) {
        let st = self.inner.state.lock().await;
        (st.master.snapshot_source(), st.rotation)
    }

    async fn send_snapshot(
        &self,
        id: &str,
        send: &mut quinn::SendStream,
        (source, rotation): (SnapshotSource, u64),
    ) -> Result<()> {
        // Built from the shared base, outside the lock.
        let view = source.view_for(id);
        let entries: Vec<ApplianceEntry> = view.appliances.into_values().collect();
        let chunks: Vec<&[ApplianceEntry]> = if entries.is_empty() {
            vec![&[]]
        } else {
            entries.chunks(SNAPSHOT_CHUNK).collect()
        };
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let last = i + 1 == n;
            let msg = Message::Snapshot {
                version: view.version,
                rotation,
                appliances: chunk.to_vec(),
                rules: if last { view.rules.clone() } else { Vec::new() },
                last,
            };
            proto::write_frame(send, &msg).await?;
        }
        Ok(())
    }

    async fn serve_feed(
        &self,
        id: &str,
        published: Published,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<()> {
        // Before the snapshot is taken, so the snapshot already lists what it publishes.
        let refused = self.announce(id, published).await?;
        let (queue, mut pushes) = mpsc::channel(FEED_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let serial = self.inner.next_serial.fetch_add(1, Ordering::Relaxed);
        // Registered and snapshotted under the one lock that orders changes, so no change
        // falls between the two. A feed this one replaces sees its queue close and ends.
        let source = {
            let st = self.inner.state.lock().await;
            let subscriber = Subscriber {
                serial,
                queue,
                lagged: lagged.clone(),
            };
            self.subscribers().insert(id.to_owned(), subscriber);
            (st.master.snapshot_source(), st.rotation)
        };
        let result = self
            .feed(id, send, recv, (source, refused), &mut pushes, &lagged)
            .await;
        let mut subs = self.subscribers();
        if subs.get(id).is_some_and(|s| s.serial == serial) {
            subs.remove(id);
        }
        result
    }

    async fn feed(
        &self,
        id: &str,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        (source, refused): ((SnapshotSource, u64), Vec<Refusal>),
        pushes: &mut mpsc::Receiver<Push>,
        lagged: &AtomicBool,
    ) -> Result<()> {
        self.send_snapshot(id, send, source).await?;
        let held = self.escrow_record(id).await?.map_or(0, |(e, _)| e);
        let public = self.inner.escrow_public.clone();
        proto::write_frame(send, &Message::EscrowKey { public, held }).await?;
        proto::write_frame(send, &Message::PrefixesRefused { refused }).await?;
        // Read through a cancel-safe reader: the loop selects.
        let mut frames = proto::FrameReader::new(recv);
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { return Ok(()) };
                    if lagged.swap(false, Ordering::AcqRel) {
                        // Pushes were dropped: start again from a snapshot (queued deltas
                        // it already covers are then ignored by their version).
                        self.send_snapshot(id, send, self.snapshot_source().await).await?;
                    }
                    match push {
                        Push::Delta(delta) => {
                            proto::write_frame(send, &Message::Delta((*delta).clone())).await?;
                        }
                        Push::Rotate(rotation) => {
                            proto::write_frame(send, &Message::RotateOrder { rotation }).await?;
                        }
                        Push::Resnapshot => {
                            self.send_snapshot(id, send, self.snapshot_source().await).await?;
                        }
                        Push::Refused(refused) => {
                            proto::write_frame(send, &Message::PrefixesRefused { refused }).await?;
                        }
                    }
                },
                msg = frames.next::<Message>() => match msg {
                    Ok(Some(Message::Applied { .. })) => {}
                    Ok(Some(Message::Rotated { rotation, epoch })) => {
                        self.obeyed().insert(id.to_owned(), rotation);
                        // A reconnecting appliance repeats its last acknowledgement.
                        let known = self.inner.rotated.borrow().get(id) == Some(&epoch);
                        if !known {
                            self.audit(AuditEvent::Rotated { appliance: id.to_owned(), epoch }).await?;
                        }
                        self.inner.rotated.send_modify(|m| {
                            m.insert(id.to_owned(), epoch);
                        });
                        self.acks_pending().insert(id.to_owned(), (rotation, epoch));
                        self.inner.escrow_queued.notify_one();
                    }
                    Ok(Some(Message::Escrow { epoch, sealed })) => {
                        if let Err(e) = self.take_escrow(id, epoch, sealed) {
                            tracing::warn!("escrow from {id} refused: {e}");
                        }
                    }
                    Ok(Some(Message::Report(report))) => self.take_report(id, report).await?,
                    Ok(None) => return Ok(()),
                    Ok(Some(_)) => {
                        refuse(send, "unexpected message on the feed").await;
                        return Err(Error::Frame("unexpected message on the feed".into()));
                    }
                    Err(e) => {
                        refuse(send, &e.to_string()).await;
                        return Err(e);
                    }
                },
            }
        }
    }

    /// Audits what an appliance reported, within the per-appliance receipt rate so a
    /// flood of refusals at one appliance cannot fill the log.
    async fn take_report(&self, id: &str, report: ApplianceReport) -> Result<()> {
        let admitted = self
            .inner
            .report_limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(id, std::time::Instant::now());
        if !admitted {
            let dropped = self.inner.reports_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!("reports from {id} over the receipt rate: {dropped} dropped so far");
            }
            return Ok(());
        }
        self.audit(AuditEvent::ApplianceReported {
            appliance: id.to_owned(),
            report,
        })
        .await
    }

    fn admin_loop(self, path: PathBuf) -> Result<impl std::future::Future<Output = ()>> {
        // A socket left by a killed daemon would make bind fail.
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("binding admin socket {}", path.display()), e))?;
        Ok(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = self.stopping() => return,
                };
                let Ok((mut stream, _)) = accepted else {
                    return;
                };
                let this = self.clone();
                // The admin socket is reachable only on this machine: its peer's uid says
                // which operator asked.
                let by = stream
                    .peer_cred()
                    .map_or_else(|_| "unknown uid".to_owned(), |c| format!("uid {}", c.uid()));
                tokio::spawn(async move {
                    let reply = match proto::read_frame::<_, AdminRequest>(&mut stream).await {
                        Ok(Some(req)) => this.admin(req, &by).await,
                        Ok(None) => return,
                        Err(e) => AdminReply::Error(e.to_string()),
                    };
                    let _ = proto::write_frame(&mut stream, &reply).await;
                });
            }
        })
    }

    async fn admin(&self, req: AdminRequest, by: &str) -> AdminReply {
        let read = matches!(req, AdminRequest::Status | AdminRequest::ListPrefixes);
        if !read {
            if let Some(refusal) = self.not_leading().await {
                return AdminReply::Error(refusal);
            }
        }
        let result = match req {
            AdminRequest::Revoke { appliance } => self.revoke(&appliance, by).await,
            AdminRequest::Rotate => self.rotate_all(by).await,
            AdminRequest::SetRules(rules) => self.set_rules(rules, by).await,
            AdminRequest::Status => return self.status().await,
            AdminRequest::CreateToken {
                appliance,
                centre,
                tenant,
                ttl_secs,
                prefixes,
            } => {
                let ttl = ttl_secs.map(Duration::from_secs);
                let token = self
                    .issue_token(&appliance, &centre, &tenant, ttl, &prefixes, by)
                    .await;
                return token.map_or_else(|e| AdminReply::Error(e.to_string()), AdminReply::Token);
            }
            AdminRequest::AssignPrefixes {
                appliance,
                prefixes,
            } => self.assign_prefixes(&appliance, &prefixes, by).await,
            AdminRequest::RemovePrefixes {
                appliance,
                prefixes,
            } => self.remove_prefixes(&appliance, &prefixes, by).await,
            AdminRequest::ListPrefixes => return AdminReply::Prefixes(self.prefixes().await),
            AdminRequest::Replace {
                appliance,
                centre,
                tenant,
                ttl_secs,
                prefixes,
            } => {
                let ttl = ttl_secs.map(Duration::from_secs);
                let token = self
                    .replace(&appliance, &centre, &tenant, ttl, &prefixes, by)
                    .await;
                return token.map_or_else(|e| AdminReply::Error(e.to_string()), AdminReply::Token);
            }
        };
        match result {
            Ok(n) => AdminReply::Done(n),
            Err(e) => AdminReply::Error(e.to_string()),
        }
    }
}

/// Answers a bad request with an error frame and closes the stream.
async fn refuse(send: &mut quinn::SendStream, reason: &str) {
    let _ = proto::write_frame(
        send,
        &Message::Error {
            reason: reason.to_owned(),
        },
    )
    .await;
    let _ = send.finish();
}

/// Sends one command to a running authority's admin socket.
pub async fn admin_request(state_dir: &Path, req: &AdminRequest) -> Result<AdminReply> {
    let path = StatePaths::new(state_dir).admin_socket;
    let mut stream = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
        Error::io(
            format!(
                "connecting to {} (is `cpclink keymgr run` running?)",
                path.display()
            ),
            e,
        )
    })?;
    proto::write_frame(&mut stream, req).await?;
    proto::read_frame(&mut stream)
        .await?
        .ok_or_else(|| Error::Frame("authority closed the admin socket without a reply".into()))
}

/// Whether an authority is serving the admin socket in `state_dir`.
pub async fn is_running(state_dir: &Path) -> bool {
    tokio::net::UnixStream::connect(StatePaths::new(state_dir).admin_socket)
        .await
        .is_ok()
}
