//! cpclink benchmark suites: each measures cpclink and, in the same run, a baseline, and
//! reports both so results read as ratios on shared, noisy machines.

pub mod crypto;
pub mod dataplane;
pub mod latency;
mod report;

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
    /// The latency suite's namespaces, TUN devices or sockets could not be set up.
    #[error("latency suite: {what}: {reason}")]
    Setup {
        /// What was being set up.
        what: String,
        /// Why it failed.
        reason: String,
    },
}
