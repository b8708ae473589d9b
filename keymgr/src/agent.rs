//! The key agent inside every appliance.
//!
//! It owns the appliance's two master-key generations (generated here, persisted only
//! sealed under the KEK, sent out only sealed to the authority's escrow key), grants SAs to authorised peers, fetches transmit SAs from peers'
//! agents, obeys rotation orders and enforces revocations. The data plane consumes it
//! through [`SaEvent`]s and [`KeyAgent::request_sa`].
//!
//! SPIs are allocated from a counter whose high-water mark is reserved in the store *before*
//! any SPI below it is granted, so a crash can skip SPIs but never hand one out twice. The
//! counter is never reset by a rotation: every SPI this appliance ever grants is distinct.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use cpclink_dataplane::crypto::{SaKey, Suite};
use cpclink_dataplane::sa::{MasterKeys, Spi, SpiAllocator};
use cpclink_diagnostics::Diagnostic;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Mutex};
use zeroize::Zeroizing;

use crate::authority::CLOSE_REVOKED;
use crate::backoff::{Backoff, RETRY_CAP, RETRY_FIRST};
use crate::config::{AgentConfig, SA_LIFETIME_SECS};
use crate::directory::{Change, Directory};
use crate::metrics::{MetricSigner, MetricTally, MetricVerifier, ReceiptLimiter};
use crate::pki::{self, KeyedCert, AUTHORITY_NAME};
use crate::prefix::{InnerPrefix, Refusal};
use crate::proto::{self, Message};
use crate::seal::{random_bytes, Kek};
use crate::store::{AnyStore, RedbStore, Store, Write};
use crate::{tls, Error, Result};

mod advertise;
pub mod failover;
mod renew;
mod report;

use failover::AuthorityRoute;
pub use report::REPORT_QUEUE;

/// SPIs reserved per store write: a crash skips at most this many.
const SPI_BLOCK: u32 = 64;
/// How long an SA request may take before the connection is presumed dead.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// QUIC close code an agent uses towards a revoked or unauthorised peer.
pub const CLOSE_UNAUTHORISED: u32 = 0x41;

/// Where an agent stands with its authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthorityLink {
    /// Started, not yet heard from the authority.
    Connecting,
    /// The feed is live: the directory copy is current.
    Connected,
    /// The authority cannot be reached; the agent keeps its SAs and directory copy, keeps
    /// serving peers, and retries.
    Lost,
    /// The authority revoked this appliance; the agent has stopped.
    Revoked,
}

/// The key generation (0 or 1) that holds key epoch `epoch`. An agent starts at epoch 1 in
/// generation 0 and every rotation moves to the other generation with the next epoch, so
/// the epoch an agent reports names its generation too.
pub fn generation_at(epoch: u64) -> u8 {
    u8::from(epoch % 2 == 0)
}

/// A transmit SA obtained from a peer's agent.
#[derive(Debug, Clone)]
pub struct TxSaGrant {
    /// The peer that will receive with this SA.
    pub peer: String,
    /// The SPI the peer allocated.
    pub spi: Spi,
    /// The suite.
    pub suite: Suite,
    /// The SA key.
    pub key: SaKey,
    /// The peer's key epoch the SPI's generation holds.
    pub epoch: u64,
    /// When the SA should have been replaced by.
    pub expires: Instant,
}

/// What the data plane must do.
#[derive(Debug, Clone)]
pub enum SaEvent {
    /// Replace the transmit SA towards `peer` (after a peer's rotation, or before the
    /// current one expires). The old one stays usable until the peer retires it.
    InstallTx(TxSaGrant),
    /// This agent granted `peer` an SA: install the receive side.
    InstallRx {
        /// The peer that will send.
        peer: String,
        /// The SPI granted.
        spi: Spi,
        /// The suite.
        suite: Suite,
        /// The SA key.
        key: SaKey,
    },
    /// A rotation overwrote the generation these receive SAs derived from: drop them.
    RetireRx {
        /// The SPIs to drop.
        spis: Vec<Spi>,
    },
    /// Drop every SA with `peer`, both directions.
    RetirePeer {
        /// The peer.
        peer: String,
    },
    /// The master keys rotated.
    Rotated {
        /// The generation (0 or 1) now current.
        generation: u8,
        /// The new epoch (counts every rotation).
        epoch: u64,
    },
    /// An appliance was revoked.
    Revoked {
        /// The appliance.
        appliance: String,
    },
    /// `peer` advertised compute metrics, signed by its certificate key and verified.
    Metrics {
        /// The advertising appliance (the id its certificate names).
        peer: String,
        /// The advertisement, as the peer published it.
        advertisement: Vec<u8>,
    },
}

/// Everything a key agent needs to start.
#[derive(Debug)]
pub struct AgentOptions {
    /// This appliance's id.
    pub appliance: String,
    /// The authority's control addresses (one per replica), tried in this order: the agent
    /// follows the first that answers and fails over to the others.
    pub authorities: Vec<SocketAddr>,
    /// Where to accept peers' SA requests.
    pub listen: SocketAddr,
    /// Where the agent's store lives.
    pub state_dir: PathBuf,
    /// The key-encryption key.
    pub kek: Kek,
    /// The CA certificate.
    pub ca_cert: CertificateDer<'static>,
    /// A one-time enrolment token, needed until enrolled.
    pub token: Option<Zeroizing<String>>,
    /// Data-plane endpoints to publish.
    pub endpoints: Vec<String>,
    /// Capabilities to publish.
    pub capabilities: Vec<String>,
    /// The inner prefixes this appliance's centre serves, announced to the authority; the
    /// directory lists those the operator assigned to it.
    pub prefixes: Vec<InnerPrefix>,
    /// The suite of SAs this agent asks for.
    pub suite: Suite,
    /// Lifetime of SAs this agent grants.
    pub sa_lifetime: Duration,
    /// How long a rotation waits for peers to leave the generation it overwrites.
    pub rekey_grace: Duration,
}

/// `wait` from now, or a day from now if that is past what the clock can hold (options
/// built in code skip the config's range checks).
fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(*SA_LIFETIME_SECS.end())))
        .unwrap_or(now)
}

impl AgentOptions {
    /// Options from a config file.
    pub fn from_config(cfg: &AgentConfig) -> Result<Self> {
        let ca_pem = std::fs::read_to_string(&cfg.ca_cert).map_err(|e| {
            Diagnostic::new(
                cfg.ca_cert.display().to_string(),
                "ca_cert",
                format!("cannot read it ({e})"),
            )
            .with_fix("copy the authority's ca.pem here")
        })?;
        let token = match &cfg.token_file {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => Some(Zeroizing::new(t.trim().to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
            },
            None => None,
        };
        Ok(Self {
            appliance: cfg.appliance.clone(),
            authorities: cfg.authority.clone(),
            listen: cfg.listen,
            state_dir: cfg.state_dir.clone(),
            kek: Kek::load(&cfg.kek_file, "kek_file")?,
            ca_cert: pki::cert_from_pem(&ca_pem)?,
            token,
            endpoints: cfg.endpoints.clone(),
            capabilities: cfg.capabilities.clone(),
            prefixes: cfg.prefixes.clone(),
            suite: Suite::from_version(cfg.suite)?,
            sa_lifetime: Duration::from_secs(cfg.sa_lifetime_secs),
            rekey_grace: Duration::from_millis(cfg.rekey_grace_ms),
        })
    }
}

/// The sealed form of the master keys.
#[derive(Serialize, Deserialize)]
struct SealedKeys {
    epoch: u64,
    epochs: [u64; 2],
    current: u8,
    keys: [String; 2],
}

struct KeyState {
    keys: MasterKeys,
    epochs: [u64; 2],
    alloc: SpiAllocator,
    reserved: [u32; 2],
    last_rotation: u64,
    /// SPIs granted, by peer; kept to retire them and to tell the peers about rotations.
    grants: HashMap<String, Vec<Spi>>,
}

impl KeyState {
    fn epoch(&self) -> u64 {
        self.epochs[usize::from(self.keys.current_generation())]
    }
}

struct Inner {
    id: String,
    /// HTTPS server configuration of the management API: this appliance's certificate.
    https: Arc<rustls::ServerConfig>,
    /// Checks the operator credentials the authority's CA issued, for the management API.
    operators: crate::credentials::OperatorCredentials,
    store: AnyStore,
    kek: Kek,
    suite: Suite,
    sa_lifetime: Duration,
    rekey_grace: Duration,
    keys: Mutex<KeyState>,
    directory: StdMutex<Directory>,
    version: watch::Sender<u64>,
    /// Taken when the appliance is revoked, so the event stream ends.
    events: StdMutex<Option<mpsc::UnboundedSender<SaEvent>>>,
    link: watch::Sender<AuthorityLink>,
    /// When the authority was lost (logged once), until it is reached again.
    lost_at: StdMutex<Option<Instant>>,
    endpoint: quinn::Endpoint,
    /// TLS towards peers and the authority, with this appliance's current certificate.
    client: StdMutex<quinn::ClientConfig>,
    /// This appliance's current certificate and key; replaced by a renewal.
    identity: StdMutex<KeyedCert>,
    /// The CA the authority's and peers' certificates chain to.
    ca_cert: CertificateDer<'static>,
    /// The connection of the live feed, over which a renewal is asked.
    feed: StdMutex<Option<quinn::Connection>>,
    /// When the current certificate is to be renewed.
    renew_at: StdMutex<Instant>,
    /// Held (written) while a renewal is asked: the authority lists the new serial before
    /// its reply arrives, so a connection to a peer begun meanwhile would present a
    /// certificate peers no longer accept. Connections to peers wait for it (read).
    renewing: tokio::sync::RwLock<()>,
    outbound: Mutex<HashMap<String, quinn::Connection>>,
    inbound: StdMutex<HashMap<String, Vec<quinn::Connection>>>,
    tx_expiry: StdMutex<HashMap<String, Instant>>,
    /// The authority replicas, and which to try next.
    route: StdMutex<AuthorityRoute>,
    /// The replica the feed follows now (or last tried).
    authority: StdMutex<SocketAddr>,
    publish: Publish,
    /// The announced prefixes the authority refused, as it last said.
    refused: StdMutex<Vec<Refusal>>,
    /// Signs this appliance's metric advertisements with its certificate key.
    signer: MetricSigner,
    /// What became of peers' metric advertisements.
    metric_tally: MetricTally,
    /// Per-peer receipt rate of metric advertisements.
    metric_limiter: StdMutex<ReceiptLimiter>,
    /// Operator actions here, waiting to reach the authority's audit log.
    reports: report::Reports,
}

/// What the agent publishes in the directory each time it subscribes.
struct Publish {
    endpoints: Vec<String>,
    capabilities: Vec<String>,
    prefixes: Vec<InnerPrefix>,
}

/// A running key agent. Cloning shares it.
#[derive(Clone)]
pub struct KeyAgent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KeyAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAgent")
            .field("appliance", &self.inner.id)
            .finish_non_exhaustive()
    }
}

/// How a feed from one authority replica ended without an error.
enum FeedEnd {
    /// The authority ended it.
    Ended,
    /// The replica is a follower; it named the leader, if it knows it.
    NotLeader(Option<SocketAddr>),
}

/// The agent-store key that records that the authority revoked this appliance.
const REVOKED_KEY: &str = "revoked";

fn key_label(id: &str) -> String {
    format!("master-keys/{id}")
}

impl KeyAgent {
    /// Opens the agent's store, enrols if it has no certificate yet, and starts serving
    /// peers and following the authority. Returns the agent and its event stream.
    pub async fn start(opts: AgentOptions) -> Result<(Self, mpsc::UnboundedReceiver<SaEvent>)> {
        // Creating the file and its first commit fsync: on the blocking pool, so that many
        // agents starting in one process (or one agent on a slow disk) do not stall the
        // tasks that keep QUIC connections and handshakes alive.
        let dir = opts.state_dir.clone();
        let store = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            RedbStore::open(&dir.join("agent.redb"))
        })
        .await
        .map_err(|e| Error::Redb(format!("opening the agent's store: {e}")))??;
        Self::start_with_store(opts, AnyStore::Redb(store)).await
    }

    /// [`KeyAgent::start`] on a store of the caller's choosing (`state_dir` is then not
    /// used). Simulated appliances run on [`crate::store::MemoryStore`]s; an appliance's
    /// agent runs on its redb file, as `start` opens it.
    pub async fn start_with_store(
        opts: AgentOptions,
        store: AnyStore,
    ) -> Result<(Self, mpsc::UnboundedReceiver<SaEvent>)> {
        if store.get(REVOKED_KEY).await?.is_some() {
            // Revoked while it ran: starting would serve no one and idle.
            return Err(Error::Revoked {
                appliance: opts.appliance,
            });
        }
        let Some(&first) = opts.authorities.first() else {
            return Err(Diagnostic::new(
                opts.state_dir.display().to_string(),
                "authority",
                "no authority address",
            )
            .with_fix("name the authority's control address (or one per replica)")
            .into());
        };
        let endpoint = tls::endpoint(opts.listen, None, &opts.kek)?;
        let control = endpoint
            .local_addr()
            .map_err(|e| Error::io("reading the bound control address", e))?;

        let mut enrolled_at = first;
        let stored = load_identity(&store, &opts.kek, &opts.appliance).await?;
        let lapsed = stored.as_ref().is_some_and(|id| renew::expired(&id.cert));
        let identity = match stored {
            Some(id) if !lapsed => id,
            _ => {
                let token = opts.token.as_ref().ok_or_else(|| {
                    Diagnostic::new(
                        opts.state_dir.display().to_string(),
                        "token_file",
                        if lapsed {
                            "this appliance's certificate expired (it was not renewed in time) and there is no enrolment token"
                        } else {
                            "not enrolled yet and no enrolment token"
                        },
                    )
                    .with_fix(
                        "create one with `cpclink keymgr token create` and point token_file at it",
                    )
                })?;
                let (identity, at) = enrol(&endpoint, &opts, token, control, &store).await?;
                enrolled_at = at;
                identity
            }
        };
        let mut route = AuthorityRoute::new(opts.authorities.clone());
        // The replica that enrolled this agent answered a moment ago: follow it first.
        route.begin_with(enrolled_at);
        endpoint.set_server_config(Some(tls::server_config(&opts.ca_cert, &identity, true)?));
        let client = tls::client_config(&opts.ca_cert, Some(&identity))?;
        let keys = load_or_create_keys(&store, &opts.kek, &opts.appliance).await?;
        let signer = MetricSigner::new(&opts.appliance, &identity)?;
        let https = tls::https_server(&opts.ca_cert, &identity)?;
        let operators =
            crate::credentials::OperatorCredentials::for_appliance(&opts.ca_cert, &identity)?;

        let (events, events_rx) = mpsc::unbounded_channel();
        let agent = Self {
            inner: Arc::new(Inner {
                id: opts.appliance,
                https,
                operators,
                store,
                kek: opts.kek,
                suite: opts.suite,
                sa_lifetime: opts.sa_lifetime,
                rekey_grace: opts.rekey_grace,
                keys: Mutex::new(keys),
                directory: StdMutex::new(Directory::default()),
                version: watch::channel(0).0,
                events: StdMutex::new(Some(events)),
                link: watch::channel(AuthorityLink::Connecting).0,
                lost_at: StdMutex::new(None),
                endpoint,
                client: StdMutex::new(client),
                renew_at: StdMutex::new(renew::due(&identity.cert)),
                renewing: tokio::sync::RwLock::new(()),
                identity: StdMutex::new(identity),
                ca_cert: opts.ca_cert,
                feed: StdMutex::new(None),
                outbound: Mutex::new(HashMap::new()),
                inbound: StdMutex::new(HashMap::new()),
                tx_expiry: StdMutex::new(HashMap::new()),
                authority: StdMutex::new(enrolled_at),
                route: StdMutex::new(route),
                publish: Publish {
                    endpoints: opts.endpoints,
                    capabilities: opts.capabilities,
                    prefixes: opts.prefixes,
                },
                refused: StdMutex::new(Vec::new()),
                signer,
                metric_tally: MetricTally::default(),
                metric_limiter: StdMutex::new(ReceiptLimiter::default()),
                reports: report::Reports::default(),
            }),
        };
        tokio::spawn(agent.clone().accept_loop());
        tokio::spawn(agent.clone().feed_loop());
        tokio::spawn(agent.clone().refresh_loop());
        tokio::spawn(agent.clone().renewal_loop());
        Ok((agent, events_rx))
    }

    /// This appliance's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The TLS configuration a management API serves HTTPS with: this appliance's
    /// certificate (issued by the authority's CA, naming the appliance id).
    pub fn https_server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.inner.https)
    }

    /// Operator credentials (tokens, certificates) the authority's CA issued are checked
    /// with this, offline.
    pub fn operator_credentials(&self) -> crate::credentials::OperatorCredentials {
        self.inner.operators.clone()
    }

    /// The tenant this appliance serves, as the directory lists it (`None` until the
    /// directory lists it).
    pub fn tenant(&self) -> Option<String> {
        self.inner
            .directory
            .lock()
            .ok()?
            .appliances
            .get(&self.inner.id)
            .map(|e| e.tenant.clone())
    }

    /// Where the agent accepts peers.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.endpoint.local_addr().ok()
    }

    /// The directory version applied; changes as deltas arrive.
    pub fn directory_version(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// A copy of the agent's directory.
    pub fn directory(&self) -> Directory {
        self.dir().clone()
    }

    /// Whether the feed from the authority is live now. While it is not, the agent keeps
    /// its SAs and directory copy and keeps answering peers; it retries in the background.
    pub fn authority_connected(&self) -> bool {
        *self.inner.link.borrow() == AuthorityLink::Connected
    }

    /// Where the agent stands with its authority, as it changes.
    pub fn authority_link(&self) -> watch::Receiver<AuthorityLink> {
        self.inner.link.subscribe()
    }

    /// The current key epoch (counts rotations since the agent was created).
    pub async fn epoch(&self) -> u64 {
        self.inner.keys.lock().await.epoch()
    }

    /// The announced prefixes the authority refused (not in the directory), with its
    /// reasons; empty once every announced prefix is accepted.
    pub fn refused_prefixes(&self) -> Vec<Refusal> {
        self.refused().clone()
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, Vec<Refusal>> {
        self.inner
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Logs each refusal the authority reports that it had not reported before.
    fn prefixes_refused(&self, refused: Vec<Refusal>) {
        let mut held = self.refused();
        for r in refused.iter().filter(|r| !held.contains(r)) {
            tracing::warn!("authority refused prefix {}: {}", r.prefix, r.reason);
        }
        *held = refused;
    }

    /// Stops the agent: closes the endpoint and every connection.
    pub fn shutdown(&self) {
        self.inner.endpoint.close(0u32.into(), b"shutdown");
    }

    fn dir(&self) -> std::sync::MutexGuard<'_, Directory> {
        // Poisoning would mean a panic while applying a delta; the copy is still consistent
        // per field, and the next snapshot replaces it anyway.
        self.inner
            .directory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, event: SaEvent) {
        let events = self
            .inner
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(events) = events.as_ref() {
            // The receiver gone means the data plane stopped; nothing is left to tell.
            let _ = events.send(event);
        }
    }

    fn lost_at(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.inner
            .lost_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The feed is live: logs the return if the authority had been lost.
    fn authority_reached(&self) {
        let was = self.inner.link.send_replace(AuthorityLink::Connected);
        let since = self.lost_at().take();
        if let (AuthorityLink::Lost, Some(since)) = (was, since) {
            tracing::info!(
                "authority at {} reachable again after {:.1} s",
                self.current_authority(),
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// The feed failed: logs the loss once (not on every retry).
    fn authority_unreachable(&self, reason: &str) {
        let was = self.inner.link.send_replace(AuthorityLink::Lost);
        let addr = self.current_authority();
        match was {
            AuthorityLink::Connected => tracing::warn!(
                "lost the authority at {addr} ({reason}); keeping the SAs this appliance has, retrying"
            ),
            AuthorityLink::Connecting => tracing::warn!(
                "cannot reach the authority at {addr} ({reason}); serving peers with the directory this agent has, retrying"
            ),
            AuthorityLink::Lost | AuthorityLink::Revoked => {
                tracing::debug!("authority at {addr} still unreachable: {reason}");
                return;
            }
        }
        *self.lost_at() = Some(Instant::now());
    }

    /// The authority replica the feed follows now, or tried last.
    pub fn current_authority(&self) -> SocketAddr {
        *self
            .inner
            .authority
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn route(&self) -> std::sync::MutexGuard<'_, AuthorityRoute> {
        self.inner
            .route
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The authority revoked this appliance: says so, remembers it across restarts (a
    /// restart on this state refuses to start), ends the event stream and stops serving.
    async fn stop_revoked(&self) {
        let err = Error::Revoked {
            appliance: self.inner.id.clone(),
        };
        tracing::error!("{err}");
        let stamp = crate::store::json(
            &std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        if let Err(e) = self.inner.store.put(REVOKED_KEY, &stamp).await {
            tracing::error!("recording the revocation in the agent's store failed: {e}");
        }
        self.inner.link.send_replace(AuthorityLink::Revoked);
        self.inner
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        self.shutdown();
    }

    /// Whether the authority revoked this appliance (the agent has then stopped).
    pub fn is_revoked(&self) -> bool {
        *self.inner.link.borrow() == AuthorityLink::Revoked
    }

    /// Grants `peer` an SA towards this appliance, if policy allows it.
    pub async fn grant(&self, peer: &str, suite: Suite) -> Result<(Spi, SaKey, u64)> {
        if !self.dir().allows(&self.inner.id, peer) {
            return Err(Error::NotAuthorised(format!(
                "{peer} may not talk to {}",
                self.inner.id
            )));
        }
        let mut ks = self.inner.keys.lock().await;
        let generation = ks.keys.current_generation();
        let slot = usize::from(generation);
        if ks.alloc.next_indices()[slot] >= ks.reserved[slot] {
            let mut reserved = ks.reserved;
            reserved[slot] = ks.alloc.next_indices()[slot].saturating_add(SPI_BLOCK);
            // Durable before any SPI below the mark is granted.
            self.inner
                .store
                .put("spi/reserved", &crate::store::json(&reserved))
                .await?;
            ks.reserved = reserved;
        }
        let spi = ks.alloc.allocate(generation)?;
        let key = ks.keys.derive(spi, suite)?;
        let epoch = ks.epochs[slot];
        ks.grants.entry(peer.to_owned()).or_default().push(spi);
        drop(ks);
        self.emit(SaEvent::InstallRx {
            peer: peer.to_owned(),
            spi,
            suite,
            key: key.clone(),
        });
        Ok((spi, key, epoch))
    }

    /// The cached connection to `peer`'s agent, or a new one. The handshake runs without
    /// the cache's lock, so a peer that does not answer delays only its own callers, not
    /// those of every other peer (metrics go to all peers at once).
    async fn connection_to(&self, peer: &str) -> Result<quinn::Connection> {
        if let Some(c) = self.inner.outbound.lock().await.get(peer) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let addr: SocketAddr = self
            .dir()
            .appliances
            .get(peer)
            .and_then(|e| e.control.parse().ok())
            .ok_or_else(|| Error::NotAuthorised(format!("{peer} has no control address")))?;
        // The server name is the peer's id: TLS checks its certificate names it.
        let presenting = self.inner.renewing.read().await;
        let conn = self
            .inner
            .endpoint
            .connect_with(self.client(), addr, peer)?
            .await?;
        drop(presenting);
        // Waited for outside the cache's lock: a peer that just renewed may be listed a
        // moment later.
        let listed = self.holds_listed_certificate_soon(&conn, peer).await;
        let mut out = self.inner.outbound.lock().await;
        if !listed {
            conn.close(CLOSE_UNAUTHORISED.into(), b"certificate not listed");
            return Err(Error::NotAuthorised(format!(
                "{peer} presented a certificate the directory does not list (replaced or revoked)"
            )));
        }
        // Checked under the lock: a revocation applied during the handshake is seen here,
        // and one applied after it removes this entry once the lock is free.
        if !self.dir().allows(&self.inner.id, peer) {
            conn.close(CLOSE_UNAUTHORISED.into(), b"not authorised");
            return Err(Error::NotAuthorised(format!(
                "{} may not talk to {peer}",
                self.inner.id
            )));
        }
        if let Some(c) = out.get(peer) {
            if c.close_reason().is_none() {
                // Another caller connected meanwhile: share its connection.
                conn.close(0u32.into(), b"duplicate");
                return Ok(c.clone());
            }
        }
        out.insert(peer.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Obtains a transmit SA towards `peer` from its agent.
    pub async fn request_sa(&self, peer: &str) -> Result<TxSaGrant> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.request_sa_once(peer)).await {
            Ok(Ok(grant)) => Ok(grant),
            outcome => {
                // The cached connection may lead to a peer that crashed: start afresh next time.
                if let Some(c) = self.inner.outbound.lock().await.remove(peer) {
                    c.close(0u32.into(), b"request failed");
                }
                match outcome {
                    Ok(Err(e)) => Err(e),
                    _ => Err(Error::Timeout(format!("SA request to {peer}"))),
                }
            }
        }
    }

    async fn request_sa_once(&self, peer: &str) -> Result<TxSaGrant> {
        if !self.dir().allows(&self.inner.id, peer) {
            return Err(Error::NotAuthorised(format!(
                "{} may not talk to {peer}",
                self.inner.id
            )));
        }
        let conn = self.connection_to(peer).await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        proto::write_frame(
            &mut send,
            &Message::SaRequest {
                suite: self.inner.suite.version(),
            },
        )
        .await?;
        send.finish()?;
        let reply: Option<Message> = proto::read_frame(&mut recv).await?;
        match reply {
            Some(Message::SaGrant {
                spi,
                suite,
                mut key,
                epoch,
                lifetime_secs,
            }) => {
                let sa_key = SaKey::from_slice(&key);
                zeroize::Zeroize::zeroize(&mut key);
                let grant = TxSaGrant {
                    peer: peer.to_owned(),
                    spi: Spi(spi),
                    suite: Suite::from_version(suite)?,
                    key: sa_key.ok_or_else(|| Error::Frame("SA key of a bad length".into()))?,
                    epoch,
                    // The lifetime is the peer's word: capped, so no peer can make the
                    // expiry overflow.
                    expires: later(Duration::from_secs(
                        lifetime_secs.min(*SA_LIFETIME_SECS.end()),
                    )),
                };
                self.tx_expiry().insert(peer.to_owned(), grant.expires);
                Ok(grant)
            }
            Some(Message::Error { reason }) => Err(Error::Refused(reason)),
            Some(other) => Err(Error::Frame(format!("unexpected reply {other:?}"))),
            None => Err(Error::Refused("peer closed the stream".into())),
        }
    }

    fn tx_expiry(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.inner
            .tx_expiry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn inbound(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<quinn::Connection>>> {
        self.inner
            .inbound
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn refetch(&self, peer: &str) {
        match self.request_sa(peer).await {
            Ok(grant) => self.emit(SaEvent::InstallTx(grant)),
            Err(e) => tracing::warn!("re-fetching the SA towards {peer} failed: {e}"),
        }
    }

    /// Tells `peer` that this agent (re)started, so it re-fetches its transmit SAs towards
    /// this appliance at once. The receive SAs a previous run granted died with it (the
    /// data plane held them, and a restarted one starts empty); without this, the peer
    /// would keep sealing with them until they expire. A peer that cannot be reached is
    /// skipped: it fetches fresh SAs when it comes back.
    pub fn announce_start_to(&self, peer: &str) {
        let this = self.clone();
        let peer = peer.to_owned();
        tokio::spawn(async move {
            let epoch = this.epoch().await;
            match this.notify(&peer, epoch).await {
                Ok(()) => tracing::info!(
                    "told {peer} that this agent started: it re-keys towards this appliance"
                ),
                Err(e) => tracing::info!(
                    "could not tell {peer} of this start ({e}); it re-keys when its SAs run out"
                ),
            }
        });
    }

    async fn notify(&self, peer: &str, epoch: u64) -> Result<()> {
        let conn = self.connection_to(peer).await?;
        let (mut send, _recv) = conn.open_bi().await?;
        proto::write_frame(&mut send, &Message::RekeyNotice { epoch }).await?;
        send.finish()?;
        Ok(())
    }

    /// Rotates the master keys for the authority's rotation `rotation` (a rotation already
    /// obeyed is not repeated). Make-before-break: peers still holding SAs of the generation
    /// about to be overwritten are asked to re-fetch first, and every peer is told of the
    /// new generation afterwards. Returns the epoch now current.
    pub async fn rotate(&self, rotation: u64) -> Result<u64> {
        let next = {
            let ks = self.inner.keys.lock().await;
            if rotation != 0 && rotation <= ks.last_rotation {
                return Ok(ks.epoch());
            }
            ks.keys.current_generation() ^ 1
        };
        let deadline = later(self.inner.rekey_grace);
        let mut asked = false;
        loop {
            let stragglers: Vec<String> = {
                let ks = self.inner.keys.lock().await;
                ks.grants
                    .iter()
                    .filter(|(_, spis)| spis.last().is_some_and(|s| s.generation() == next))
                    .map(|(p, _)| p.clone())
                    .collect()
            };
            if stragglers.is_empty() || Instant::now() >= deadline {
                break;
            }
            if !asked {
                let epoch = self.epoch().await;
                for p in &stragglers {
                    let _ = self.notify(p, epoch).await;
                }
                asked = true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let mut ks = self.inner.keys.lock().await;
        if rotation != 0 && rotation <= ks.last_rotation {
            return Ok(ks.epoch());
        }
        let new_key = random_bytes::<32>()?;
        let mut keys = ks.keys.clone();
        let generation = keys.rotate(*new_key);
        let mut epochs = ks.epochs;
        epochs[usize::from(generation)] = ks.epoch() + 1;
        let last_rotation = rotation.max(ks.last_rotation);
        // Durable before the new generation is used or announced.
        let sealed = seal_keys(&self.inner.kek, &self.inner.id, &keys, epochs)?;
        self.inner
            .store
            .apply(vec![
                Write::Put("keys".into(), sealed),
                Write::Put("rotation".into(), crate::store::json(&last_rotation)),
            ])
            .await?;
        ks.keys = keys;
        ks.epochs = epochs;
        ks.last_rotation = last_rotation;
        let epoch = ks.epoch();
        let mut retired = Vec::new();
        for spis in ks.grants.values_mut() {
            spis.retain(|s| {
                let keep = s.generation() != generation;
                if !keep {
                    retired.push(*s);
                }
                keep
            });
        }
        ks.grants.retain(|_, spis| !spis.is_empty());
        let peers: Vec<String> = ks.grants.keys().cloned().collect();
        drop(ks);
        if !retired.is_empty() {
            self.emit(SaEvent::RetireRx { spis: retired });
        }
        self.emit(SaEvent::Rotated { generation, epoch });
        for peer in peers {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.notify(&peer, epoch).await {
                    tracing::debug!("telling {peer} of the rotation failed: {e}");
                }
            });
        }
        Ok(epoch)
    }

    fn enforce_revocation(&self, appliance: &str) {
        self.emit(SaEvent::Revoked {
            appliance: appliance.to_owned(),
        });
        self.emit(SaEvent::RetirePeer {
            peer: appliance.to_owned(),
        });
        self.tx_expiry().remove(appliance);
        self.metric_limiter().forget(appliance);
        for conn in self.inbound().remove(appliance).unwrap_or_default() {
            conn.close(CLOSE_UNAUTHORISED.into(), b"revoked");
        }
        let this = self.clone();
        let appliance = appliance.to_owned();
        tokio::spawn(async move {
            if let Some(c) = this.inner.outbound.lock().await.remove(&appliance) {
                c.close(CLOSE_UNAUTHORISED.into(), b"revoked");
            }
            this.inner.keys.lock().await.grants.remove(&appliance);
        });
    }

    async fn accept_loop(self) {
        while let Some(incoming) = self.inner.endpoint.accept().await {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.serve_peer(incoming).await {
                    tracing::debug!("peer connection ended: {e}");
                }
            });
        }
    }

    async fn serve_peer(self, incoming: quinn::Incoming) -> Result<()> {
        let conn = incoming.await?;
        let peer = tls::peer_identity(&conn)
            .ok_or_else(|| Error::NotAuthorised("peer without a certificate".into()))?
            .appliance;
        if !self.dir().allows(&self.inner.id, &peer)
            || !self.holds_listed_certificate_soon(&conn, &peer).await
        {
            conn.close(CLOSE_UNAUTHORISED.into(), b"not authorised");
            return Err(Error::NotAuthorised(peer));
        }
        self.inbound()
            .entry(peer.clone())
            .or_default()
            .push(conn.clone());
        let result = self.serve_streams(&conn, &peer).await;
        // Forget the closed connection so revocation has only live ones to close.
        if let Some(conns) = self.inbound().get_mut(&peer) {
            conns.retain(|c| c.stable_id() != conn.stable_id());
        }
        result
    }

    /// Whether `conn`'s peer presented the certificate the directory lists for `peer`: an
    /// appliance that was replaced keeps a certificate that names the same id, and only
    /// its serial tells it from its replacement.
    fn holds_listed_certificate(&self, conn: &quinn::Connection, peer: &str) -> bool {
        let listed = self
            .dir()
            .appliances
            .get(peer)
            .map(|e| e.cert_serial.clone());
        match (listed, tls::peer_serial(conn)) {
            (Some(listed), Some(presented)) => pki::same_serial(&listed, &presented),
            _ => false,
        }
    }

    async fn serve_streams(&self, conn: &quinn::Connection, peer: &str) -> Result<()> {
        // What the peer advertises must be signed by the key of the certificate it
        // presented here (checked against the directory's serial in `serve_peer`).
        let verifier = tls::peer_certificate(conn)
            .and_then(|cert| MetricVerifier::from_certificate(peer, &cert).ok())
            .map(Arc::new);
        loop {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let this = self.clone();
            let peer = peer.to_owned();
            let verifier = verifier.clone();
            tokio::spawn(async move {
                let reply = match proto::read_frame::<_, Message>(&mut recv).await {
                    Ok(Some(Message::SaRequest { suite })) => match Suite::from_version(suite) {
                        Ok(suite) => match this.grant(&peer, suite).await {
                            Ok((spi, key, epoch)) => Message::SaGrant {
                                spi: spi.0,
                                suite: suite.version(),
                                key: key.as_bytes().to_vec(),
                                epoch,
                                lifetime_secs: this.inner.sa_lifetime.as_secs(),
                            },
                            Err(e) => Message::Error {
                                reason: e.to_string(),
                            },
                        },
                        Err(e) => Message::Error {
                            reason: e.to_string(),
                        },
                    },
                    Ok(Some(Message::RekeyNotice { .. })) => {
                        if this.dir().allows(&this.inner.id, &peer) {
                            // The notice may come from a restarted peer: a cached connection
                            // leads to its previous run, which would swallow the request
                            // until it times out. Ask over a fresh one.
                            if let Some(old) = this.inner.outbound.lock().await.remove(&peer) {
                                old.close(0u32.into(), b"peer re-keys");
                            }
                            this.refetch(&peer).await;
                        }
                        return;
                    }
                    Ok(Some(Message::Metrics {
                        advertisement,
                        signature,
                    })) => {
                        this.receive_metrics(&peer, verifier.as_deref(), advertisement, &signature);
                        return;
                    }
                    Ok(Some(_)) => Message::Error {
                        reason: "peers may send only SaRequest, RekeyNotice and Metrics".into(),
                    },
                    Ok(None) => return,
                    Err(e) => Message::Error {
                        reason: e.to_string(),
                    },
                };
                let mut reply = reply;
                let _ = proto::write_frame(&mut send, &reply).await;
                reply.zeroize();
                let _ = send.finish();
            });
        }
    }

    /// Follows one authority replica after another: the next address comes from the
    /// route (a named leader first after a follower's redirect, else the replicas in turn),
    /// each attempt after a jittered wait that grows while none answers.
    async fn feed_loop(self) {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
        let mut after_redirect = Backoff::new(RETRY_FIRST, failover::REDIRECT_RETRY_CAP);
        let mut last = None;
        loop {
            let (addr, limit) = {
                let mut route = self.route();
                let addr = route.next(last);
                (addr, addr.and_then(|a| route.handshake_limit(a)))
            };
            let Some(addr) = addr else { return };
            last = Some(addr);
            *self
                .inner
                .authority
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = addr;
            let mut redirected = false;
            let reason = match self.follow_authority(addr, limit).await {
                Err(Error::Quic(e)) if e.contains("endpoint stopping") => return,
                Err(Error::Revoked { .. }) => {
                    self.stop_revoked().await;
                    return;
                }
                Ok(FeedEnd::Ended) => "the authority ended the feed".to_owned(),
                Ok(FeedEnd::NotLeader(leader)) => {
                    self.route().redirected(addr, leader);
                    redirected = true;
                    match leader {
                        Some(l) => format!("{addr} is not the leader; {l} is"),
                        None => format!("{addr} is not the leader and knows none"),
                    }
                }
                Err(e) => {
                    let mut route = self.route();
                    if matches!(e, Error::Timeout(_)) {
                        route.timed_out(addr);
                    } else {
                        route.failed(addr);
                    }
                    e.to_string()
                }
            };
            if self.inner.endpoint.local_addr().is_err() {
                return;
            }
            if self.authority_connected() {
                // It worked until now: the next attempt comes soon, at the next replica
                // unless this one was a follower that named another.
                backoff.reset();
                after_redirect.reset();
                let mut route = self.route();
                route.connected();
                if !redirected {
                    route.feed_lost(addr);
                }
            }
            self.authority_unreachable(&reason);
            // A follower answered: the cluster is up and a leader an election away, so the
            // wait stays short; otherwise it grows while nothing answers.
            let wait = if redirected {
                after_redirect.next_delay()
            } else {
                backoff.next_delay()
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Follows the feed of the authority at `addr` until it ends, the handshake limited to
    /// `limit` if given. A connection the authority closed as revoked (this id, or this
    /// certificate after a replacement) is [`Error::Revoked`]; one a follower closed as
    /// not the leader is [`FeedEnd::NotLeader`].
    async fn follow_authority(&self, addr: SocketAddr, limit: Option<Duration>) -> Result<FeedEnd> {
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.client(), addr, AUTHORITY_NAME)?;
        let conn = match limit {
            Some(limit) => tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| Error::Timeout(format!("handshake with the authority at {addr}")))??,
            None => connecting.await?,
        };
        *self.feed() = Some(conn.clone());
        let outcome = self.follow_feed(&conn).await;
        self.feed().take();
        let close = conn.close_reason();
        if let Some(leader) = failover::leader_named(close.as_ref()) {
            return Ok(FeedEnd::NotLeader(leader));
        }
        let revoked = matches!(
            close,
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == quinn::VarInt::from_u32(CLOSE_REVOKED)
        );
        if revoked {
            return Err(Error::Revoked {
                appliance: self.inner.id.clone(),
            });
        }
        outcome.map(|()| FeedEnd::Ended)
    }

    async fn follow_feed(&self, conn: &quinn::Connection) -> Result<()> {
        let (mut send, recv) = conn.open_bi().await?;
        // Read through a cancel-safe reader: the loop below selects.
        let mut frames = proto::FrameReader::new(recv);
        let control = self.local_addr().map(|a| a.to_string()).unwrap_or_default();
        proto::write_frame(
            &mut send,
            &Message::Subscribe {
                control,
                endpoints: self.inner.publish.endpoints.clone(),
                capabilities: self.inner.publish.capabilities.clone(),
                prefixes: self.inner.publish.prefixes.clone(),
            },
        )
        .await?;
        let (acks, mut acks_rx) = mpsc::unbounded_channel::<Message>();
        let mut pending = Directory::default();
        // The authority's escrow key and the newest epoch it holds in escrow from us.
        let mut escrow: Option<(Vec<u8>, u64)> = None;
        loop {
            tokio::select! {
                ack = acks_rx.recv() => {
                    if let Some(ack) = ack {
                        proto::write_frame(&mut send, &ack).await?;
                        if let (Message::Rotated { .. }, Some((public, held))) = (&ack, &mut escrow) {
                            *held = self.escrow(&mut send, public, *held).await?;
                        }
                    }
                }
                () = self.inner.reports.ready() => self.inner.reports.flush(&mut send).await?,
                msg = frames.next::<Message>() => match msg? {
                    None => return Ok(()),
                    Some(Message::Snapshot { version, rotation, appliances, rules, last }) => {
                        for e in appliances {
                            pending.appliances.insert(e.id.clone(), e);
                        }
                        if last {
                            pending.version = version;
                            pending.rules = rules;
                            let fresh = std::mem::take(&mut pending);
                            if fresh.appliances.get(&self.inner.id).is_some_and(|e| e.revoked) {
                                return Err(Error::Revoked { appliance: self.inner.id.clone() });
                            }
                            self.install_snapshot(fresh);
                            self.authority_reached();
                            proto::write_frame(&mut send, &Message::Applied { version }).await?;
                            self.spawn_rotation(rotation, acks.clone());
                        }
                    }
                    Some(Message::Delta(delta)) => {
                        let version = delta.version;
                        let applied = {
                            self.dir().apply_as(&self.inner.id, &delta)
                        };
                        if applied {
                            if let Change::Revoke(id) = &delta.change {
                                if *id == self.inner.id {
                                    return Err(Error::Revoked { appliance: id.clone() });
                                }
                                self.enforce_revocation(id);
                            }
                            self.inner.version.send_replace(version);
                        }
                        proto::write_frame(&mut send, &Message::Applied { version }).await?;
                    }
                    Some(Message::RotateOrder { rotation }) => self.spawn_rotation(rotation, acks.clone()),
                    Some(Message::EscrowKey { public, held }) => {
                        let held = self.escrow(&mut send, &public, held).await?;
                        escrow = Some((public, held));
                    }
                    Some(Message::PrefixesRefused { refused }) => self.prefixes_refused(refused),
                    Some(Message::Error { reason }) => return Err(Error::Refused(reason)),
                    Some(other) => return Err(Error::Frame(format!("unexpected {other:?} on the feed"))),
                },
            }
        }
    }

    /// Sends the authority both key generations sealed to its escrow key, unless it
    /// already holds the current epoch; returns the epoch it now holds.
    async fn escrow(&self, send: &mut quinn::SendStream, public: &[u8], held: u64) -> Result<u64> {
        let (epoch, sealed) = {
            let ks = self.inner.keys.lock().await;
            let epoch = ks.epoch();
            if epoch <= held {
                return Ok(held);
            }
            let plain = keys_plain(&ks.keys, ks.epochs);
            (
                epoch,
                crate::seal::seal_to(public, &escrow_label(&self.inner.id, epoch), &plain)?,
            )
        };
        proto::write_frame(send, &Message::Escrow { epoch, sealed }).await?;
        Ok(epoch)
    }

    fn install_snapshot(&self, fresh: Directory) {
        let version = fresh.version;
        let newly_revoked: Vec<String> = {
            let mut dir = self.dir();
            let revoked = fresh
                .appliances
                .values()
                .filter(|e| e.revoked && dir.is_active(&e.id))
                .map(|e| e.id.clone())
                .collect();
            *dir = fresh;
            revoked
        };
        for id in newly_revoked {
            self.enforce_revocation(&id);
        }
        self.inner.version.send_replace(version);
    }

    fn spawn_rotation(&self, rotation: u64, acks: mpsc::UnboundedSender<Message>) {
        let this = self.clone();
        tokio::spawn(async move {
            let (last, epoch) = {
                let ks = this.inner.keys.lock().await;
                (ks.last_rotation, ks.epoch())
            };
            if rotation <= last {
                // Already done (perhaps before a reconnect lost the acknowledgement): say so
                // again so the authority knows where this appliance stands.
                if last > 0 {
                    let _ = acks.send(Message::Rotated {
                        rotation: last,
                        epoch,
                    });
                }
                return;
            }
            match this.rotate(rotation).await {
                Ok(epoch) => {
                    let _ = acks.send(Message::Rotated { rotation, epoch });
                }
                Err(e) => tracing::error!("rotation {rotation} failed: {e}"),
            }
        });
    }

    async fn refresh_loop(self) {
        let period = (self.inner.sa_lifetime / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        loop {
            tokio::time::sleep(period).await;
            if self.inner.endpoint.local_addr().is_err() {
                return;
            }
            let soon = later(self.inner.sa_lifetime / 5);
            let due: Vec<String> = self
                .tx_expiry()
                .iter()
                .filter(|(_, e)| **e <= soon)
                .map(|(p, _)| p.clone())
                .collect();
            for peer in due {
                self.refetch(&peer).await;
            }
        }
    }
}

fn seal_keys(kek: &Kek, id: &str, keys: &MasterKeys, epochs: [u64; 2]) -> Result<Vec<u8>> {
    kek.seal(&key_label(id), &keys_plain(keys, epochs))
}

/// The label an escrowed copy of `id`'s keys at `epoch` is sealed under.
pub(crate) fn escrow_label(id: &str, epoch: u64) -> String {
    format!("escrow/{id}/{epoch}")
}

/// Both generations and their epochs, serialised (what is sealed at rest and in escrow).
fn keys_plain(keys: &MasterKeys, epochs: [u64; 2]) -> Zeroizing<Vec<u8>> {
    let sealed = SealedKeys {
        epoch: epochs[usize::from(keys.current_generation())],
        epochs,
        current: keys.current_generation(),
        keys: [
            keys.key(0).map(hex::encode).unwrap_or_default(),
            keys.key(1).map(hex::encode).unwrap_or_default(),
        ],
    };
    let plain = Zeroizing::new(serde_json::to_vec(&sealed).unwrap_or_default());
    let SealedKeys {
        keys: [mut k0, mut k1],
        ..
    } = sealed;
    zeroize::Zeroize::zeroize(&mut k0);
    zeroize::Zeroize::zeroize(&mut k1);
    plain
}

/// Reads what [`keys_plain`] wrote: the keys and the epochs of both generations.
pub(crate) fn parse_keys(plain: &[u8]) -> Result<(MasterKeys, [u64; 2])> {
    let mut sealed: SealedKeys =
        serde_json::from_slice(plain).map_err(|e| Error::CorruptRecord {
            key: "keys".into(),
            reason: e.to_string(),
        })?;
    let decode = |h: &str| -> Option<[u8; 32]> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(h, &mut k).ok().map(|()| k)
    };
    let k0 = decode(&sealed.keys[0]);
    let k1 = decode(&sealed.keys[1]);
    zeroize::Zeroize::zeroize(&mut sealed.keys[0]);
    zeroize::Zeroize::zeroize(&mut sealed.keys[1]);
    let keys = match (k0, k1) {
        (Some(a), Some(b)) => MasterKeys::with_generations(a, b, sealed.current),
        (Some(a), None) if sealed.current == 0 => MasterKeys::new(a),
        _ => {
            return Err(Error::CorruptRecord {
                key: "keys".into(),
                reason: "the current generation's key is missing".into(),
            })
        }
    };
    Ok((keys, sealed.epochs))
}

async fn load_or_create_keys(store: &AnyStore, kek: &Kek, id: &str) -> Result<KeyState> {
    let reserved: [u32; 2] = crate::store::get_json(store, "spi/reserved")
        .await?
        .unwrap_or([1, 1]);
    let last_rotation: u64 = crate::store::get_json(store, "rotation")
        .await?
        .unwrap_or(0);
    let (keys, epochs) = match store.get("keys").await? {
        Some(blob) => parse_keys(&kek.open(&key_label(id), &blob)?)?,
        None => {
            let keys = MasterKeys::new(*random_bytes::<32>()?);
            let epochs = [1, 0];
            store
                .put("keys", &seal_keys(kek, id, &keys, epochs)?)
                .await?;
            (keys, epochs)
        }
    };
    Ok(KeyState {
        keys,
        epochs,
        // Resume at the reserved mark: SPIs between the last grant and the mark are skipped.
        alloc: SpiAllocator::resume(reserved),
        reserved,
        last_rotation,
        grants: HashMap::new(),
    })
}

async fn load_identity(store: &AnyStore, kek: &Kek, id: &str) -> Result<Option<KeyedCert>> {
    let (Some(cert), Some(key)) = (
        store.get("identity/cert").await?,
        store.get("identity/key").await?,
    ) else {
        return Ok(None);
    };
    // Stored as the authority sent it: the certificate, then its chain.
    Ok(Some(KeyedCert::from_chain(
        &cert,
        kek.open(&format!("identity/{id}"), &key)?,
    )?))
}

/// What an enrolment request publishes besides the CSR.
struct EnrolRequest<'a> {
    authorities: &'a [SocketAddr],
    ca: &'a CertificateDer<'static>,
    appliance: &'a str,
    token: &'a str,
    control: String,
    endpoints: Vec<String>,
    capabilities: Vec<String>,
}

/// Generates a key pair, presents the token and a CSR over `endpoint` to the first
/// authority replica that answers (a follower that names its leader sends the request
/// there), and returns the certificate the authority issued with its key and the address
/// of the replica that issued it. An authority that answers and refuses is not asked again
/// elsewhere: the replicas share one state, so another would refuse as well. One that does
/// not answer, or whose reply is lost with its connection, is asked again (each listed
/// address up to [`ENROL_ROUNDS`] times, after a jittered wait): the key pair stays the
/// same, so a request whose certificate was issued gets that certificate again.
async fn request_certificate(
    endpoint: &quinn::Endpoint,
    req: EnrolRequest<'_>,
) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>, SocketAddr)> {
    let (key, csr) = pki::appliance_csr(req.appliance)?;
    let mut route = AuthorityRoute::new(req.authorities.to_vec());
    // Every listed replica a few times, and as many redirects again: a cluster in the
    // middle of an election may bounce a request between followers, but not forever.
    let mut attempts = (ENROL_ROUNDS + 1) * req.authorities.len();
    let mut last = None;
    let mut unanswered = 0;
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
    let mut failure = Error::Quic("no authority address".into());
    while attempts > 0 {
        attempts -= 1;
        let Some(addr) = route.next(last) else { break };
        last = Some(addr);
        match enrol_at(endpoint, &req, &csr, addr, route.handshake_limit(addr)).await {
            Ok(Enrolment::Issued(cert)) => return Ok((cert, key, addr)),
            Ok(Enrolment::NotLeader(leader)) => {
                tracing::info!(
                    "authority at {addr} is not the leader; enrolling at {}",
                    leader.map_or_else(|| "the next replica".to_owned(), |l| l.to_string())
                );
                route.redirected(addr, leader);
                failure = Error::Refused(format!("{addr} is not the leader"));
            }
            // A connection lost before the reply (`Io`) is asked again: a repeated request
            // with the same key pair gets the certificate already issued.
            Err(e @ (Error::Quic(_) | Error::Timeout(_) | Error::Io { .. })) => {
                if matches!(e, Error::Timeout(_)) {
                    route.timed_out(addr);
                } else {
                    route.failed(addr);
                }
                if req.authorities.len() > 1 {
                    tracing::warn!(
                        "cannot enrol at the authority at {addr} ({e}); trying the next"
                    );
                }
                failure = e;
                unanswered += 1;
                if unanswered >= ENROL_ROUNDS * req.authorities.len() {
                    break;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(failure)
}

/// How many times each listed authority address is asked for a certificate before
/// enrolment gives up on it.
const ENROL_ROUNDS: usize = 3;

/// What one enrolment attempt came to.
enum Enrolment {
    /// The certificate issued.
    Issued(Vec<u8>),
    /// The replica is a follower; it named the leader, if it knows it.
    NotLeader(Option<SocketAddr>),
}

/// One enrolment attempt at `addr`, the handshake limited to `limit` if given.
async fn enrol_at(
    endpoint: &quinn::Endpoint,
    req: &EnrolRequest<'_>,
    csr: &[u8],
    addr: SocketAddr,
    limit: Option<Duration>,
) -> Result<Enrolment> {
    let connecting =
        endpoint.connect_with(tls::client_config(req.ca, None)?, addr, AUTHORITY_NAME)?;
    let conn = match limit {
        Some(limit) => tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| Error::Timeout(format!("handshake with the authority at {addr}")))??,
        None => connecting.await?,
    };
    let exchanged = enrol_over(&conn, req, csr).await;
    if let Some(leader) = failover::leader_named(conn.close_reason().as_ref()) {
        return Ok(Enrolment::NotLeader(leader));
    }
    exchanged.map(Enrolment::Issued)
}

/// Sends the enrolment request over `conn` and reads the certificate.
async fn enrol_over(
    conn: &quinn::Connection,
    req: &EnrolRequest<'_>,
    csr: &[u8],
) -> Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    proto::write_frame(
        &mut send,
        &Message::Enrol {
            token: req.token.to_owned(),
            appliance: req.appliance.to_owned(),
            csr: csr.to_vec(),
            control: req.control.clone(),
            endpoints: req.endpoints.clone(),
            capabilities: req.capabilities.clone(),
        },
    )
    .await?;
    send.finish()?;
    let reply: Option<Message> = proto::read_frame(&mut recv).await?;
    conn.close(0u32.into(), b"enrolled");
    match reply {
        Some(Message::Enrolled { cert }) => Ok(cert),
        Some(Message::Error { reason }) => Err(Error::Refused(reason)),
        other => Err(Error::Frame(format!(
            "unexpected enrolment reply {other:?}"
        ))),
    }
}

async fn enrol(
    endpoint: &quinn::Endpoint,
    opts: &AgentOptions,
    token: &str,
    control: SocketAddr,
    store: &AnyStore,
) -> Result<(KeyedCert, SocketAddr)> {
    let (cert, key, at) = request_certificate(
        endpoint,
        EnrolRequest {
            authorities: &opts.authorities,
            ca: &opts.ca_cert,
            appliance: &opts.appliance,
            token,
            control: control.to_string(),
            endpoints: opts.endpoints.clone(),
            capabilities: opts.capabilities.clone(),
        },
    )
    .await?;
    let named = pki::identity_of(&cert)?;
    if named.appliance != opts.appliance {
        return Err(Error::Certificate(format!(
            "the authority issued a certificate for {} but this agent is {}",
            named.appliance, opts.appliance
        )));
    }
    store
        .apply(vec![
            Write::Put("identity/cert".into(), cert.clone()),
            Write::Put(
                "identity/key".into(),
                opts.kek
                    .seal(&format!("identity/{}", opts.appliance), &key)?,
            ),
        ])
        .await?;
    Ok((KeyedCert::from_chain(&cert, key)?, at))
}

/// Enrols with `token` over a fresh connection, without starting an agent; returns the
/// certificate and its key. For tests and tools that only exercise enrolment.
pub async fn enrol_only(
    authority: SocketAddr,
    ca: &CertificateDer<'static>,
    appliance: &str,
    token: &str,
) -> Result<KeyedCert> {
    let endpoint = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into())
        .map_err(|e| Error::io("binding a client endpoint", e))?;
    let issued = request_certificate(
        &endpoint,
        EnrolRequest {
            authorities: &[authority],
            ca,
            appliance,
            token,
            control: String::new(),
            endpoints: Vec::new(),
            capabilities: Vec::new(),
        },
    )
    .await;
    endpoint.wait_idle().await;
    let (cert, key, _) = issued?;
    KeyedCert::from_chain(&cert, key)
}
