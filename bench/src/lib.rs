//! cpclink benchmark suites: each measures cpclink and, in the same run, a baseline, and
//! reports both so results read as ratios on shared, noisy machines. The scaffolding the
//! suites share with the tests (network namespaces, synthetic traffic and its pacing) lives
//! here too, so the product crates carry none.

pub mod compare;
pub mod cpu;
pub mod crypto;
pub mod dataplane;
pub mod keyplane;
pub mod latency;
pub mod ndr;
pub mod netns;
pub mod pacer;
pub mod path;
pub mod replicas;
mod report;
pub mod suite;
pub mod traffic;

pub use report::markdown_table;

/// The benchmark crate's one error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data plane refused a key or a buffer.
    #[error(transparent)]
    Dataplane(#[from] cpclink_dataplane::Error),
    /// A baseline library refused its key or input.
    #[error("baseline {0} failed")]
    Baseline(&'static str),
    /// Synthetic traffic asked for what it cannot make (no flows, too many peers, no rate).
    #[error("synthetic traffic: {0}")]
    Traffic(String),
    /// A size outside what a UDP payload can carry.
    #[error("size {0} is out of range (expected 1..=65536 bytes)")]
    BadSize(usize),
    /// An integrity-only suite given where encryption is measured.
    #[error(
        "suite {0} authenticates without encrypting; the data-plane benchmark measures \
         encryption (use aes-gcm-128, aes-gcm-256 or chacha20-poly1305)"
    )]
    NotEncrypting(&'static str),
    /// The latency suite needs root for its TUN devices and network namespaces.
    #[error(
        "the latency suite needs root (CAP_NET_ADMIN): its probes cross the engines \
         through TUN devices in two network namespaces; run it as root"
    )]
    NeedsRoot,
    /// A latency probe size that does not fit a probe or the tunnel's MTU.
    #[error("--size {size} is out of range (expected {min}..={max} bytes: a probe header at least, one TUN MTU at most)")]
    BadProbeSize {
        /// The size asked for.
        size: usize,
        /// The probe header.
        min: usize,
        /// The largest UDP payload one TUN MTU carries.
        max: usize,
    },
    /// A background load outside 0..=100 percent.
    #[error("--load {0} is out of range (expected 0..=100 percent of the measured maximum)")]
    BadLoad(u32),
    /// The path plane refused a topology, a route or a netlink request.
    #[error(transparent)]
    Srv6(#[from] cpclink_srv6::Error),
    /// The key plane failed while being measured.
    #[error(transparent)]
    Keymgr(#[from] cpclink_keymgr::Error),
    /// The path-plane benchmark could not send its datagrams.
    #[error("path-plane benchmark: {0}")]
    Path(String),
    /// The key-plane benchmark's own machinery (phases, child processes) failed.
    #[error("key-plane benchmark: {0}")]
    KeyPlane(String),
    /// The key-plane benchmark could not read or write a file or a child's pipe.
    #[error("key-plane benchmark: {context}: {source}")]
    KeyPlaneIo {
        /// What was being done.
        context: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A network namespace could not be created, entered or configured.
    #[error("network namespace {name}: {reason}")]
    Netns {
        /// Namespace name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// The suite could not write or read its report.
    #[error("suite report: {context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A suite report could not be understood.
    #[error("suite report {0} (expected the report.json `cpclink bench suite` writes)")]
    Report(String),
    /// Route reconciliation in the programming benchmark did not do what it must.
    #[error("route programming benchmark: {0}")]
    Reconcile(&'static str),
    /// The latency suite's namespaces, TUN devices or sockets could not be set up.
    #[error("latency suite: {what}: {reason}")]
    Setup {
        /// What was being set up.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

impl Error {
    fn key_plane_io(context: &'static str, source: std::io::Error) -> Self {
        Self::KeyPlaneIo { context, source }
    }
}
